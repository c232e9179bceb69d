//! The host side of VM sandboxes (SPEC B26, docs/vm.md). A [`Vmm`] turns
//! a [`VmSpec`] into the commands that run it (its helper processes and
//! the VMM itself); [`launch`] starts them as children that die with their
//! parent (PR_SET_PDEATHSIG), in order, each helper's socket ready before
//! the next; the returned [`Vm`] owns them, and dropping it kills them and
//! removes the VM's state directory, so a failed start leaves nothing.
//! Their output (the guest's console among it) is kept in memory, only its
//! last 64 KiB each: a guest writes to its console as much as it likes.

pub mod accel;
pub mod assets;
pub mod qemu;
pub mod vsock;

use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use accel::{Accel, AccelChoice};
pub use assets::Assets;
use berth_model::vm::{AGENT_PORT, READY_LINE};

/// The smallest guest memory. Measured here: with 96 MiB the kernel
/// panics unpacking the initramfs, with 64 it does not even start (QEMU
/// loads the ELF kernel and initramfs into guest memory); 112 boots.
pub const MIN_MEMORY_MIB: u64 = 128;
/// Guest memory when nothing sizes it.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// The most vCPUs a guest gets.
pub const MAX_CPUS: u32 = 64;
/// The most memory a VM gets (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// How long a helper may take to create its socket.
const HELPER_READY: Duration = Duration::from_secs(5);
/// The console lines an error quotes.
const CONSOLE_TAIL: usize = 12;
/// The output kept of each of a VM's processes.
const OUTPUT_KEPT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Assets(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the VM did not boot: {0}")]
    Boot(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// One VM to start.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The sandbox's id (the guest shim's `--id`).
    pub id: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Shared with the guest at `berth_model::vm::GUEST_SHARE`.
    pub share: PathBuf,
    /// The VM's own directory (sockets, console log); made by `launch`,
    /// removed with the [`Vm`].
    pub state: PathBuf,
    pub accel: Accel,
    pub assets: Assets,
    /// The guest shim's log level (`BERTH_SHIM_LOG`), if any.
    pub guest_log: Option<String>,
    /// The guest's network interface, if it has one besides loopback.
    pub net: Option<GuestNet>,
}

/// The guest's `eth0`: a tap on the host side (its descriptor, which the
/// VMM inherits), the MAC and address the guest takes, and its route.
#[derive(Debug, Clone)]
pub struct GuestNet {
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
    pub mac: String,
    /// `ADDRESS/PREFIX` (IPv4).
    pub cidr: String,
    pub gateway: Option<String>,
    pub mtu: u32,
}

impl VmSpec {
    /// Checks the sizes: 1..=MAX_CPUS vCPUs, at least MIN_MEMORY_MIB.
    pub fn check(&self) -> Result<(), VmError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(VmError::InvalidArgument(format!("a VM has 1 to {MAX_CPUS} vCPUs, not {}", self.cpus)));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(VmError::InvalidArgument(format!(
                "a VM gets at most {MAX_MEMORY_MIB} MiB of memory, not {} MiB",
                self.memory_mib
            )));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(VmError::InvalidArgument(format!(
                "a VM needs at least {MIN_MEMORY_MIB} MiB of memory, not {} MiB",
                self.memory_mib
            )));
        }
        Ok(())
    }

    /// The hybrid-vsock socket the agent is reached through.
    pub fn agent_socket(&self) -> PathBuf {
        self.state.join("vsock")
    }
}

/// The directory of the VM a shim with id `shim_id` runs, under its
/// runtime root: named by a digest of the id, so the unix sockets in it
/// stay within their 107-byte limit whatever the id's length.
pub fn dir_of(runtime_root: &Path, shim_id: &str) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(shim_id.as_bytes());
    let name = hex::encode(&digest[..8]);
    runtime_root.join(format!("{name}.vm"))
}

/// Guest memory in MiB for a limit in bytes: rounded up to whole MiB (so
/// page-aligned), at least MIN_MEMORY_MIB.
pub fn memory_mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20).max(MIN_MEMORY_MIB)
}

/// Guest memory beyond a container's limit: kernel, agent and page cache.
pub const GUEST_OVERHEAD_MIB: u64 = 64;

/// The size of a VM of its own for a container's limits: vCPUs its CPU
/// quota rounded up (1 without one), memory its limit plus the guest's
/// overhead (`DEFAULT_MEMORY_MIB` without one).
pub fn size_for(cpu_quota: Option<i64>, cpu_period: Option<i64>, memory_limit: Option<i64>) -> (u32, u64) {
    let cpus = match (cpu_quota, cpu_period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => (q as u64).div_ceil(p as u64).clamp(1, MAX_CPUS as u64) as u32,
        _ => 1,
    };
    let memory = match memory_limit {
        Some(limit) if limit > 0 => memory_mib(limit as u64) + GUEST_OVERHEAD_MIB,
        _ => DEFAULT_MEMORY_MIB,
    };
    (cpus, memory)
}

/// [`size_for`] the limits in a bundle's config.json (the defaults if it
/// cannot be read).
pub fn size_of_bundle(bundle: &Path) -> (u32, u64) {
    let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let get = |k: &str| spec.pointer(&format!("/linux/resources/{k}")).and_then(serde_json::Value::as_i64);
    size_for(get("cpu/quota"), get("cpu/period"), get("memory/limit"))
}

/// A helper process a VMM needs, and the socket it serves once ready.
pub struct Helper {
    pub name: &'static str,
    pub command: Command,
    pub socket: PathBuf,
}

/// What starts a VM: helpers first, then the VMM, whose stdout is the
/// guest's console.
pub struct Plan {
    pub helpers: Vec<Helper>,
    pub vmm: Command,
}

/// A virtual machine monitor.
pub trait Vmm {
    fn name(&self) -> &'static str;
    fn plan(&self, spec: &VmSpec) -> Result<Plan, VmError>;
}

/// The last [`OUTPUT_KEPT`] bytes a process wrote.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<VecDeque<u8>>>);

impl Output {
    /// Copies what `pipe` carries until its end, keeping the tail.
    fn capture(pipe: std::io::PipeReader) -> Result<Self, VmError> {
        use tokio::io::AsyncReadExt;
        let out = Output::default();
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe.into()).map_err(io_err("output pipe"))?;
        let kept = out.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            while let Ok(n @ 1..) = rx.read(&mut buf).await {
                if let Ok(mut k) = kept.0.lock() {
                    k.extend(&buf[..n]);
                    let over = k.len().saturating_sub(OUTPUT_KEPT);
                    k.drain(..over);
                }
            }
        });
        Ok(out)
    }

    fn text(&self) -> String {
        self.0
            .lock()
            .map(|k| String::from_utf8_lossy(&k.iter().copied().collect::<Vec<u8>>()).into_owned())
            .unwrap_or_default()
    }
}

/// A started VM: its processes (helpers, then the VMM), what they wrote,
/// and where it lives.
pub struct Vm {
    pub spec: VmSpec,
    children: Vec<(&'static str, Child, Output)>,
}

/// Starts `spec` with `vmm` (see the module's docs). Within a tokio
/// runtime: tasks keep the processes' output.
pub fn launch(vmm: &dyn Vmm, spec: &VmSpec) -> Result<Vm, VmError> {
    spec.check()?;
    std::fs::create_dir(&spec.state).map_err(io_err(format!("create {}", spec.state.display())))?;
    // From here on, dropping `vm` undoes everything.
    let mut vm = Vm { spec: spec.clone(), children: Vec::new() };
    let plan = vmm.plan(spec)?;
    for mut helper in plan.helpers {
        let (child, output) = spawn(&mut helper.command)?;
        vm.children.push((helper.name, child, output.clone()));
        let deadline = Instant::now() + HELPER_READY;
        while !listening(&helper.socket) {
            if vm.exited().is_some() || Instant::now() > deadline {
                return Err(VmError::Boot(format!("{} did not start: {}", helper.name, last_lines(&output.text(), 3))));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mut command = plan.vmm;
    let (child, output) = spawn(&mut command)?;
    vm.children.push((vmm.name(), child, output));
    Ok(vm)
}

/// Whether a unix socket listens at `path`, from the unix socket table of
/// the calling thread's network namespace (the helper it spawned is in
/// it). The file appears at bind, before listen: a VMM that connects in
/// between is refused.
fn listening(path: &Path) -> bool {
    /// `__SO_ACCEPTCON`, in the Flags column: the socket listens.
    const ACCEPTCON: u32 = 0x10000;
    let Ok(table) = std::fs::read_to_string("/proc/thread-self/net/unix") else { return path.exists() };
    let tail = format!(" {}", path.display());
    table.lines().skip(1).filter(|l| l.ends_with(&tail)).any(|l| {
        let flags = l.split_whitespace().nth(3).and_then(|f| u32::from_str_radix(f, 16).ok());
        flags.is_some_and(|f| f & ACCEPTCON != 0)
    })
}

/// Starts a child that dies with us, its stdout and stderr captured.
fn spawn(command: &mut Command) -> Result<(Child, Output), VmError> {
    let (rx, tx) = std::io::pipe().map_err(io_err("output pipe"))?;
    let err = tx.try_clone().map_err(io_err("output pipe"))?;
    command.stdin(Stdio::null()).stdout(tx).stderr(err);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nothing would end us.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the VM's owner is gone"));
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(io_err(format!("start {}", command.get_program().to_string_lossy())))?;
    // The write ends are the child's alone now (`command` holds copies
    // until it is dropped or reused).
    command.stdout(Stdio::null()).stderr(Stdio::null());
    Ok((child, Output::capture(rx)?))
}

impl Vm {
    /// The pids of the VM's processes, helpers first.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c, _)| c.id()).collect()
    }

    /// The first of the VM's processes found exited, and how.
    pub fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, c, _)| c.try_wait().ok().flatten().map(|status| format!("{name} exited ({status})")))
    }

    /// Waits until the guest agent says it is ready on the console and
    /// accepts a connection, and returns it. A VM that exits or does not
    /// get there within `timeout` is an error quoting the end of its
    /// console.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<tokio::net::UnixStream, VmError> {
        let deadline = Instant::now() + timeout;
        let socket = self.spec.agent_socket();
        let mut last = String::from("not dialled");
        loop {
            if let Some(how) = self.exited() {
                return Err(VmError::Boot(format!("{how}; console: {}", self.console_tail())));
            }
            if Instant::now() > deadline {
                let helpers: Vec<String> = self.children[..self.children.len().saturating_sub(1)]
                    .iter()
                    .map(|(name, _, out)| format!("{name}: {}", last_lines(&out.text(), 3)))
                    .collect();
                return Err(VmError::Boot(format!(
                    "no agent after {timeout:?} ({last}); console: {}; {}",
                    self.console_tail(),
                    helpers.join("; ")
                )));
            }
            // Dialled once the agent says it listens: a connection asked for
            // while the guest's vsock driver is still coming up can leave
            // the backend waiting for an answer that never comes.
            let said_ready = self.children.last().is_some_and(|(_, _, out)| out.text().contains(READY_LINE));
            if !said_ready {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let attempt = tokio::time::timeout(Duration::from_secs(5), vsock::dial(&socket, AGENT_PORT)).await;
            match attempt {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "the dial timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of the guest's console (the VMM's output), on one line.
    pub fn console_tail(&self) -> String {
        let console = self.children.last().map(|(_, _, out)| out.text()).unwrap_or_default();
        last_lines(&console, CONSOLE_TAIL)
    }

    /// Waits up to `grace` for the VMM to exit by itself (a guest that
    /// powered off), then kills everything. True if it had exited.
    pub async fn stop(mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let clean = loop {
            if let Some((_, vmm, _)) = self.children.last_mut()
                && vmm.try_wait().ok().flatten().is_some()
            {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        drop(self);
        clean
    }
}

impl Drop for Vm {
    /// Kills the VMM, then its helpers, reaps them, and removes the state.
    fn drop(&mut self) {
        for (_, child, _) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.spec.state);
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The executable file `program` in one of PATH's directories, as berthd
/// and its shims find a runtime's or a VMM's binary (`system info`
/// reports the same).
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_whole_mib_and_at_least_the_minimum() {
        assert_eq!(memory_mib(1), MIN_MEMORY_MIB);
        assert_eq!(memory_mib(300 << 20), 300);
        assert_eq!(memory_mib(100 << 20), MIN_MEMORY_MIB);
        assert_eq!(memory_mib((300 << 20) + 1), 301);
        assert_eq!(size_for(None, None, None), (1, DEFAULT_MEMORY_MIB));
        assert_eq!(size_for(Some(150_000), Some(100_000), Some(200 << 20)), (2, 200 + GUEST_OVERHEAD_MIB));
        assert_eq!(size_for(Some(-1), Some(100_000), Some(-1)), (1, DEFAULT_MEMORY_MIB));
        assert_eq!(size_for(Some(i64::MAX), Some(1), Some(1)), (MAX_CPUS, MIN_MEMORY_MIB + GUEST_OVERHEAD_MIB));
    }

    #[test]
    fn a_socket_is_ready_once_it_listens_not_once_it_is_bound() {
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        assert!(!listening(&path), "no socket yet");
        let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(&path).unwrap()).unwrap();
        assert!(path.exists());
        assert!(!listening(&path), "bound, not listening");
        assert!(!listening(&dir.path().join("ct")), "a prefix is not the path");
        listen(&fd, Backlog::new(1).unwrap()).unwrap();
        assert!(listening(&path));
    }

    #[test]
    fn console_tail_keeps_the_last_lines() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("", 2), "");
    }
}
