//! berthd: the berth daemon. Serves the berth.v1 gRPC API on a unix socket
//! (mode 0600), keeps container metadata in redb, and drives one berth-shim
//! per container. Stopping berthd leaves containers running.

mod api;
mod attach;
mod autoremove;
mod checkpoint;
mod checkpoint_api;
mod checkpoint_archive;
mod config;
mod confine;
mod control;
mod create;
mod create_spec;
mod delete;
mod doctor;
mod doctor_checks;
mod error;
mod events;
mod exec;
mod guard;
mod image_admin;
mod image_api;
mod images;
mod logs;
mod manager;
mod metrics;
mod mounts;
mod network;
mod network_api;
mod nofile;
mod oom;
mod paging;
mod phases;
mod process_io;
mod recovery;
mod resources;
mod restart;
mod restore;
mod sandbox;
mod sandbox_api;
mod sandbox_ns;
mod seccomp;
mod shim;
mod shim_args;
mod shim_v2;
mod spawn;
mod spec;
mod stop;
mod sysctl;
mod system_api;
mod system_info;
mod task;
mod timed;
mod vm;
mod volume_api;
mod volume_fill;
mod volumes;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_api::v1::checkpoints_server::CheckpointsServer;
use berth_api::v1::containers_server::ContainersServer;
use berth_api::v1::events_server::EventsServer;
use berth_api::v1::images_server::ImagesServer;
use berth_api::v1::networks_server::NetworksServer;
use berth_api::v1::sandboxes_server::SandboxesServer;
use berth_api::v1::system_server::SystemServer;
use berth_api::v1::volumes_server::VolumesServer;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::manager::Manager;

#[derive(Parser)]
#[command(name = "berthd", version, about = "berth container supervisor daemon")]
struct Args {
    /// Durable data: metadata store, container logs.
    #[arg(long, default_value = "/var/lib/berth")]
    root: PathBuf,
    /// Runtime data: bundles, shim sockets, runtime state.
    #[arg(long, default_value = "/run/berth")]
    state: PathBuf,
    /// API socket.
    #[arg(long, default_value = "/run/berth/berth.sock")]
    socket: PathBuf,
    /// Parent cgroup of all containers.
    #[arg(long, default_value = "/berth")]
    cgroup_parent: String,
    /// berth-shim binary (default: next to berthd).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// The runtime of containers that name none: embedded, runc, crun,
    /// io.containerd.NAME.vN (a containerd v2 shim) or a shim's absolute path.
    #[arg(long, default_value = berth_model::DEFAULT_RUNTIME)]
    default_runtime: String,
    /// Seconds a start may take before the container is killed.
    #[arg(long, default_value_t = 30)]
    start_timeout: u64,
    /// On SIGTERM/SIGINT, stop every container (gracefully) before exiting;
    /// by default they keep running.
    #[arg(long)]
    shutdown_containers: bool,
    /// Directories holding CNI plugins, ':'-separated.
    #[arg(long, default_value = "/usr/lib/cni:/opt/cni/bin")]
    cni_bin_dir: String,
    /// CNI config lists written by an administrator (usable, never changed).
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Seconds a CNI plugin may run before it is killed.
    #[arg(long, default_value_t = 30)]
    cni_timeout: u64,
    /// The network of containers that name none: a network name, none or host.
    #[arg(long, default_value = berth_model::DEFAULT_NETWORK)]
    default_network: String,
    /// Bridge device of the default network `berth`.
    #[arg(long, default_value = "berth0")]
    network_bridge: String,
    /// Subnet of the default network `berth`.
    #[arg(long, default_value = "10.87.0.0/16")]
    network_subnet: String,
    /// The Kubernetes CRI v1 socket (mode 0600) kubelet and crictl talk
    /// to; an empty value serves no CRI.
    #[arg(long, default_value = "/run/berth/cri.sock", value_parser = path_or_empty)]
    cri_socket: PathBuf,
    /// Where CRI's streaming server (exec, attach, port-forward URLs)
    /// listens: a loopback address; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    cri_streaming_address: std::net::SocketAddr,
    /// CRIU, for checkpoints (default: what `make criu` installs,
    /// /opt/berth/criu/bin/criu, if present; else `criu` on PATH).
    #[arg(long)]
    criu: Option<PathBuf>,
    /// The VM guest's kernel and initramfs, as `make vm-assets` writes
    /// them (default: ROOT/vm-assets).
    #[arg(long)]
    vm_assets: Option<PathBuf>,
    /// The accelerator of VM sandboxes: auto (KVM when the CPU shows
    /// vmx/svm and /dev/kvm opens, else TCG emulation), kvm or tcg.
    #[arg(long, default_value = "auto")]
    vm_accel: String,
    /// What berthd logs (to stderr): error, warn, info, debug or trace, or
    /// a tracing filter such as `info,berthd=debug`.
    #[arg(long, env = "BERTH_LOG", default_value = "info")]
    log_level: String,
    /// How it logs: text (for people) or json (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Serve Prometheus metrics at /metrics on this loopback IP:PORT or unix
    /// socket path (default: off).
    #[arg(long, default_value = "")]
    metrics_address: String,
    /// Include each running or paused container's CPU, memory and process
    /// count in the metrics.
    #[arg(long)]
    metrics_per_container: bool,
    /// The size at which a container's log file is rotated (bytes or a
    /// k/m/g suffix; at least 64k; 0: never, the log grows without bound).
    /// `berth run --log-max-size` sets it per container.
    #[arg(long, default_value = "10m", value_parser = log_size)]
    container_log_max_size: u64,
    /// How many files a container's log keeps, the live one included (1..=100).
    #[arg(long, default_value_t = 3)]
    container_log_max_files: u32,
    /// Print berthd's man page (roff) and exit.
    #[arg(long, hide = true)]
    man_page: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn log_size(s: &str) -> Result<u64, String> {
    berth_model::parse_size(s).map_err(|e| e.to_string())
}

/// A path that may be empty (clap's own path parser refuses "").
fn path_or_empty(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The log filter `--log-level` names: one of [`LEVELS`] or
/// comma-separated `TARGET=LEVEL` directives (a bare word that is no level
/// would silently name a target instead).
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let bad = |why: &str| format!("--log-level {level:?}: {why} (use one of {LEVELS:?}, or TARGET=LEVEL,…)");
    for directive in level.split(',').map(str::trim) {
        let (target, lvl) = directive.split_once('=').unwrap_or(("", directive));
        let target_ok = target.chars().all(|c| c.is_ascii_alphanumeric() || "_:".contains(c));
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) || !target_ok {
            return Err(bad(&format!("{directive:?} is not a level")));
        }
    }
    let cleaned = level.split(',').map(str::trim).collect::<Vec<_>>().join(",");
    tracing_subscriber::EnvFilter::try_new(cleaned).map_err(|e| bad(&e.to_string()))
}

/// Sends berthd's logs to stderr at `level`, as text or JSON lines.
fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = log_filter(level)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// What `make criu` installs.
const CRIU_INSTALLED: &str = "/opt/berth/criu/bin/criu";

fn criu_path(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| {
        let installed = PathBuf::from(CRIU_INSTALLED);
        if installed.exists() { installed } else { PathBuf::from("criu") }
    })
}

/// How long in-flight requests may run after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

pub use berth_model::now_ns;

fn main() {
    let args = Args::parse();
    if args.man_page {
        let page = clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).section("8");
        if let Err(e) = page.render(&mut std::io::stdout()) {
            eprintln!("berthd: {e}");
            std::process::exit(1);
        }
        return;
    }
    // A bad --log-level is refused; a bad BERTH_LOG (which berthd used to
    // take or ignore) falls back to info with a warning, so a unit file
    // that sets it keeps starting.
    let from_env = !std::env::args().any(|a| a.starts_with("--log-level"));
    let level = match log_filter(&args.log_level) {
        Err(e) if from_env => {
            eprintln!("berthd: BERTH_LOG ignored: {e}");
            "info".to_string()
        }
        _ => args.log_level.clone(),
    };
    if let Err(e) = init_logging(&level, args.log_format) {
        eprintln!("berthd: {e}");
        std::process::exit(2);
    }
    // Before any thread or descriptor: what berthd starts gets the old
    // limit back (nofile.rs).
    match nofile::raise() {
        Ok(limit) => tracing::debug!("open-files limit {limit}"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    // Two malloc arenas, not eight per core: berthd's threads are tokio's
    // two workers and short-lived blocking threads, and each arena keeps
    // freed memory of its own (about a megabyte more RSS with 1,000
    // containers).
    // SAFETY: plain libc call, before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    // Shims (and the runtime helpers they fork) find CRIU through this.
    // SAFETY: no other thread exists yet (the runtime is built below).
    unsafe { std::env::set_var(berth_shim::CRIU_ENV, criu_path(args.criu.clone())) };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("berthd: {e}");
        std::process::exit(1);
    }
}

fn shim_binary(arg: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = arg {
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate berthd: {e}"))?;
    let candidate = exe.with_file_name("berth-shim");
    if candidate.exists() {
        Ok(candidate)
    } else {
        Err(format!("berth-shim not found next to {}; pass --shim", exe.display()))
    }
}

/// berthd's networks, from its flags; the default mode must parse.
fn network(args: &Args, cfg: &Config) -> Result<crate::network::Net, String> {
    berth_model::NetworkMode::parse(&args.default_network).map_err(|e| format!("--default-network: {e}"))?;
    let ncfg = berth_network::Config {
        bin_dirs: std::env::split_paths(&args.cni_bin_dir).collect(),
        conf_dir: args.cni_conf_dir.clone(),
        root: cfg.root.clone(),
        state: cfg.state.clone(),
        default_bridge: args.network_bridge.clone(),
        default_subnet: args.network_subnet.clone(),
        plugin_timeout: Duration::from_secs(args.cni_timeout),
    };
    let networks = berth_network::Networks::new(ncfg).map_err(|e| format!("networks: {e}"))?;
    Ok(crate::network::Net::new(networks, args.default_network.clone()))
}

/// Serves CRI (crates/cri) on `--cri-socket` over the same API handlers
/// as berthd's own socket; `None` when the flag is empty. Event streams
/// replay the events after `started_at_seq`.
async fn serve_cri(
    args: &Args,
    mgr: &Arc<Manager>,
    started_at_seq: u64,
) -> Result<Option<(tokio::task::JoinHandle<()>, guard::BoundSocket)>, String> {
    if args.cri_socket.as_os_str().is_empty() {
        return Ok(None);
    }
    if let Some(dir) = args.cri_socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let (listener, bound) = guard::bind_socket(&args.cri_socket).await.map_err(|e| format!("--cri-socket: {e}"))?;
    let cfg = berth_cri::Config {
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        image_dirs: vec![mgr.cfg.root.join("content"), mgr.cfg.root.join("snapshots")],
        cni_conf_dir: args.cni_conf_dir.clone(),
        cni_bin_dirs: std::env::split_paths(&args.cni_bin_dir).collect(),
        network: args.default_network.clone(),
        replay_since: started_at_seq,
    };
    if !args.cri_streaming_address.ip().is_loopback() {
        return Err(format!("--cri-streaming-address {}: must be a loopback address", args.cri_streaming_address));
    }
    let cri = berth_cri::Cri::new(api::Api { mgr: mgr.clone() }, cfg);
    let streaming = cri
        .serve_streaming(args.cri_streaming_address)
        .await
        .map_err(|e| format!("--cri-streaming-address {}: {e}", args.cri_streaming_address))?;
    let (runtime, images) = berth_cri::servers(cri);
    let server = tonic::transport::Server::builder()
        .layer(timed::layer(mgr.metrics.cri_requests.clone()))
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming(UnixListenerStream::new(listener));
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("CRI server: {e}");
        }
        streaming.abort();
    });
    tracing::info!(socket = %args.cri_socket.display(), "serving CRI");
    Ok(Some((task, bound)))
}

async fn run(args: Args) -> Result<(), String> {
    // Flags are checked before anything is made.
    let metrics_address =
        (!args.metrics_address.is_empty()).then(|| metrics::Address::parse(&args.metrics_address)).transpose()?;
    if args.cgroup_parent.trim_matches('/').is_empty() {
        return Err("--cgroup-parent must name a cgroup of berthd's own, not the root".into());
    }
    let cfg = Config {
        root: args.root.clone(),
        state: args.state.clone(),
        socket: args.socket.clone(),
        cgroup_parent: args.cgroup_parent.clone(),
        shim_binary: shim_binary(args.shim.clone())?,
        start_timeout: Duration::from_secs(args.start_timeout),
        default_runtime: berth_model::Runtime::parse(&args.default_runtime)
            .map_err(|e| format!("--default-runtime: {e}"))?
            .name()
            .to_string(),
        criu: criu_path(args.criu.clone()),
        log_rotation: berth_model::LogRotation::new(args.container_log_max_size, args.container_log_max_files)
            .map_err(|e| format!("--container-log-max-*: {e}"))?,
        vm: vm::VmConfig::new(args.vm_assets.clone().unwrap_or_else(|| args.root.join("vm-assets")), &args.vm_accel)?,
    };
    match &cfg.vm.note {
        Some(note) => tracing::info!(accel = cfg.vm.accel.as_str(), "VM sandboxes: {note}"),
        None => tracing::info!(accel = cfg.vm.accel.as_str(), "VM sandboxes use {}", cfg.vm.accel.as_str()),
    }
    for dir in [&cfg.root, &cfg.state] {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    }
    // Before anything else changes: refuse another daemon's directories or
    // socket, and a damaged or lost store (guard.rs).
    let _locks = guard::lock_dirs(&[&cfg.root, &cfg.state]).map_err(|e| e.to_string())?;
    guard::check_socket(&cfg.socket).await.map_err(|e| e.to_string())?;
    let store = guard::open_store(&cfg).map_err(|e| e.to_string())?;
    let cgroups = berth_cgroups::Hierarchies::detect().map_err(|e| format!("read cgroup mounts: {e}"))?;
    let socket = cfg.socket.clone();
    let images = Arc::new(crate::images::Images::open(&cfg.root).map_err(|e| format!("open image storage: {e}"))?);
    let net = network(&args, &cfg)?;
    // Before recovery: reconnected containerd v2 shims publish there.
    let shim_events = cfg.shim_events_socket();
    let _events_endpoint = shim_v2::serve_events(&shim_events).await.map_err(|e| e.to_string())?;
    // Events from here on (recovery's among them) are replayed to CRI
    // event streams, so a kubelet that reconnects misses none.
    let started_at_seq = store.last_seq().map_err(|e| format!("read the event log: {e}"))?;
    let mut mgr = Manager::new(cfg, store, cgroups, images, net);
    mgr.metrics.per_container = args.metrics_per_container;
    let mgr = Arc::new(mgr);
    let default_runtime = berth_model::Runtime::parse(&mgr.cfg.default_runtime).map_err(|e| e.to_string())?;
    mgr.check_runtime(&default_runtime).map_err(|e| format!("--default-runtime: {e}"))?;
    // Once the checks that refuse a start have passed (a refused start
    // leaves no mount), and before any root filesystem is mounted below it
    // (a restart policy at reload may mount one): a VM sandbox started
    // later receives them (vm.rs). A later start finds it shared.
    vm::share_bundles(&mgr.cfg.bundles_root());
    mgr.reload().await.map_err(|e| format!("reload containers: {e}"))?;
    mgr.remove_unused_namespaces();

    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let metrics_task = match metrics_address {
        Some(addr) => {
            mgr.start_metrics();
            Some(mgr.serve_metrics(addr).await?)
        }
        None => None,
    };
    // CRI first: a client that finds the main socket serving finds CRI too.
    let cri = serve_cri(&args, &mgr, started_at_seq).await?;
    let (listener, bound) = guard::bind_socket(&socket).await.map_err(|e| e.to_string())?;
    tracing::info!(socket = %socket.display(), "berthd serving");

    let api = api::Api { mgr: mgr.clone() };
    let events = api::Api { mgr: mgr.clone() };
    let images = api::Api { mgr: mgr.clone() };
    let volumes = api::Api { mgr: mgr.clone() };
    let networks = api::Api { mgr: mgr.clone() };
    let system = api::Api { mgr: mgr.clone() };
    let sandboxes = api::Api { mgr: mgr.clone() };
    let checkpoints = api::Api { mgr: mgr.clone() };
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ContainersServer::new(api))
            .add_service(EventsServer::new(events))
            .add_service(ImagesServer::new(images))
            .add_service(VolumesServer::new(volumes))
            .add_service(NetworksServer::new(networks))
            .add_service(SystemServer::new(system))
            .add_service(SandboxesServer::new(sandboxes))
            .add_service(CheckpointsServer::new(checkpoints))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move { stopped.notified().await }),
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    // No restart policy acts from here on.
    mgr.shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
    if args.shutdown_containers {
        tracing::info!("berthd stopping its containers");
        mgr.stop_all(crate::stop::DEFAULT_STOP_TIMEOUT).await;
    } else {
        tracing::info!("berthd stopping; containers keep running");
    }
    stop.notify_one();
    // In-flight calls get a moment to finish; followers of logs and events
    // would otherwise hold the daemon forever.
    let result = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
    bound.remove();
    if let Some((task, bound)) = cri {
        task.abort();
        bound.remove();
    }
    let _ = std::fs::remove_file(&shim_events);
    drop(metrics_task);
    if let Err(e) = mgr.net.networks.release() {
        tracing::warn!("releasing the network namespace directory: {e}");
    }
    if let Err(e) = mgr.release_pin_dir() {
        tracing::warn!("releasing the sandbox namespace directory: {e}");
    }
    match result {
        Ok(Ok(r)) => r.map_err(|e| format!("serve: {e}")),
        Ok(Err(e)) => Err(format!("server task: {e}")),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_cri_socket_turns_cri_off() {
        use clap::Parser;
        let args = super::Args::try_parse_from(["berthd", "--cri-socket", ""]).expect("an empty value parses");
        assert!(args.cri_socket.as_os_str().is_empty());
    }

    #[test]
    fn log_levels_are_levels_or_target_directives() {
        for good in ["debug", "WARN", "info,berthd=trace", "berth_cri::streaming=debug", "info, berthd=debug"] {
            assert!(super::log_filter(good).is_ok(), "{good}");
        }
        for bad in ["", "verbose", "no such level!", "berthd=loud", "info,=x", "a b=info"] {
            assert!(super::log_filter(bad).is_err(), "{bad}");
        }
    }
}
