//! berth: the command-line client of berthd. Tables for people, `--json`
//! for scripts; on failure one line on stderr and a non-zero exit.

mod auth;
mod checkpoints;
mod client;
mod commands;
mod doctor;
mod generate;
mod image_admin;
mod images;
mod limits;
mod logs;
mod networks;
mod output;
mod progress;
mod sandboxes;
mod stats;
mod system;
mod terminal;
mod volumes;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "Run and supervise containers with berthd")]
pub struct Cli {
    /// berthd's API socket.
    #[arg(long, global = true, env = "BERTH_SOCKET", default_value = "/run/berth/berth.sock")]
    socket: PathBuf,
    /// Namespace (tenant) to work in.
    #[arg(long, short = 'n', global = true, env = "BERTH_NAMESPACE", default_value = "default")]
    namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct CreateArgs {
    /// Container id (default: a random one).
    #[arg(long)]
    pub name: Option<String>,
    /// Runtime: embedded, runc or crun (berth-shim), vm (a VM of its own,
    /// as --vm), io.containerd.NAME.vN (a containerd v2 shim, e.g.
    /// io.containerd.runc.v2) or a shim's absolute path [default: berthd's
    /// --default-runtime, embedded].
    #[arg(long)]
    pub runtime: Option<String>,
    /// Run the container in a VM of its own, on the guest's kernel (the
    /// runtime `vm`; sized from --cpus and --memory; docs/vm.md).
    #[arg(long, conflicts_with = "runtime")]
    pub vm: bool,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub limits: limits::LimitArgs,
    /// Give the container a terminal (for `run`: attached to ours).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep our stdin connected to the container's terminal (needs -t).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Restart policy: no, always, on-failure[:N], unless-stopped.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Give the container every capability, the host's devices, writable
    /// /sys and no seccomp filter.
    #[arg(long)]
    pub privileged: bool,
    /// Add a capability (NET_ADMIN, CAP_SYS_PTRACE, ALL; repeatable).
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop a capability (repeatable; ALL drops every one).
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Give a host device: HOST[:CONTAINER[:PERMISSIONS]] (permissions: rwm).
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges (repeatable).
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Pull the image first: missing (when absent), always, never.
    #[arg(long, value_enum, default_value = "missing")]
    pub pull: images::PullPolicy,
    /// With an image: run this instead of its entrypoint (and without its
    /// cmd); "" for none.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// With an image: USER[:GROUP], names from the image's /etc/passwd and
    /// /etc/group (default: the image's User).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// When pulling: plain HTTP to the image's registry (loopback registries).
    #[arg(long)]
    pub insecure: bool,
    /// Mount HOST:CTR[:OPTIONS] (an absolute host path) or NAME:CTR[:OPTIONS]
    /// (a named volume, created on first use); OPTIONS: ro or rw and a
    /// propagation (rprivate, the default, rslave or rshared), comma-separated;
    /// repeatable.
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Mount a tmpfs at PATH[:OPTIONS] (default rw,nosuid,nodev,noexec,relatime;
    /// e.g. /run:size=64m,exec); repeatable.
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// The container's host name (default: its id).
    #[arg(long)]
    pub hostname: Option<String>,
    /// `host`: the host's PID namespace (it sees and signals every process).
    #[arg(long)]
    pub pid: Option<String>,
    /// `host`: the host's IPC namespace.
    #[arg(long)]
    pub ipc: Option<String>,
    /// The cgroup to place the container's cgroup in (absolute, e.g.
    /// /kubepods/pod1; default: berthd's --cgroup-parent/NAMESPACE).
    #[arg(long)]
    pub cgroup_parent: Option<String>,
    /// The OOM killer's score adjustment of its processes (-1000..1000).
    #[arg(long, allow_hyphen_values = true)]
    pub oom_score_adj: Option<i32>,
    /// Network: a network name (default berthd's, normally `berth`), none
    /// (loopback only), host, or container:ID (share its namespace).
    #[arg(long)]
    pub network: Option<String>,
    /// Publish a port: [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp] (repeatable).
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// A nameserver for the container's /etc/resolv.conf (repeatable;
    /// default: the host's, without loopback ones).
    #[arg(long)]
    pub dns: Vec<String>,
    /// A search domain for the container's /etc/resolv.conf (repeatable;
    /// replaces the host's; `.` alone: none).
    #[arg(long = "dns-search")]
    pub dns_search: Vec<String>,
    /// A resolver option for the container's /etc/resolv.conf, e.g.
    /// ndots:5 (repeatable; replaces the host's options).
    #[arg(long = "dns-option")]
    pub dns_options: Vec<String>,
    /// An /etc/hosts entry NAME:IP (repeatable).
    #[arg(long = "add-host")]
    pub add_hosts: Vec<String>,
    /// Place the container in a sandbox (`berth sandbox create`): its shim
    /// and network namespace are the sandbox's.
    #[arg(long)]
    pub sandbox: Option<String>,
    /// A namespaced kernel parameter KEY=VALUE (net.*, fs.mqueue.*,
    /// kernel.msg*, kernel.sem, kernel.shm*; repeatable).
    #[arg(long = "sysctl")]
    pub sysctls: Vec<String>,
    /// With an image: a supplementary group id for the process, on top of
    /// its user's (repeatable).
    #[arg(long = "group-add")]
    pub group_add: Vec<u32>,
    /// Write stdout and stderr to this one file in the Kubernetes CRI log
    /// format instead of berth's logs (`berth logs` still reads it).
    #[arg(long)]
    pub log_path: Option<PathBuf>,
    /// Rotate berth's log of the container at this size (bytes or a k/m/g
    /// suffix; at least 64k; 0: never; default: berthd's, 10m).
    #[arg(long, value_name = "SIZE")]
    pub log_max_size: Option<String>,
    /// Log files kept, the live one included (1..=100; default: berthd's, 3).
    #[arg(long, value_name = "N")]
    pub log_max_files: Option<u32>,
    /// A root filesystem directory, an OCI bundle (a directory with
    /// config.json), or else an image reference (registry/repo:tag).
    pub rootfs: PathBuf,
    /// Command and arguments (default: the bundle's, or /bin/sh).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Create and start a container; attached, stream its output and exit with its code.
    Run {
        /// Remove the container when it exits.
        #[arg(long)]
        rm: bool,
        /// Detach: print the id and return.
        #[arg(short = 'd', long)]
        detach: bool,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Create a container without starting it.
    Create {
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Start created containers.
    Start { ids: Vec<String> },
    /// List containers.
    Ps {
        /// Include stopped containers.
        #[arg(short = 'a', long)]
        all: bool,
        /// Every namespace.
        #[arg(long)]
        all_namespaces: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show one container in detail.
    Inspect {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send a signal to a container's init (or, with --all, every process).
    Kill {
        /// Signal name or number.
        #[arg(short = 's', long, default_value = "SIGTERM")]
        signal: String,
        /// Every process of the container; with --exec-id, the exec and
        /// every process it started.
        #[arg(long)]
        all: bool,
        /// Signal this exec instead of init.
        #[arg(long)]
        exec_id: Option<String>,
        id: String,
    },
    /// Stop containers gracefully: their stop signal (label berth.stop-signal,
    /// else SIGTERM), then SIGKILL after the timeout.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u32,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Wait for a container to exit; print its exit code and exit with it.
    Wait { id: String },
    /// Remove containers.
    Rm {
        /// Kill running containers first.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Run an extra command in a running container; stream its output and
    /// exit with its code.
    Exec {
        /// Exec id, unique within the container (default: a random one).
        #[arg(long)]
        exec_id: Option<String>,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        /// User: UID[:GID].
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Give the exec a terminal attached to ours.
        #[arg(short = 't', long)]
        tty: bool,
        /// Keep our stdin connected to it (needs -t).
        #[arg(short = 'i', long)]
        interactive: bool,
        container: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Show resource usage: a live table, one sample (--no-stream) or JSON.
    Stats {
        #[arg(long)]
        no_stream: bool,
        /// The full statistics (one sample).
        #[arg(long)]
        json: bool,
        /// Containers (default: all running ones).
        ids: Vec<String>,
    },
    /// Change the limits of a running or paused container.
    Update {
        #[command(flatten)]
        limits: limits::LimitArgs,
        id: String,
    },
    /// Freeze every process of running containers.
    Pause {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Thaw paused containers.
    Resume {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// List a container's processes.
    Top {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a container's output (across its rotated log files).
    Logs(logs::LogsArgs),
    /// Pull an image from a registry (live progress on a terminal).
    Pull {
        /// os/arch[/variant] (default linux/amd64).
        #[arg(long, default_value = "")]
        platform: String,
        /// Plain HTTP (for a registry on loopback).
        #[arg(long)]
        insecure: bool,
        /// Registry user (basic auth); the password comes from stdin.
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Print only the image name.
        #[arg(short = 'q', long)]
        quiet: bool,
        reference: String,
    },
    /// List images.
    Images {
        #[arg(long)]
        json: bool,
    },
    /// Remove image names, then free what nothing uses (refused while a
    /// container uses the image, unless -f).
    Rmi {
        /// Remove even when a container uses the image (its snapshot stays).
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        refs: Vec<String>,
    },
    /// Image administration: import, export, inspect, prune.
    Image {
        #[command(subcommand)]
        cmd: image_admin::ImageCmd,
    },
    /// Name an image again: DST points at SRC's content.
    Tag { source: String, target: String },
    /// Store registry credentials in $HOME/.config/berth/auth.json (0600).
    Login {
        #[arg(short = 'u', long)]
        username: Option<String>,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// host[:port]
        registry: String,
    },
    /// Forget a registry's stored credentials.
    Logout { registry: String },
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell), e.g. `berth completion bash > /etc/bash_completion.d/berth`.
    Completion { shell: clap_complete::Shell },
    /// This client's and berthd's versions.
    Version {
        #[arg(long)]
        json: bool,
    },
    /// Write man pages (berth.1 and one per subcommand) into a directory.
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Find what berth's records do not account for (leftover shims,
    /// cgroups, mounts, namespaces, network attachments, directories,
    /// sockets) and check the host. Exit 0: healthy, 1: findings, 2: could
    /// not check.
    Doctor {
        /// Repair what is safe (never a container a record names).
        #[arg(long)]
        fix: bool,
        #[arg(long)]
        json: bool,
    },
    /// berthd's own figures: phases, info, df.
    System {
        #[command(subcommand)]
        cmd: system::SystemCommand,
    },
    /// Networks: create, ls, inspect, rm.
    Network {
        #[command(subcommand)]
        cmd: networks::NetworkCommand,
    },
    /// Sandboxes (pods): create, ls, inspect, rm.
    Sandbox {
        #[command(subcommand)]
        cmd: sandboxes::SandboxCommand,
    },
    /// Checkpoint a container with CRIU (`berth checkpoint ID`); list,
    /// remove and export checkpoints (ls, rm, export).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Checkpoint {
        #[command(subcommand)]
        cmd: Option<checkpoints::CheckpointCommand>,
        #[command(flatten)]
        args: checkpoints::CheckpointArgs,
    },
    /// Create and start a container from a checkpoint or an archive.
    Restore(checkpoints::RestoreArgs),
    /// Named volumes: create, ls, inspect, rm.
    Volume {
        #[command(subcommand)]
        cmd: volumes::VolumeCommand,
    },
    /// Stream events (every namespace unless -n is given).
    Events {
        #[arg(long)]
        json: bool,
        /// Only these types (create, start, exit, oom, pause, resume,
        /// exec-added, exec-started, restart, delete, checkpoint, restore); repeatable.
        #[arg(long = "type")]
        types: Vec<String>,
        /// Only this container.
        #[arg(long)]
        id: Option<String>,
        /// First replay the recorded events after this sequence number
        /// (0: all kept), then follow without a gap.
        #[arg(long)]
        since: Option<u64>,
        /// With --since: stop after the replay.
        #[arg(long, requires = "since")]
        no_follow: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("berth: {}", f.message);
            f.exit_code
        }
    };
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> Result<i32, client::Failure> {
    match cli.command {
        Command::Login { username, password_stdin, registry } => {
            return auth::login(username, password_stdin, registry);
        }
        Command::Logout { registry } => return auth::logout(registry),
        Command::Completion { shell } => return generate::completion(shell),
        Command::Man { dir } => return generate::man(&dir),
        _ => {}
    }
    let doctor = matches!(cli.command, Command::Doctor { .. });
    let mut c = client::connect(cli.socket, cli.namespace)
        .await
        .map_err(|f| if doctor { client::Failure { exit_code: doctor::COULD_NOT_CHECK, ..f } } else { f })?;
    use commands as cmd;
    match cli.command {
        Command::Run { rm, detach, create } => cmd::run(&mut c, create, rm, detach).await,
        Command::Create { create } => cmd::create(&mut c, create).await,
        Command::Start { ids } => cmd::start(&mut c, ids).await,
        Command::Ps { all, all_namespaces, json } => cmd::ps(&mut c, all, all_namespaces, json).await,
        Command::Inspect { id, json } => cmd::inspect(&mut c, id, json).await,
        Command::Kill { signal, all, exec_id, id } => cmd::kill(&mut c, id, exec_id, &signal, all).await,
        Command::Exec { exec_id, env, workdir, user, tty, interactive, container, cmd: argv } => {
            let e = cmd::ExecArgs { exec_id, env, workdir, user, tty, interactive, container, cmd: argv };
            cmd::exec(&mut c, e).await
        }
        Command::Wait { id } => cmd::wait(&mut c, id).await,
        Command::Stop { time, ids } => cmd::stop(&mut c, ids, time).await,
        Command::Rm { force, ids } => cmd::rm(&mut c, ids, force).await,
        Command::Logs(a) => logs::run(&mut c, a).await,
        Command::Pause { ids } => cmd::pause(&mut c, ids, true).await,
        Command::Resume { ids } => cmd::pause(&mut c, ids, false).await,
        Command::Top { id, json } => cmd::top(&mut c, id, json).await,
        Command::Stats { no_stream, json, ids } => stats::run(&mut c, ids, no_stream, json).await,
        Command::Update { limits, id } => cmd::update(&mut c, id, &limits).await,
        Command::Pull { platform, insecure, user, password_stdin, quiet, reference } => {
            images::pull(
                &mut c,
                images::PullArgs { reference, platform, insecure, user, password_stdin, quiet, to_stderr: false },
            )
            .await
        }
        Command::Images { json } => images::images(&mut c, json).await,
        Command::Rmi { force, refs } => images::rmi(&mut c, refs, force).await,
        Command::Image { cmd } => image_admin::run(&mut c, cmd).await,
        Command::Tag { source, target } => image_admin::tag(&mut c, source, target).await,
        Command::Login { .. } | Command::Logout { .. } | Command::Completion { .. } | Command::Man { .. } => Ok(0),
        Command::Volume { cmd } => volumes::run(&mut c, cmd).await,
        Command::Sandbox { cmd } => sandboxes::run(&mut c, cmd).await,
        Command::Checkpoint { cmd, args } => checkpoints::run(&mut c, cmd, args).await,
        Command::Restore(args) => checkpoints::restore(&mut c, args).await,
        Command::Network { cmd } => networks::run(&mut c, cmd).await,
        Command::Version { json } => system::version(&mut c, json).await,
        Command::System { cmd } => system::run(&mut c, cmd).await,
        Command::Doctor { fix, json } => doctor::run(&mut c, fix, json).await,
        Command::Events { json, types, id, since, no_follow } => {
            cmd::events(&mut c, cmd::EventsArgs { json, types, id, since, no_follow }).await
        }
    }
}
