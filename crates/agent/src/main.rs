//! berth-agent: PID 1 of a VM sandbox's guest (SPEC B26, docs/vm.md).
//!
//! It sets the guest up (`init.rs`: kernel filesystems, the modules the
//! initramfs carries, a tmpfs root runtimes can pivot_root from, cgroup v2,
//! the host's shared directory), binds the agent's vsock port and starts
//! berth-shim on it as a sandbox shim: the guest serves the same shim v2
//! Task API over ttrpc that a host shim does, with youki's libcontainer
//! running the containers. The agent then reaps what reaches it and, when
//! the shim is gone (its Shutdown, or a crash), powers the guest off.

mod init;
mod net;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use berth_model::vm;
use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, VsockAddr, bind, listen, socket};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// The guest's shim (copied into the tmpfs root by `init`).
const SHIM: &str = "/bin/berth-shim";
/// The shim's runtime state in the guest.
const RUNTIME_ROOT: &str = "/run/berth/runtime";
/// Compiled seccomp programs, one per profile, for the VM's containers.
const SECCOMP_CACHE: &str = "/run/berth/seccomp";

fn main() {
    if std::process::id() != 1 {
        eprintln!("berth-agent: runs only as a guest's init (pid 1)");
        std::process::exit(2);
    }
    if let Err(e) = run() {
        eprintln!("berth-agent: {e}");
    }
    init::power_off();
}

fn run() -> Result<(), String> {
    init::prepare()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("read /proc/cmdline: {e}"))?;
    let id = vm::cmdline_value(&cmdline, vm::CMDLINE_ID).ok_or("the kernel command line names no berth.id")?;
    net::configure(&cmdline)?;
    let listener = vsock_listener(vm::AGENT_PORT)?;
    let mut shim = Command::new(SHIM);
    shim.args(["--namespace", "berth", "--id", id, "--runtime", "embedded", "--runtime-root", RUNTIME_ROOT]);
    shim.args(["--seccomp-cache", SECCOMP_CACHE])
        .arg("--sandbox")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    if let Some(level) = vm::cmdline_value(&cmdline, vm::CMDLINE_LOG) {
        shim.env("BERTH_SHIM_LOG", level);
    }
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        shim.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec.
            let done = match fd == berth_shim::LISTEN_FD {
                true => libc::fcntl(fd, libc::F_SETFD, 0),
                false => libc::dup2(fd, berth_shim::LISTEN_FD),
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = shim.spawn().map_err(|e| format!("start {SHIM}: {e}"))?;
    drop(listener);
    println!("{}", vm::READY_LINE);
    reap_until(Pid::from_raw(child.id() as i32))
}

fn vsock_listener(port: u32) -> Result<OwnedFd, String> {
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("vsock socket: {e}"))?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port)).map_err(|e| format!("bind vsock {port}: {e}"))?;
    listen(&fd, Backlog::new(64).map_err(|e| e.to_string())?).map_err(|e| format!("listen on vsock {port}: {e}"))?;
    Ok(fd)
}

/// Reaps every child that reaches PID 1 until `shim` exits.
fn reap_until(shim: Pid) -> Result<(), String> {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == shim => {
                return if code == 0 { Ok(()) } else { Err(format!("berth-shim exited with {code}")) };
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == shim => return Err(format!("berth-shim killed by {sig}")),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}
