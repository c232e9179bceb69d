//! Checkpoint and restore of the embedded runtime's containers through
//! CRIU's RPC (`rust-criu`; libcontainer 0.7 has a checkpoint but no
//! restore, and its checkpoint does not declare masked files). The images
//! are laid out as runc lays them out: bind mounts external and keyed by
//! their destination (masked files are bound from the container's own
//! /dev/null, so they are not), cgroup v1 mounts external, the network namespace external (`extRootNetNS`), and
//! `descriptors.json` naming init's stdio. On restore, the new container's
//! stdio replace the recorded ones (`inherit_fd`), so a restore under a new
//! id or on another daemon writes to its own logs.
//!
//! Both run in a forked runtime helper (`isolate.rs`): restore moves that
//! helper into the container's cgroup and a private mount namespace before
//! CRIU starts, so the restored processes land in the cgroup and the
//! rootfs bind mount CRIU needs never leaks.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};
use rust_criu::{CgMode, Criu};
use serde::{Deserialize, Serialize};

use crate::{RuntimeError, Stdio};

/// Where berth's CRIU is: `BERTH_CRIU` (set by berthd from `--criu`), else
/// `criu` on PATH.
pub const CRIU_ENV: &str = "BERTH_CRIU";
const DESCRIPTORS: &str = "descriptors.json";
const DUMP_LOG: &str = "dump.log";
const RESTORE_LOG: &str = "restore.log";
const NET_KEY: &str = "extRootNetNS";

/// What a checkpoint or a restore asks of CRIU (SPEC B16).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// CRIU's image directory.
    pub images: PathBuf,
    /// CRIU's work directory: its logs go there.
    pub work: PathBuf,
    /// Keep the container running after the dump.
    pub leave_running: bool,
    pub tcp_established: bool,
    pub shell_job: bool,
    pub ext_unix_sk: bool,
}

pub fn criu_path() -> String {
    std::env::var(CRIU_ENV).ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "criu".to_string())
}

fn failed(op: &'static str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed { runtime: "embedded", op, message: message.into() }
}

/// CRIU's error, with the last error lines of its log and the log's path
/// (never the whole log).
fn criu_failed(op: &'static str, err: impl std::fmt::Display, log: &Path) -> RuntimeError {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error (")).collect();
    let last = errors.iter().rev().take(2).rev().map(|l| l.trim()).collect::<Vec<_>>().join("; ");
    let detail = if last.is_empty() { String::new() } else { format!(": {last}") };
    failed(op, format!("criu {op} failed ({err}){detail} (log: {})", log.display()))
}

/// Opens a directory for CRIU, which inherits the descriptor.
fn inheritable_dir(path: &Path) -> Result<OwnedFd, RuntimeError> {
    std::fs::create_dir_all(path).map_err(|e| RuntimeError::io("create a checkpoint directory", e))?;
    let f = File::open(path).map_err(|e| RuntimeError::io("open a checkpoint directory", e))?;
    inheritable(f.into())
}

/// Clears close-on-exec: CRIU (spawned by rust-criu) must inherit `fd`.
fn inheritable(fd: OwnedFd) -> Result<OwnedFd, RuntimeError> {
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
        .map_err(|e| RuntimeError::io("pass a descriptor to criu", e.into()))?;
    Ok(fd)
}

fn criu() -> Result<Criu, RuntimeError> {
    Criu::new_with_criu_path(criu_path()).map_err(|e| failed("checkpoint", format!("criu: {e}")))
}

/// CRIU's configuration for one dump or restore, read through
/// `CRIU_CONFIG_FILE` (RPC mode honours it): without established TCP
/// connections to keep there is nothing to lock in the container's own
/// network namespace, and locking (iptables rules, then their removal in
/// the restored namespace) costs ~40 ms.
pub fn criu_config(c: &Checkpoint) -> Result<Option<PathBuf>, RuntimeError> {
    if c.tcp_established {
        return Ok(None);
    }
    std::fs::create_dir_all(&c.work).map_err(|e| RuntimeError::io("create the criu work directory", e))?;
    let path = c.work.join("criu.conf");
    std::fs::write(&path, "network-lock skip\n").map_err(|e| RuntimeError::io("write criu.conf", e))?;
    Ok(Some(path))
}

/// Points the CRIU this helper starts at `criu_config`.
fn configure(c: &Checkpoint) -> Result<(), RuntimeError> {
    if let Some(path) = criu_config(c)? {
        // SAFETY: runtime helpers are single-threaded forks (isolate.rs).
        unsafe { std::env::set_var("CRIU_CONFIG_FILE", path) };
    }
    Ok(())
}

fn is_bind(m: &libcontainer::oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options().as_ref().is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// The cgroup v1 hierarchies' mount points (a v2-only host has none).
fn cgroup_v1_mounts() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    berth_model::mountinfo::mounts(&text).filter(|m| m.fstype == "cgroup").map(|m| m.point.into_owned()).collect()
}

/// The container's own network namespace: the path the spec names, or,
/// for one the runtime made (dump only), init's.
fn netns_path(spec: &Spec, pid: Option<i32>) -> Option<PathBuf> {
    let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
    let netns = namespaces.iter().find(|n| n.typ() == LinuxNamespaceType::Network)?;
    netns.path().clone().or_else(|| pid.map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net"))))
}

/// Mounts that come from outside the container, keyed by destination:
/// on dump the value is the key, on restore the host source.
fn external_mounts(criu: &mut Criu, spec: &Spec, restore: bool) {
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().to_string_lossy().into_owned();
        if is_bind(m) {
            let source = m.source().as_ref().map(|s| s.to_string_lossy().into_owned());
            let val = if restore { source.unwrap_or_else(|| dest.clone()) } else { dest.clone() };
            criu.set_external_mount(dest, val);
        } else if m.typ().as_deref() == Some("cgroup") {
            for mp in cgroup_v1_mounts() {
                criu.set_external_mount(mp.clone(), mp);
            }
        }
    }
}

/// The container's freezer: the v1 freezer hierarchy's cgroup, or its v2
/// cgroup.
fn freezer_cgroup(spec: &Spec) -> Option<String> {
    let path = spec.linux().as_ref()?.cgroups_path().clone()?;
    let rel = path.strip_prefix("/").unwrap_or(&path);
    let v1 = Path::new("/sys/fs/cgroup/freezer");
    let base = if v1.is_dir() { v1 } else { Path::new("/sys/fs/cgroup") };
    let dir = base.join(rel);
    dir.is_dir().then(|| dir.to_string_lossy().into_owned())
}

/// Whether a freezer cgroup (v1 `freezer.state`, v2 `cgroup.freeze`) is frozen.
fn frozen(dir: &Path) -> bool {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    read("freezer.state").trim() == "FROZEN" || read("cgroup.freeze").trim() == "1"
}

/// Dumps the container whose init is `pid` into `c.images`.
pub fn dump(pid: i32, spec: &Spec, rootfs: &Path, c: &Checkpoint) -> Result<(), RuntimeError> {
    let images = inheritable_dir(&c.images)?;
    let work = inheritable_dir(&c.work)?;
    // Which stdio init has, for the restore to replace.
    let descriptors: Vec<String> = (0..3)
        .map(|n| {
            std::fs::read_link(format!("/proc/{pid}/fd/{n}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "/dev/null".into())
        })
        .collect();
    configure(c)?;
    let json = serde_json::to_vec(&descriptors).map_err(|e| failed("checkpoint", e.to_string()))?;
    std::fs::write(c.images.join(DESCRIPTORS), json).map_err(|e| RuntimeError::io("write descriptors.json", e))?;
    let mut criu = criu()?;
    external_mounts(&mut criu, spec, false);
    if let Some(netns) = netns_path(spec, Some(pid)) {
        let ino = std::fs::metadata(&netns).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let ino = ino.map_err(|e| RuntimeError::io("stat the network namespace", e))?;
        criu.add_external(format!("net[{ino}]:{NET_KEY}"));
    }
    criu.set_images_dir_fd(images.as_raw_fd());
    criu.set_work_dir_fd(work.as_raw_fd());
    criu.set_log_file(DUMP_LOG.to_string());
    criu.set_log_level(4);
    criu.set_pid(pid);
    criu.set_root(rootfs.to_string_lossy().into_owned());
    criu.set_leave_running(c.leave_running);
    criu.set_tcp_established(c.tcp_established);
    criu.set_shell_job(c.shell_job);
    criu.set_ext_unix_sk(c.ext_unix_sk);
    criu.set_orphan_pts_master(true);
    criu.set_manage_cgroups(true);
    criu.cgroups_mode(CgMode::SOFT);
    // A paused container is dumped through its (frozen) freezer cgroup,
    // and left paused; a running one is seized task by task, which is
    // faster than CRIU's freezer polling.
    if let Some(freezer) = freezer_cgroup(spec).filter(|f| frozen(Path::new(f))) {
        criu.set_freeze_cgroup(freezer);
    }
    criu.dump().map_err(|e| criu_failed("checkpoint", e, &c.work.join(DUMP_LOG)))
}

/// Restores a container from `c.images` in the cgroup and network
/// namespace `spec` names, with `stdio` in place of the recorded stdio;
/// returns init's pid (a child of the calling helper until it exits).
pub fn restore(id: &str, spec: &Spec, rootfs: &Path, stdio: Stdio, c: &Checkpoint) -> Result<u32, RuntimeError> {
    let recorded: Vec<String> = std::fs::read(c.images.join(DESCRIPTORS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| failed("restore", format!("{} has no {DESCRIPTORS}", c.images.display())))?;
    configure(c)?;
    enter_cgroup(id, spec)?;
    let criu_root = private_root(rootfs, &c.work)?;
    let images = inheritable_dir(&c.images)?;
    let work = inheritable_dir(&c.work)?;
    let mut criu = criu()?;
    external_mounts(&mut criu, spec, true);
    // Kept open until CRIU has inherited them.
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut inherit = |criu: &mut Criu, fd: OwnedFd, key: String| -> Result<(), RuntimeError> {
        let fd = inheritable(fd)?;
        criu.add_inherit_fd(fd.as_raw_fd(), key).map_err(|e| failed("restore", format!("criu: {e}")))?;
        held.push(fd);
        Ok(())
    };
    if let Some(netns) = netns_path(spec, None) {
        let ns = File::open(&netns).map_err(|e| RuntimeError::io("open the network namespace", e))?;
        inherit(&mut criu, ns.into(), NET_KEY.to_string())?;
    }
    let given = [stdio.stdin, stdio.stdout, stdio.stderr];
    for (old, new) in recorded.iter().zip(given) {
        if old == "/dev/null" && new.is_none() {
            continue;
        }
        let fd = match new {
            Some(fd) => fd,
            None => File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| RuntimeError::io("open /dev/null", e))?
                .into(),
        };
        // CRIU names a regular file by its path without the leading '/'.
        inherit(&mut criu, fd, old.strip_prefix('/').unwrap_or(old).to_string())?;
    }
    criu.set_images_dir_fd(images.as_raw_fd());
    criu.set_work_dir_fd(work.as_raw_fd());
    criu.set_log_file(RESTORE_LOG.to_string());
    criu.set_log_level(4);
    criu.set_root(criu_root.to_string_lossy().into_owned());
    criu.set_rst_sibling(true);
    criu.set_tcp_established(c.tcp_established);
    criu.set_shell_job(c.shell_job);
    criu.set_ext_unix_sk(c.ext_unix_sk);
    criu.set_manage_cgroups(true);
    // The helper is in the container's cgroup already: CRIU leaves the
    // restored tasks where it is.
    criu.cgroups_mode(CgMode::IGNORE);
    criu.restore().map_err(|e| criu_failed("restore", e, &c.work.join(RESTORE_LOG)))?;
    drop(held);
    restored_child().ok_or_else(|| failed("restore", "criu restored no process"))
}

/// Creates the container's cgroup, applies its limits and moves the
/// calling helper into it.
fn enter_cgroup(id: &str, spec: &Spec) -> Result<(), RuntimeError> {
    use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt, create_cgroup_manager};
    let linux = spec.linux().as_ref().ok_or_else(|| failed("restore", "the spec has no linux section"))?;
    let path = linux.cgroups_path().clone().ok_or_else(|| failed("restore", "the spec names no cgroup"))?;
    let config = CgroupConfig { cgroup_path: path, systemd_cgroup: false, container_name: id.to_string() };
    let manager = create_cgroup_manager(config).map_err(|e| failed("restore", format!("cgroup: {e}")))?;
    manager.add_task(nix::unistd::getpid()).map_err(|e| failed("restore", format!("cgroup: {e}")))?;
    if let Some(resources) = linux.resources() {
        let opt = ControllerOpt { resources, disable_oom_killer: false, oom_score_adj: None, freezer_state: None };
        manager.apply(&opt).map_err(|e| failed("restore", format!("cgroup limits: {e}")))?;
    }
    Ok(())
}

/// A private mount namespace for the helper, with the rootfs bound at a
/// directory of its own: CRIU wants the root as a mount point.
fn private_root(rootfs: &Path, work: &Path) -> Result<PathBuf, RuntimeError> {
    use nix::mount::{MsFlags, mount};
    let err = |what: &'static str| move |e: nix::Error| RuntimeError::io(what, e.into());
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(err("unshare the mount namespace"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(err("make mounts private"))?;
    let root = work.join("criu-root");
    std::fs::create_dir_all(&root).map_err(|e| RuntimeError::io("create criu-root", e))?;
    mount(Some(rootfs), &root, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(err("bind the rootfs for criu"))?;
    Ok(root)
}

/// The restored init: with `rst_sibling` it is the helper's only child
/// left once CRIU has been waited for.
fn restored_child() -> Option<u32> {
    let me = std::process::id();
    let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse().ok()).next()
}
