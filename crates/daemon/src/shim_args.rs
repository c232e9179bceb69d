//! Who a shim serves and how it is started: the arguments berthd gives
//! berth-shim (or a containerd v2 shim), how a live shim is recognised by
//! them, and the cleanup of a container whose shim is gone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_model::{ContainerId, ExitStatus, Namespace};

use crate::error::{Error, Result};
use crate::shim::Dialect;
use crate::shim_v2::V2;

/// Who a shim serves and how it runs containers (see `Manager::shim_args`).
pub struct ShimArgs {
    pub binary: PathBuf,
    pub namespace: Namespace,
    pub id: ContainerId,
    pub runtime: String,
    pub runtime_root: PathBuf,
    /// Set for a containerd v2 shim; berth-shim otherwise.
    pub v2: Option<V2>,
    /// A sandbox's berth-shim (`--sandbox`): `id` is the sandbox's.
    pub sandbox: bool,
    /// It also holds the sandbox's PID namespace (`--pid-init`; not part
    /// of what `matches` compares).
    pub pid_init: bool,
    /// More flags: a VM shim's (`vm.rs`; not compared either).
    pub extra: Vec<std::ffi::OsString>,
}

impl ShimArgs {
    pub fn dialect(&self) -> Dialect {
        match &self.v2 {
            None => Dialect::Berth,
            Some(v2) => Dialect::V2 { logger: v2.logger.clone(), options: v2.options(self) },
        }
    }

    /// Whether process `pid` is a shim started with these arguments (so a
    /// recycled pid is never taken for a shim).
    pub fn matches(&self, pid: u32) -> bool {
        let args = crate::control::cmdline(pid);
        if let Some(v2) = &self.v2 {
            return v2.matches(self, &args);
        }
        let has = |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag && w[1] == value);
        args.first().is_some_and(|a| a.ends_with("berth-shim"))
            && args.iter().any(|a| a == "--sandbox") == self.sandbox
            && has("--namespace", self.namespace.as_str())
            && has("--id", self.id.as_str())
            && has("--runtime-root", &self.runtime_root.to_string_lossy())
    }

    /// Whether process `pid` runs this very shim binary (the same file, so
    /// this version of berth-shim, not one an upgrade has since replaced).
    pub fn runs_binary(&self, pid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Ok(running), Ok(ours)) = (std::fs::metadata(format!("/proc/{pid}/exe")), std::fs::metadata(&self.binary))
        else {
            return false;
        };
        (running.dev(), running.ino()) == (ours.dev(), ours.ino())
    }

    /// Pids of the shim processes started with these arguments.
    pub fn processes(&self) -> Vec<u32> {
        let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        pids.filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
            .filter(|pid| self.matches(*pid))
            .collect()
    }

    pub(crate) fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--namespace")
            .arg(self.namespace.as_str())
            .arg("--id")
            .arg(self.id.as_str())
            .arg("--runtime")
            .arg(&self.runtime)
            .arg("--runtime-root")
            .arg(&self.runtime_root)
            .env(berth_shim::MALLOC_TUNABLES_VAR, berth_shim::malloc_tunables())
            .stdin(Stdio::null());
        if self.sandbox {
            cmd.arg("--sandbox");
        }
        if self.pid_init {
            cmd.arg("--pid-init");
        }
        cmd.args(&self.extra);
        // spawn.rs does the same for a shim it starts (it runs no hooks).
        crate::nofile::restore_in(&mut cmd);
        cmd
    }
}

/// How long a cleanup of a dead shim's container may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Cleans up a container whose shim is gone (SPEC B19): runs
/// `berth-shim --cleanup BUNDLE`, which kills what is left in the
/// container's cgroup and deletes the runtime's state. Returns the exit the
/// shim had recorded, if any.
pub async fn cleanup(a: &ShimArgs, bundle: &Path) -> Result<Option<ExitStatus>> {
    if let Some(v2) = &a.v2 {
        return v2.delete(a, bundle).await;
    }
    let mut cmd = a.command();
    cmd.arg("--cleanup").arg(bundle).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let out = tokio::time::timeout(CLEANUP_TIMEOUT, cmd.output())
        .await
        .map_err(|_| Error::DeadlineExceeded(format!("cleanup of {} took longer than {CLEANUP_TIMEOUT:?}", a.id)))?
        .map_err(|e| Error::io(format!("run {}", a.binary.display()), e))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::Shim { code: berth_model::Code::Internal, message: msg });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::Shim {
        code: berth_model::Code::Internal,
        message: format!("cleanup of {} answered badly: {e}", a.id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(binary: PathBuf) -> ShimArgs {
        ShimArgs {
            binary,
            namespace: Namespace::new("default").unwrap(),
            id: ContainerId::new("c").unwrap(),
            runtime: "embedded".into(),
            runtime_root: PathBuf::from("/nonexistent"),
            v2: None,
            sandbox: false,
            pid_init: false,
            extra: Vec::new(),
        }
    }

    #[test]
    fn runs_binary_tells_the_same_file_from_another() {
        let me = std::process::id();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(args(exe).runs_binary(me));
        // A copy is another file: what an upgrade that replaced the binary leaves.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("berth-shim");
        std::fs::copy("/proc/self/exe", &copy).unwrap();
        assert!(!args(copy.clone()).runs_binary(me));
        assert!(!args(copy).runs_binary(u32::MAX));
    }
}
