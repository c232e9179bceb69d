//! The embedded runtime: youki's libcontainer, in the calling process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use berth_model::{ADAPTED_KEY, swap_masked_eq};
use libcontainer::config::YoukiConfig;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::seccomp::{CompiledSeccomp, initialize_seccomp_compiled};
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use berth_cgroups::Hierarchies;

use crate::{Checkpoint, Runtime, RuntimeError, Stdio};

pub struct Embedded {
    root: PathBuf,
    /// The host's cgroup mounts, read at the first check of a recorded
    /// init (`init_in_cgroup`) or delete, not at every operation.
    hierarchies: OnceLock<Option<Hierarchies>>,
    /// Where compiled seccomp programs are kept (`seccomp.rs`); none:
    /// each create compiles its profile.
    seccomp_cache: Option<PathBuf>,
}

impl Embedded {
    pub fn new(root: &Path, seccomp_cache: Option<&Path>) -> Self {
        Embedded {
            root: root.to_path_buf(),
            hierarchies: OnceLock::new(),
            seccomp_cache: seccomp_cache.map(Path::to_path_buf),
        }
    }

    /// The compiled program of a container's profile, if it has one.
    fn compiled(&self, profile: Option<&LinuxSeccomp>) -> Result<Option<CompiledSeccomp>, RuntimeError> {
        profile.map_or(Ok(None), |p| crate::seccomp::compiled(self.seccomp_cache.as_deref(), p))
    }

    fn load(&self, id: &str, op: &'static str) -> Result<Option<Container>, RuntimeError> {
        let dir = self.root.join(id);
        if !dir.exists() {
            return Ok(None);
        }
        let mut c = Container::load(dir).map_err(|e| failed(op, e))?;
        // libcontainer takes a live process with the recorded pid for the
        // container's init. Once init is gone, its pid may be reused (at
        // 1,000 containers on a host with pid_max 32768 an `rm -f` of them
        // all met one); the container would look running, and could not be
        // deleted or be signalled through a stranger. A process outside the
        // container's cgroup is not its init.
        if let Some(pid) = c.state.pid
            && !self.init_in_cgroup(&c.root, pid)
        {
            c.state.pid = None;
        }
        Ok(Some(c))
    }

    /// Whether the process `pid` is in the container's cgroup (or one
    /// below it), looked up through the cgroup mounts libcontainer uses.
    /// True when that cannot be told (the process, the runtime's config,
    /// the mounts or the cgroup's directory are not there, e.g. a
    /// systemd-style cgroup path): only a live process missing from an
    /// existing cgroup is a stranger.
    fn init_in_cgroup(&self, root: &Path, pid: i32) -> bool {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        let hierarchies = self.hierarchies.get_or_init(|| Hierarchies::detect().ok());
        let (Ok(config), Some(hierarchies)) = (YoukiConfig::load(root), hierarchies) else {
            return true;
        };
        let cgroup = config.cgroup_path.to_string_lossy().into_owned();
        if hierarchies.existing(&cgroup).is_empty() {
            return true;
        }
        hierarchies.procs(&cgroup).map_or(true, |procs| procs.contains(&(pid as u32)))
    }

    fn builder(&self, id: &str, stdio: Stdio) -> Result<ContainerBuilder, RuntimeError> {
        let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&self.root)
            .map_err(|e| failed("create", e))?;
        if let Some(fd) = stdio.stdin {
            builder = builder.with_stdin(fd);
        }
        if let Some(fd) = stdio.stdout {
            builder = builder.with_stdout(fd);
        }
        if let Some(fd) = stdio.stderr {
            builder = builder.with_stderr(fd);
        }
        Ok(builder.with_console_socket(stdio.console_socket))
    }

    /// libcontainer leaves the sockets it used to start an exec (notify,
    /// console) in the container's state directory; once the exec has
    /// started they serve nothing. Runtime calls of a shim never overlap.
    fn remove_tenant_sockets(&self, id: &str) {
        let Ok(entries) = std::fs::read_dir(self.root.join(id)) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("tenant-notify-") || name.starts_with("tenant-tty-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn existing(&self, id: &str, op: &'static str) -> Result<Container, RuntimeError> {
        self.load(id, op)?.ok_or_else(|| RuntimeError::Failed {
            runtime: "embedded",
            op,
            message: format!("container {id} does not exist"),
        })
    }
}

/// The executor of every embedded process. Like runc, it lets an
/// executable named by a path run without PATH in the environment
/// (containerd's default spec sets none). And as libcontainer 0.7 rebuilds
/// an exec's `linux` section without the container's seccomp profile, so an
/// exec would run unfiltered, it installs the container's filter (given for
/// execs; init gets its own from libcontainer) as the exec's last step
/// before its execve. Capabilities are already dropped there, so the kernel
/// needs no_new_privs for the filter: embedded execs of a filtered
/// container run with it (setuid binaries gain nothing in them).
/// It carries the profile compiled ahead, for the init and for an exec.
#[derive(Clone)]
struct ProcessExecutor {
    /// An exec's filter: its container's profile.
    exec_seccomp: Option<LinuxSeccomp>,
    compiled: Option<CompiledSeccomp>,
}

impl Executor for ProcessExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        crate::default_signals();
        if let Some(seccomp) = &self.exec_seccomp {
            let fail = |what: &str, e: &dyn std::fmt::Display| ExecutorError::Other(format!("{what}: {e}"));
            nix::sys::prctl::set_no_new_privs().map_err(|e| fail("set no_new_privs", &e))?;
            initialize_seccomp_compiled(seccomp, self.compiled.as_ref())
                .map_err(|e| fail("install the seccomp filter", &e))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn compiled_seccomp(&self) -> Option<&CompiledSeccomp> {
        self.compiled.as_ref()
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        // libcontainer's check insists on PATH even for a path.
        let process = spec.process().as_ref();
        let env = process.and_then(|p| p.env().as_ref());
        let named_by_path =
            process.and_then(|p| p.args().as_ref()).and_then(|a| a.first()).is_some_and(|a| a.contains('/'));
        if named_by_path && !env.is_some_and(|e| e.iter().any(|v| v.starts_with("PATH="))) {
            let mut spec = spec.clone();
            if let Some(p) = spec.process_mut() {
                let mut env = p.env().clone().unwrap_or_default();
                env.push("PATH=".to_string());
                p.set_env(Some(env));
            }
            return DefaultExecutor {}.validate(&spec);
        }
        DefaultExecutor {}.validate(spec)
    }
}

/// A bundle's config.json, as JSON.
fn spec_json(bundle: &Path) -> Result<serde_json::Value, RuntimeError> {
    let io = |e: std::io::Error| RuntimeError::io("read config.json", e);
    serde_json::from_slice(&std::fs::read(bundle.join("config.json")).map_err(io)?).map_err(|e| io(e.into()))
}

/// The seccomp profile of a spec.
fn seccomp_of(spec: &serde_json::Value) -> Result<Option<LinuxSeccomp>, RuntimeError> {
    let profile = spec.get("linux").and_then(|l| l.get("seccomp")).filter(|p| !p.is_null());
    profile
        .map(|p| serde_json::from_value(p.clone()))
        .transpose()
        .map_err(|e| RuntimeError::io("read config.json", e.into()))
}

/// Flattens libcontainer's error chain into one line.
fn failed_msg(op: &'static str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed { runtime: "embedded", op, message: message.into() }
}

/// A bundle's spec and its rootfs (relative to the bundle if not absolute).
fn load_spec(bundle: &Path, op: &'static str) -> Result<(Spec, PathBuf), RuntimeError> {
    let spec = Spec::load(bundle.join("config.json")).map_err(|e| failed(op, e))?;
    let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| "rootfs".into());
    let rootfs = if root.is_absolute() { root } else { bundle.join(root) };
    Ok((spec, rootfs))
}

fn failed(op: &'static str, err: impl std::error::Error) -> RuntimeError {
    let mut message = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        src = s.source();
    }
    RuntimeError::Failed { runtime: "embedded", op, message }
}

/// Adapts a bundle's config.json to what libcontainer 0.7 gets wrong,
/// before it reads it:
/// - it mounts each cgroup v1 controller `rw` even when the spec's cgroup
///   mount says `ro`, so a container could lift its own limits (runc
///   remounts them read-only): the cgroup mount and each controller mounted
///   below it become read-only paths;
/// - it reads seccomp's `SCMP_CMP_MASKED_EQ` the other way round from runc
///   (mask in `valueTwo`, not `value`), which turns the default profile's
///   clone-flags filter into "allow": value and valueTwo are swapped.
///
/// Returns the spec as libcontainer will then read it.
fn adapt_spec(bundle: &Path) -> Result<serde_json::Value, RuntimeError> {
    let mut spec = spec_json(bundle)?;
    // A restart creates from the same bundle: adapt once.
    if spec["annotations"].get(ADAPTED_KEY).is_none() && adapt(&mut spec)? {
        let text =
            serde_json::to_vec(&spec).map_err(|e| RuntimeError::io("write config.json", std::io::Error::other(e)))?;
        std::fs::write(bundle.join("config.json"), text).map_err(|e| RuntimeError::io("write config.json", e))?;
    }
    Ok(spec)
}

/// [`adapt_spec`]'s changes; whether it made any.
fn adapt(spec: &mut serde_json::Value) -> Result<bool, RuntimeError> {
    let readonly = readonly_cgroup_paths(spec).map_err(|e| RuntimeError::io("read config.json", e))?;
    let mut changed = swap_masked_eq(spec);
    if let Some(list) = spec
        .get_mut("linux")
        .and_then(|l| l.as_object_mut())
        .map(|l| l.entry("readonlyPaths").or_insert_with(|| serde_json::json!([])))
        .and_then(|l| l.as_array_mut())
    {
        for p in readonly {
            if !list.iter().any(|v| v.as_str() == Some(p.as_str())) {
                list.push(p.into());
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(false);
    }
    if let Some(obj) = spec.as_object_mut() {
        let notes = obj.entry("annotations").or_insert_with(|| serde_json::json!({}));
        if let Some(notes) = notes.as_object_mut() {
            notes.insert(ADAPTED_KEY.into(), "true".into());
        }
    }
    Ok(true)
}

/// The cgroup mount and each controller below it, if the spec's cgroup
/// mount is read-only.
fn readonly_cgroup_paths(spec: &serde_json::Value) -> std::io::Result<Vec<String>> {
    let Some(dest) = readonly_cgroup_mount(spec) else { return Ok(Vec::new()) };
    let controllers = berth_cgroups::Hierarchies::detect()?;
    let mut paths = vec![dest.clone()];
    for mp in controllers.mount_points() {
        if let Some(name) = mp.strip_prefix("/sys/fs/cgroup").ok().and_then(|n| n.to_str()).filter(|n| !n.is_empty()) {
            paths.push(format!("{}/{name}", dest.trim_end_matches('/')));
        }
    }
    Ok(paths)
}

/// The destination of the spec's cgroup mount, if it asks for read-only.
fn readonly_cgroup_mount(spec: &serde_json::Value) -> Option<String> {
    spec.get("mounts")?.as_array()?.iter().find_map(|m| {
        let ro = m.get("options")?.as_array()?.iter().any(|o| o.as_str() == Some("ro"));
        (m.get("type")?.as_str()? == "cgroup" && ro).then(|| m.get("destination")?.as_str().map(str::to_string))?
    })
}

impl Runtime for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        let spec = adapt_spec(bundle)?;
        let compiled = self.compiled(seccomp_of(&spec)?.as_ref())?;
        let result = self
            .builder(id, stdio)?
            .with_executor(ProcessExecutor { exec_seccomp: None, compiled })
            .validate_id()
            .and_then(|b| b.as_init(bundle).with_systemd(false).with_detach(true).build());
        match result {
            Ok(container) => {
                let pid = container.pid().map(|p| p.as_raw() as u32).ok_or_else(|| RuntimeError::Failed {
                    runtime: "embedded",
                    op: "create",
                    message: "container has no init pid".into(),
                });
                let set = pid.and_then(|pid| crate::propagation::apply(&spec, pid).map(|()| pid));
                if set.is_err() {
                    let _ = self.delete(id, true);
                }
                set
            }
            Err(e) => {
                let err = failed("create", e);
                // libcontainer may leave its state directory behind.
                let _ = self.delete(id, true);
                Err(err)
            }
        }
    }

    fn exec(&self, id: &str, process: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        // The process JSON lies in the container's bundle, next to its spec.
        let seccomp = seccomp_of(&spec_json(process.parent().unwrap_or(Path::new("/")))?)?;
        let compiled = self.compiled(seccomp.as_ref())?;
        let pid = self
            .builder(id, stdio)?
            .with_executor(ProcessExecutor { exec_seccomp: seccomp, compiled })
            .as_tenant()
            .with_process(Some(process))
            .with_detach(true)
            .build();
        self.remove_tenant_sockets(id);
        Ok(pid.map_err(|e| failed("exec", e))?.as_raw() as u32)
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.existing(id, "start")?.start().map_err(|e| failed("start", e))
    }

    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let mut c = self.existing(id, "kill")?;
        let sig = Signal::try_from(signal).map_err(|e| failed("kill", e))?;
        c.kill(sig, all).map_err(|e| failed("kill", e))
    }

    fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.existing(id, "pause")?.pause().map_err(|e| failed("pause", e))
    }

    fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.existing(id, "resume")?.resume().map_err(|e| failed("resume", e))
    }

    fn checkpoint(&self, id: &str, c: &Checkpoint) -> Result<(), RuntimeError> {
        let container = self.existing(id, "checkpoint")?;
        let pid = container.pid().ok_or_else(|| failed_msg("checkpoint", "the container has no init pid"))?;
        let (spec, rootfs) = load_spec(container.bundle(), "checkpoint")?;
        crate::criu::dump(pid.as_raw(), &spec, &rootfs, c)
    }

    fn restore(&self, id: &str, bundle: &Path, stdio: Stdio, c: &Checkpoint) -> Result<u32, RuntimeError> {
        let dir = self.root.join(id);
        if dir.exists() {
            return Err(failed_msg("restore", format!("container {id} exists already")));
        }
        let (spec, rootfs) = load_spec(bundle, "restore")?;
        if spec.process().as_ref().is_some_and(|p| p.terminal() == Some(true)) {
            return Err(failed_msg("restore", "a container with a terminal cannot be restored yet"));
        }
        let pid = crate::criu::restore(id, &spec, &rootfs, stdio, c)?;
        // libcontainer's state, so the container is driven like any other.
        let saved = std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io("create runtime state", e))
            .and_then(|()| YoukiConfig::from_spec(&spec, id).map_err(|e| failed("restore", e)))
            .and_then(|config| config.save(&dir).map_err(|e| failed("restore", e)))
            .and_then(|()| {
                Container::new(id, ContainerStatus::Running, Some(pid as i32), bundle, &dir)
                    .map_err(|e| failed("restore", e))
            })
            .and_then(|mut c| c.set_systemd(false).save().map_err(|e| failed("restore", e)));
        if let Err(e) = saved {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(pid)
    }

    /// What libcontainer's delete comes to for an exited container with no
    /// poststop hook, no Intel RDT group and a cgroupfs path: its cgroup in
    /// every hierarchy, then its state directory — without the cgroup
    /// manager libcontainer builds (a mountinfo read per controller and a
    /// procfs instance of its own, ~650 syscalls per delete). A cgroup that
    /// still holds a process is left to [`Runtime::delete`], which kills it.
    fn delete_exited(&self, id: &str) -> Option<Result<(), RuntimeError>> {
        let dir = self.root.join(id);
        let state = libcontainer::container::State::load(&dir).ok()?;
        let config = YoukiConfig::load(&dir).ok()?;
        let poststop = config.hooks.as_ref().and_then(|h| h.poststop().as_ref()).is_some_and(|p| !p.is_empty());
        let rdt = state.intel_rdt_dir.is_some()
            || state.intel_rdt_monitoring_dir.is_some()
            || state.clean_up_intel_rdt_subdirectory == Some(true);
        if poststop || rdt || state.use_systemd || !config.cgroup_path.is_absolute() {
            return None;
        }
        let hierarchies = self.hierarchies.get_or_init(|| Hierarchies::detect().ok()).as_ref()?;
        match hierarchies.remove_tree(&config.cgroup_path.to_string_lossy()) {
            Err(e) if berth_cgroups::in_use(&e) => return None,
            Err(e) => return Some(Err(RuntimeError::io("remove the container's cgroup", e))),
            Ok(()) => {}
        }
        Some(std::fs::remove_dir_all(&dir).map_err(|e| RuntimeError::io("remove runtime state", e)))
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        match self.load(id, "delete") {
            Ok(Some(mut c)) => c.delete(force).map_err(|e| failed("delete", e)),
            Ok(None) => Ok(()),
            // A state directory without a readable state file: creation died
            // half way. Nothing runs from it; remove it.
            Err(_) => {
                std::fs::remove_dir_all(self.root.join(id)).map_err(|e| RuntimeError::io("remove runtime state", e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the test's cgroup from every hierarchy, even on failure.
    struct CgroupGuard(Hierarchies, String);

    impl Drop for CgroupGuard {
        fn drop(&mut self) {
            let _ = self.0.remove_tree(&self.1);
        }
    }

    /// A container's runtime state in `root` and its cgroup in every
    /// hierarchy (with a cgroup made below it), as an exited container
    /// leaves them; the spec is `edit`ed first.
    fn exited_container(root: &Path, id: &str, edit: impl FnOnce(&mut Spec)) -> (PathBuf, CgroupGuard) {
        let cgroup = format!("/berth-test-{id}-{}", std::process::id());
        let hierarchies = Hierarchies::detect().unwrap();
        for mount in hierarchies.mount_points() {
            std::fs::create_dir_all(mount.join(&cgroup[1..]).join("made-inside")).unwrap();
        }
        let guard = CgroupGuard(hierarchies, cgroup.clone());
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_cgroups_path(Some(cgroup.into()));
        spec.set_linux(Some(linux));
        edit(&mut spec);
        YoukiConfig::from_spec(&spec, id).unwrap().save(&dir).unwrap();
        Container::new(id, ContainerStatus::Stopped, None, root, &dir).unwrap().set_systemd(false).save().unwrap();
        (dir, guard)
    }

    #[test]
    fn an_exited_container_is_deleted_at_once() {
        let root = tempfile::tempdir().unwrap();
        let (dir, guard) = exited_container(root.path(), "exited", |_| {});
        assert!(!guard.0.existing(&guard.1).is_empty());
        let rt = Embedded::new(root.path(), None);
        assert!(matches!(rt.delete_exited("exited"), Some(Ok(()))));
        assert!(guard.0.existing(&guard.1).is_empty(), "the cgroup and the one below it are gone everywhere");
        assert!(!dir.exists());
        // Nothing there: left to the full delete, which takes that for done.
        assert!(rt.delete_exited("exited").is_none());
        rt.delete("exited", false).unwrap();
    }

    /// A poststop hook may block: the container is left, untouched, to the
    /// full delete (in a helper), which runs the hook.
    #[test]
    fn an_exited_container_with_a_poststop_hook_is_left_to_the_full_delete() {
        let root = tempfile::tempdir().unwrap();
        let marker = root.path().join("poststop-ran");
        let (dir, guard) = exited_container(root.path(), "hooked", |spec| {
            let hook = libcontainer::oci_spec::runtime::HookBuilder::default()
                .path("/bin/sh")
                .args(vec!["sh".to_string(), "-c".to_string(), format!("touch {}", marker.display())])
                .build()
                .unwrap();
            let hooks = libcontainer::oci_spec::runtime::HooksBuilder::default().poststop(vec![hook]).build().unwrap();
            spec.set_hooks(Some(hooks));
        });
        let rt = Embedded::new(root.path(), None);
        assert!(rt.delete_exited("hooked").is_none());
        assert!(dir.exists() && !guard.0.existing(&guard.1).is_empty(), "nothing was removed");
        // As the shim does before a delete: libcontainer's keeps to its own.
        guard.0.remove_children(&guard.1).unwrap();
        rt.delete("hooked", false).unwrap();
        assert!(marker.exists(), "the full delete ran the hook");
        assert!(!dir.exists());
    }

    /// A process still in the cgroup: nothing is removed by the quick
    /// delete (the full one kills it first).
    #[test]
    fn an_exited_container_whose_cgroup_is_busy_is_left_to_the_full_delete() {
        let root = tempfile::tempdir().unwrap();
        let (dir, guard) = exited_container(root.path(), "busy", |_| {});
        let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
        let procs = guard.0.existing(&guard.1)[0].join("cgroup.procs");
        std::fs::write(&procs, child.id().to_string()).unwrap();
        let rt = Embedded::new(root.path(), None);
        let quick = rt.delete_exited("busy");
        let _ = child.kill();
        let _ = child.wait();
        assert!(quick.is_none());
        assert!(dir.exists(), "the runtime state stays for the full delete");
    }

    /// Runtime state whose recorded init pid now names another process
    /// (the test itself, outside the container's existing, empty cgroup):
    /// the container is taken for stopped, so it is deleted, not refused
    /// as running.
    #[test]
    fn a_reused_init_pid_does_not_keep_a_stopped_container_running() {
        let cgroup = format!("/berth-test-reused-{}", std::process::id());
        let hierarchies = Hierarchies::detect().unwrap();
        for mount in hierarchies.mount_points() {
            std::fs::create_dir_all(mount.join(&cgroup[1..])).unwrap();
        }
        let _guard = CgroupGuard(Hierarchies::detect().unwrap(), cgroup.clone());
        let root = tempfile::tempdir().unwrap();
        let (id, dir) = ("reused", root.path().join("reused"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_cgroups_path(Some(cgroup.clone().into()));
        spec.set_linux(Some(linux));
        YoukiConfig::from_spec(&spec, id).unwrap().save(&dir).unwrap();
        let stranger = std::process::id() as i32;
        Container::new(id, ContainerStatus::Running, Some(stranger), root.path(), &dir)
            .unwrap()
            .set_systemd(false)
            .save()
            .unwrap();
        let rt = Embedded::new(root.path(), None);
        assert_eq!(rt.load(id, "state").unwrap().unwrap().state.pid, None);
        rt.delete(id, false).unwrap();
        assert!(!dir.exists());
    }
}
