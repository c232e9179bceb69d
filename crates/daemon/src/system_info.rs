//! `berth system info` and `berth system df` (issue 17 item 4): what berthd
//! runs with — versions, runtimes found, the cgroup layout, CRIU, paths,
//! counts — and the disk space its directories take. Both look at the host
//! when asked (runtimes answer `--version`), off the async workers.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_api::v1 as pb;
use berth_model::State;

use crate::error::{Error, Result};
use crate::manager::Manager;

/// How long a runtime or CRIU may take to print its version.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// Controllers reported, when the host has them.
const CONTROLLERS: [&str; 9] = ["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb"];

/// The first line `binary FLAG` prints (`--version`; containerd's shims
/// take `-v`), or why there is none. Its output goes to a memfd, read once
/// it has exited (a grandchild holding a pipe could block a read); after
/// [`VERSION_TIMEOUT`] its whole process group is killed.
fn version_of(binary: &Path, flag: &str) -> (bool, String) {
    let out = match nix::sys::memfd::memfd_create(c"berth-version", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return (false, format!("memfd: {e}")),
    };
    let stdout = match out.try_clone() {
        Ok(f) => f,
        Err(e) => return (false, format!("memfd: {e}")),
    };
    let child = std::process::Command::new(binary)
        .arg(flag)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot run: {e}")),
    };
    let deadline = std::time::Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(group, nix::sys::signal::SIGKILL);
                let _ = child.wait();
                return (false, format!("did not answer {flag}"));
            }
        }
    }
    let mut text = String::new();
    let mut out = out;
    let read = std::io::Seek::rewind(&mut out)
        .and_then(|()| std::io::Read::read_to_string(&mut std::io::Read::take(&mut out, 64 * 1024), &mut text));
    match (read, text.lines().map(str::trim).find(|l| !l.is_empty())) {
        (Ok(_), Some(line)) => (true, line.to_string()),
        _ => (false, "printed no version".into()),
    }
}

fn runtime(name: &str, binary: &str, flag: &str) -> pb::RuntimeInfo {
    match berth_vm::on_path(binary) {
        Some(path) => {
            let (available, version) = version_of(&path, flag);
            pb::RuntimeInfo { name: name.into(), path: path.to_string_lossy().into_owned(), version, available }
        }
        None => {
            pb::RuntimeInfo { name: name.into(), version: format!("{binary} is not on PATH"), ..Default::default() }
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Manager {
    /// What berthd runs with (blocking: runs the runtimes' `--version`).
    pub(crate) fn system_info(&self) -> Result<pb::SystemInfo> {
        let recs = self.store.list(None)?;
        let state = |s: State| count(recs.iter().filter(|r| r.state == s).count());
        let mut runtimes = vec![pb::RuntimeInfo {
            name: "embedded".into(),
            path: self.cfg.shim_binary.to_string_lossy().into_owned(),
            version: format!("youki's libcontainer, linked into berth-shim {}", env!("CARGO_PKG_VERSION")),
            available: self.cfg.shim_binary.is_file(),
        }];
        runtimes.push(runtime("runc", "runc", "--version"));
        runtimes.push(runtime("crun", "crun", "--version"));
        runtimes.push(runtime("io.containerd.runc.v2", "containerd-shim-runc-v2", "-v"));
        let (criu_ok, criu_version) = version_of(&self.cfg.criu, "--version");
        let free = nix::sys::statvfs::statvfs(&self.cfg.root)
            .map(|s| s.blocks_available() * s.fragment_size())
            .map_err(|e| Error::io(format!("statvfs {}", self.cfg.root.display()), e.into()))?;
        Ok(pb::SystemInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            root: self.cfg.root.to_string_lossy().into_owned(),
            state: self.cfg.state.to_string_lossy().into_owned(),
            socket: self.cfg.socket.to_string_lossy().into_owned(),
            default_runtime: self.cfg.default_runtime.clone(),
            runtimes,
            cgroup_version: if self.cgroups.is_v2() { "v2" } else { "v1" }.into(),
            cgroup_driver: "cgroupfs".into(),
            cgroup_parent: self.cfg.cgroup_parent.clone(),
            cgroup_controllers: CONTROLLERS
                .iter()
                .filter(|c| self.cgroups.has_controller(c))
                .map(|c| c.to_string())
                .collect(),
            criu_path: self.cfg.criu.to_string_lossy().into_owned(),
            criu_version: if criu_ok { criu_version } else { format!("not usable: {criu_version}") },
            containers: count(recs.len()),
            running: state(State::Running),
            paused: state(State::Paused),
            stopped: state(State::Stopped),
            sandboxes: count(self.store.list_sandboxes(None)?.len()),
            images: count(self.images.list()?.len()),
            volumes: count(self.volume_list()?.len()),
            networks: count(self.net.networks.list()?.len()),
            root_free_bytes: free,
        })
    }

    /// Space taken under berthd's directories, by kind (blocking: walks
    /// them).
    pub(crate) fn system_df(&self) -> Result<Vec<pb::DfEntry>> {
        let snapshots = self.images.snapshots.root();
        let kinds: [(&str, PathBuf); 7] = [
            ("bundles", self.cfg.state.join("bundles")),
            ("logs", self.cfg.root.join("logs")),
            ("images", self.cfg.root.join("content")),
            ("layers", snapshots.join("committed")),
            ("writable", snapshots.join("active")),
            ("volumes", self.cfg.root.join("volumes")),
            ("checkpoints", self.cfg.root.join("checkpoints")),
        ];
        kinds
            .into_iter()
            .map(|(kind, path)| {
                let usage = berth_images::disk_usage(&path)?;
                Ok(pb::DfEntry {
                    kind: kind.into(),
                    path: path.to_string_lossy().into_owned(),
                    bytes: usage.bytes,
                    inodes: usage.inodes,
                })
            })
            .collect()
    }
}
