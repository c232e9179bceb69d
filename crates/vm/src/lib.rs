//! The host side of VM sandboxes (SPEC B26, docs/vm.md). A [`Vmm`] turns
//! a [`VmSpec`] into the commands that run it (its helper processes and
//! the VMM itself); [`launch`] starts them as children that die with their
//! parent (PR_SET_PDEATHSIG), in order, each helper's socket ready before
//! the next; the returned [`Vm`] owns them, and dropping it kills them and
//! removes the VM's state directory, so a failed start leaves nothing.

pub mod accel;
pub mod assets;
pub mod qemu;
pub mod vsock;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use accel::{Accel, AccelChoice};
pub use assets::Assets;
use berth_model::vm::AGENT_PORT;

/// The smallest guest memory: the kernel, the unpacked initramfs and the
/// agent need about 40 MiB before any container runs.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Guest memory when nothing sizes it.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// The most vCPUs a guest gets.
pub const MAX_CPUS: u32 = 64;
/// How long a helper may take to create its socket.
const HELPER_READY: Duration = Duration::from_secs(5);
/// The console lines an error quotes.
const CONSOLE_TAIL: usize = 12;

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
}

impl VmSpec {
    /// Checks the sizes: 1..=MAX_CPUS vCPUs, at least MIN_MEMORY_MIB.
    pub fn check(&self) -> Result<(), VmError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(VmError::InvalidArgument(format!("a VM has 1 to {MAX_CPUS} vCPUs, not {}", self.cpus)));
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

    pub fn console_log(&self) -> PathBuf {
        self.state.join("console.log")
    }
}

/// The directory of the VM a shim with id `shim_id` runs, under its
/// runtime root: named by a digest of the id, so the unix sockets in it
/// stay within their 107-byte limit whatever the id's length.
pub fn dir_of(runtime_root: &Path, shim_id: &str) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(shim_id.as_bytes());
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    runtime_root.join(format!("{name}.vm"))
}

/// Guest memory in MiB for a limit in bytes: rounded up to whole MiB (so
/// page-aligned), at least MIN_MEMORY_MIB.
pub fn memory_mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20).max(MIN_MEMORY_MIB)
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

/// A started VM: its processes (helpers, then the VMM) and where it lives.
pub struct Vm {
    pub spec: VmSpec,
    children: Vec<(&'static str, Child)>,
}

/// Starts `spec` with `vmm` (see the module's docs).
pub fn launch(vmm: &dyn Vmm, spec: &VmSpec) -> Result<Vm, VmError> {
    spec.check()?;
    std::fs::create_dir(&spec.state).map_err(io_err(format!("create {}", spec.state.display())))?;
    // From here on, dropping `vm` undoes everything.
    let mut vm = Vm { spec: spec.clone(), children: Vec::new() };
    let plan = vmm.plan(spec)?;
    for mut helper in plan.helpers {
        let log = File::create(spec.state.join(format!("{}.log", helper.name))).map_err(io_err("helper log"))?;
        let child = spawn(&mut helper.command, log)?;
        vm.children.push((helper.name, child));
        let deadline = Instant::now() + HELPER_READY;
        while !helper.socket.exists() {
            if vm.exited().is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(spec.state.join(format!("{}.log", helper.name))).unwrap_or_default();
                return Err(VmError::Boot(format!("{} did not start: {}", helper.name, last_lines(&log, 3))));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let console = File::create(spec.console_log()).map_err(io_err("console log"))?;
    let mut command = plan.vmm;
    let child = spawn(&mut command, console)?;
    vm.children.push((vmm.name(), child));
    Ok(vm)
}

/// Starts a child with stdout and stderr into `log`, that dies with us.
fn spawn(command: &mut Command, log: File) -> Result<Child, VmError> {
    let err = log.try_clone().map_err(io_err("log"))?;
    command.stdin(Stdio::null()).stdout(log).stderr(err);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(io_err(format!("start {}", command.get_program().to_string_lossy())))
}

impl Vm {
    /// The pids of the VM's processes, helpers first.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    /// The first of the VM's processes found exited, and how.
    pub fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, c)| c.try_wait().ok().flatten().map(|status| format!("{name} exited ({status})")))
    }

    /// Waits until the guest agent accepts a connection, and returns it.
    /// A VM that exits or does not get there within `timeout` is an error
    /// quoting the end of its console.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<tokio::net::UnixStream, VmError> {
        let deadline = Instant::now() + timeout;
        let socket = self.spec.agent_socket();
        loop {
            if let Some(how) = self.exited() {
                return Err(VmError::Boot(format!("{how}; console: {}", self.console_tail())));
            }
            if Instant::now() > deadline {
                return Err(VmError::Boot(format!("no agent after {timeout:?}; console: {}", self.console_tail())));
            }
            let attempt = tokio::time::timeout(Duration::from_secs(1), vsock::dial(&socket, AGENT_PORT)).await;
            if let Ok(Ok(stream)) = attempt {
                return Ok(stream);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of the guest's console, on one line.
    pub fn console_tail(&self) -> String {
        let console = std::fs::read(self.spec.console_log()).unwrap_or_default();
        last_lines(&String::from_utf8_lossy(&console), CONSOLE_TAIL)
    }

    /// Waits up to `grace` for the VMM to exit by itself (a guest that
    /// powered off), then kills everything. True if it had exited.
    pub async fn stop(mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let clean = loop {
            if let Some((_, vmm)) = self.children.last_mut()
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
        for (_, child) in self.children.iter_mut().rev() {
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

/// Whether `path` is a file that can be executed (for helpful errors).
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
        assert_eq!(memory_mib((300 << 20) + 1), 301);
    }

    #[test]
    fn console_tail_keeps_the_last_lines() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("", 2), "");
    }
}
