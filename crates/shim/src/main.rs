//! berth-shim: holds one container's processes (a lone shim) or those of
//! every container of a sandbox (`--sandbox`), reaps them, records their
//! exits durably and serves the containerd shim v2 Task API over ttrpc.
//! It runs in its own session so berthd can die and restart around it.
//!
//! Usage (started by berthd, listener on fd 3):
//!   berth-shim --namespace NS --id ID --runtime NAME --runtime-root DIR [--sandbox [--pid-init]]
//!              [--seccomp-cache DIR]
//! A lone shim exits after the Delete of its container; a sandbox shim
//! (ID names the sandbox) serves any number of containers until Shutdown.
//! After a shim died, berthd cleans up with the same flags plus
//! `--cleanup BUNDLE` (no listener; prints the recorded exit as JSON).
//! Run with containerd's flags (`-namespace … start|delete`) it is
//! containerd's runtime `io.containerd.berth.v1` (see `containerd.rs`).

mod checkpoint;
mod cleanup;
mod containerd;
mod events;
mod exec;
mod output;
mod podinit;
mod process;
mod reaper;
mod rootfs;
mod service;
mod stdio;
mod tasks;
mod to_the_end;
mod tty;
mod vm;
mod vsock_io;

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd};
use std::path::PathBuf;
use std::sync::Arc;

use berth_shim::{LISTEN_FD, TASK_V2, TASK_V3, metrics};
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::asynchronous::transport::Listener;
use containerd_shim_protos::ttrpc::asynchronous::{Server, Service};

struct Args {
    namespace: String,
    id: String,
    runtime: String,
    runtime_root: PathBuf,
    /// Where the embedded runtime keeps compiled seccomp programs, shared
    /// with the daemon's other shims.
    seccomp_cache: Option<PathBuf>,
    cleanup: Option<PathBuf>,
    /// Serve the containers of the sandbox `id` (see `tasks.rs`).
    sandbox: bool,
    /// Hold the sandbox's shared PID namespace (`podinit.rs`).
    pid_init: bool,
    /// Set when containerd started this shim: its ttrpc socket, for events.
    ttrpc_address: Option<String>,
    /// The VM flags (`--runtime vm`): assets, accelerator, a sandbox's size.
    vm_assets: Option<PathBuf>,
    vm_accel: Option<String>,
    vm_cpus: Option<String>,
    vm_memory: Option<String>,
}

fn parse_args(args: Vec<String>) -> Result<Args, String> {
    let mut it = args.into_iter();
    let (mut namespace, mut id, mut runtime, mut root, mut cleanup) = (None, None, None, None, None);
    let mut seccomp_cache = None;
    let (mut ttrpc_address, mut sandbox, mut pid_init) = (None, false, false);
    let (mut vm_assets, mut vm_accel, mut vm_cpus, mut vm_memory) = (None, None, None, None);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--sandbox" => {
                sandbox = true;
                continue;
            }
            "--pid-init" => {
                pid_init = true;
                continue;
            }
            _ => {}
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--namespace" => namespace = Some(value),
            "--id" => id = Some(value),
            "--runtime" => runtime = Some(value),
            "--runtime-root" => root = Some(PathBuf::from(value)),
            "--seccomp-cache" => seccomp_cache = Some(PathBuf::from(value)),
            "--cleanup" => cleanup = Some(PathBuf::from(value)),
            "--ttrpc-address" => ttrpc_address = Some(value),
            "--vm-assets" => vm_assets = Some(PathBuf::from(value)),
            "--vm-accel" => vm_accel = Some(value),
            "--vm-cpus" => vm_cpus = Some(value),
            "--vm-memory" => vm_memory = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        namespace: namespace.ok_or("--namespace is required")?,
        id: id.ok_or("--id is required")?,
        runtime: runtime.ok_or("--runtime is required")?,
        runtime_root: root.ok_or("--runtime-root is required")?,
        seccomp_cache,
        cleanup,
        sandbox,
        pid_init,
        ttrpc_address,
        vm_assets,
        vm_accel,
        vm_cpus,
        vm_memory,
    })
}

fn main() {
    // Logs go to stderr, which berthd points at the bundle's shim.log.
    // Logging is off unless BERTH_SHIM_LOG names a level: every shim lives
    // as long as its container, and an idle logger still costs resident
    // memory. Logs go to a close-on-exec duplicate of stderr (the bundle's
    // shim.log), not to fd 2: container processes log between fork and exec
    // too, after fd 2 has become the container's own stderr. The shim's own
    // errors always reach stderr.
    let level: Option<tracing::Level> = std::env::var("BERTH_SHIM_LOG").ok().and_then(|l| l.parse().ok());
    if let (Some(level), Ok(log)) = (level, std::io::stderr().as_fd().try_clone_to_owned()) {
        let log = std::sync::Arc::new(std::fs::File::from(log));
        tracing_subscriber::fmt().with_max_level(level).with_writer(log).with_ansi(false).init();
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if containerd::is_containerd_call(&argv) {
        if let Err(e) = containerd::parse(&argv).and_then(|f| containerd::run(&f)) {
            eprintln!("berth-shim: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth-shim: {e}");
            std::process::exit(2);
        }
    };
    if let Some(bundle) = &args.cleanup {
        let result = match args.runtime.as_str() {
            berth_model::VM_RUNTIME => vm::cleanup(&args.runtime_root, &args.id, bundle),
            _ => berth_runtime::open(&args.runtime, &args.runtime_root, args.seccomp_cache.as_deref())
                .map_err(|e| e.to_string())
                .and_then(|rt| cleanup::run(&args.id, bundle, rt.as_ref())),
        }
        .and_then(|exit| serde_json::to_string(&exit).map_err(|e| e.to_string()));
        match result {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("berth-shim: cleanup of {}: {e}", args.id);
                std::process::exit(1);
            }
        }
        return;
    }
    // Orphaned container processes are re-parented to us, so we can reap them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("berth-shim: cannot become a child subreaper: {e}");
        std::process::exit(1);
    }
    // Before the runtime starts: the init is cloned from a single thread.
    let pod_init = match args.pid_init.then(podinit::spawn).transpose() {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("berth-shim: {e}");
            std::process::exit(1);
        }
    };
    // A VM shim's binds for its guest live in a mount namespace of its
    // own, made before the runtime's threads (vm/guest_spec.rs).
    if args.runtime == berth_model::VM_RUNTIME
        && let Err(e) = vm::guest_spec::private_mounts()
    {
        eprintln!("berth-shim: {e}");
        std::process::exit(1);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-shim: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let served = match args.runtime.as_str() {
        berth_model::VM_RUNTIME => rt.block_on(serve_vm(args)),
        _ => rt.block_on(serve(args, pod_init)),
    };
    if let Err(e) = served {
        eprintln!("berth-shim: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: Args, pod_init: Option<podinit::PodInit>) -> Result<(), String> {
    let (listener, socket, guest) = listener(&args)?;
    let runtime = berth_runtime::open(&args.runtime, &args.runtime_root, args.seccomp_cache.as_deref())
        .map_err(|e| e.to_string())?;
    // The shim stays single-threaded, so runtime work can run in forked helpers.
    // It forks a helper per call and awaits its answer.
    let runtime = berth_runtime::Isolated::new(runtime);
    let events = args.ttrpc_address.as_deref().map(|a| Arc::new(events::Publisher::spawn(a, args.namespace.clone())));
    let mut shim = tasks::Shim::new(args.namespace, args.id, args.sandbox, socket.clone(), runtime, events.clone());
    shim.pod_init = pod_init.as_ref().map(|p| p.pid);
    shim.guest = guest;
    let shim = Arc::new(shim);
    if let Some(init) = pod_init {
        podinit::watch(init, shim.clone()).map_err(|e| format!("watch the pod's init: {e}"))?;
    }
    let (tracked, spawning) = shim.processes();
    reaper::spawn(tracked, spawning).map_err(|e| format!("reaper: {e}"))?;

    let mut server = Server::new()
        .register_service(task_services(Arc::new(to_the_end::ToTheEnd(shim.clone()))))
        .add_listener(listener);
    server.start().await.map_err(|e| format!("ttrpc: {e}"))?;
    shim.shutdown_requested().await;
    let _ = server.shutdown().await;
    // Under containerd the shim owns its socket and runtime root, and its
    // last events (the delete) must still go out.
    if let Some(events) = events {
        events.flush().await;
        containerd::forget(&socket, &args.runtime_root);
    }
    Ok(())
}

/// Serves the containers of a VM (`--runtime vm`, see `vm/mod.rs`).
async fn serve_vm(args: Args) -> Result<(), String> {
    let (listener, socket, _) = listener(&args)?;
    let accel = match args.vm_accel.as_deref() {
        Some("kvm") => berth_vm::Accel::Kvm,
        Some("tcg") => berth_vm::Accel::Tcg,
        other => return Err(format!("--vm-accel must be kvm or tcg, not {other:?}")),
    };
    fn number<T: std::str::FromStr>(flag: &str, v: &Option<String>) -> Result<Option<T>, String> {
        v.as_deref().map(|v| v.parse().map_err(|_| format!("{flag} {v} is not a number"))).transpose()
    }
    let options = vm::VmOptions {
        assets: args.vm_assets.clone().ok_or("--vm-assets is required with --runtime vm")?,
        accel,
        cpus: number("--vm-cpus", &args.vm_cpus)?,
        memory_mib: number("--vm-memory", &args.vm_memory)?,
    };
    let proxy = vm::VmProxy::new(args.namespace, args.id, args.sandbox, &args.runtime_root, socket, options);
    let mut server = Server::new()
        .register_service(task_services(Arc::new(to_the_end::ToTheEnd(proxy.clone()))))
        .add_listener(listener);
    server.start().await.map_err(|e| format!("ttrpc: {e}"))?;
    proxy.shutdown_requested().await;
    let _ = server.shutdown().await;
    Ok(())
}

/// The listener berthd (a unix socket) or the guest agent (vsock, docs/vm.md)
/// passes as LISTEN_FD, the path the shim's terminal sockets are named
/// after (the unix socket's own, or one in the runtime root), and whether
/// this shim is a VM guest's (vsock).
fn listener(args: &Args) -> Result<(Listener, PathBuf, bool), String> {
    // Inherited without close-on-exec: no runtime helper or container
    // process may keep the shim's listener (helpers, which never exec,
    // close it when forked).
    nix::fcntl::fcntl(LISTEN_FD, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("listener: {e}"))?;
    berth_runtime::close_in_helpers(LISTEN_FD);
    use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname};
    let family = getsockname::<SockaddrStorage>(LISTEN_FD).map_err(|e| format!("listener: {e}"))?.family();
    if family == Some(AddressFamily::Vsock) {
        let nonblocking = nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(LISTEN_FD, nix::fcntl::FcntlArg::F_SETFL(nonblocking))
            .map_err(|e| format!("listener: {e}"))?;
        // SAFETY: the agent passes a bound, listening vsock socket as
        // LISTEN_FD and nothing else in this process owns that descriptor.
        let listener =
            unsafe { Listener::from_raw_vsock_listener_fd(LISTEN_FD) }.map_err(|e| format!("listener: {e}"))?;
        return Ok((listener, args.runtime_root.join("shim.sock"), true));
    }
    // SAFETY: berthd passes a bound, listening unix socket as LISTEN_FD and
    // nothing else in this process owns that descriptor.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTEN_FD) };
    std_listener.set_nonblocking(true).map_err(|e| format!("listener: {e}"))?;
    let socket = std_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from))
        .ok_or("listener on fd 3 has no path")?;
    let listener = tokio::net::UnixListener::from_std(std_listener).map_err(|e| format!("listener: {e}"))?;
    Ok((Listener::from(listener), socket, false))
}

/// The Task service under both names it is called by.
fn task_services(task: Arc<dyn containerd_shim_protos::shim_async::Task + Send + Sync>) -> HashMap<String, Service> {
    let mut services = create_task(task.clone());
    if let Some(task) = create_task(task).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), task);
    }
    services
}
