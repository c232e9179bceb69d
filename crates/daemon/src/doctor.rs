//! `berth doctor` (issue 17): compares what the host holds with berthd's
//! records and names each leftover no record owns (shims, cgroups and
//! their processes, mounts, namespaces, network attachments, bundles, log
//! and runtime state directories, sockets), with why and how to repair it;
//! with `fix` it repairs them, killing nothing a record names. A container
//! or sandbox being created (its intent or reservation) is left alone. The
//! host's health checks are in `doctor_checks.rs`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::v1 as pb;
use berth_model::{ContainerId, Namespace, State};
use berth_network::AttachKey;

use crate::error::{Error, Result};
use crate::manager::{Manager, lock};

/// A leftover and how it is repaired.
pub(crate) struct Leftover {
    kind: &'static str,
    subject: String,
    why: String,
    fix: String,
    /// What would own it: checked again right before a repair, so a
    /// create that began since the scan keeps what it made.
    owner: Owner,
    repair: Repair,
}

enum Owner {
    Container(String, String),
    Sandbox(String, String),
    Cgroup(String),
    Rootfs(PathBuf),
    Pin(PathBuf),
    Socket(PathBuf),
    Attachment(AttachKey),
    /// Left to an operator: never repaired.
    Nobody,
}

/// Repairs, in the order they run: processes first, then what they held.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Repair {
    KillShim(u32),
    KillCgroup(String),
    Detach(AttachKey),
    ReleaseRootfs {
        key: String,
        target: PathBuf,
    },
    Unpin(PathBuf),
    RemoveDir(PathBuf),
    RemoveFile(PathBuf),
    /// Left to an operator.
    Manual,
}

/// What berthd's records own: containers, sandboxes, and creates in flight.
struct Owned {
    containers: HashSet<(String, String)>,
    sandboxes: HashSet<(String, String)>,
    cgroups: HashSet<String>,
    rootfs: HashSet<PathBuf>,
    sockets: HashSet<PathBuf>,
    pins: HashSet<PathBuf>,
    /// Attachments a container or sandbox owns.
    attachments: HashSet<AttachKey>,
}

impl Owned {
    fn container(&self, ns: &str, id: &str) -> bool {
        self.containers.contains(&(ns.to_string(), id.to_string()))
    }

    fn owns(&self, owner: &Owner) -> bool {
        match owner {
            Owner::Container(ns, id) => self.container(ns, id),
            Owner::Sandbox(ns, id) => self.sandboxes.contains(&(ns.clone(), id.clone())),
            Owner::Cgroup(c) => self.cgroups.contains(c),
            Owner::Rootfs(p) => self.rootfs.contains(p),
            Owner::Pin(p) => self.pins.contains(p),
            Owner::Socket(p) => self.sockets.contains(p),
            Owner::Attachment(key) => self.attachments.contains(key),
            Owner::Nobody => true,
        }
    }
}

fn name(e: &std::fs::DirEntry) -> String {
    e.file_name().to_string_lossy().into_owned()
}

/// Subdirectories of `dir` (none if it is missing).
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries.filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| (name(&e), e.path())).collect()
}

/// `<dir>/<namespace>/<id>` directories.
fn per_container(dir: &Path) -> Vec<(String, String, PathBuf)> {
    subdirs(dir)
        .into_iter()
        .flat_map(|(ns, p)| subdirs(&p).into_iter().map(move |(id, p)| (ns.clone(), id, p)))
        .collect()
}

fn trim(cgroup: &str) -> String {
    cgroup.trim_matches('/').to_string()
}

/// The mount points under `dir`.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = berth_model::mountinfo::mounts(&info)
        .map(|m| PathBuf::from(m.point.as_ref()))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    // A path mounted on twice is one leftover.
    found.sort();
    found.dedup();
    found
}

impl Manager {
    fn owned(&self) -> Result<Owned> {
        let mut o = Owned {
            containers: HashSet::new(),
            sandboxes: HashSet::new(),
            cgroups: HashSet::new(),
            rootfs: HashSet::new(),
            sockets: HashSet::new(),
            pins: HashSet::new(),
            attachments: HashSet::new(),
        };
        let claim = |o: &mut Owned, ns: &Namespace, id: &ContainerId| {
            o.attachments.insert(AttachKey { namespace: ns.to_string(), id: id.to_string() });
            o.containers.insert((ns.to_string(), id.to_string()));
            o.cgroups.insert(trim(&self.cfg.cgroup_path(ns, id)));
            o.rootfs.insert(self.image_rootfs(ns, id));
            o.sockets.insert(self.cfg.shim_socket(ns, id));
        };
        for (ns, id) in lock(&self.creating).iter() {
            claim(&mut o, ns, id);
        }
        for i in self.store.intents()? {
            claim(&mut o, &i.namespace, &i.id);
            o.cgroups.extend(i.cgroup.as_deref().map(trim));
        }
        for r in self.store.list(None)? {
            claim(&mut o, &r.namespace, &r.id);
            o.cgroups.insert(trim(&r.cgroup));
            o.rootfs.insert(r.rootfs.clone());
        }
        for s in self.store.list_sandboxes(None)? {
            o.sandboxes.insert((s.namespace.to_string(), s.id.to_string()));
            o.sockets.insert(self.cfg.sandbox_socket(&s.namespace, &s.id));
            for kind in ["ipc", "pid"] {
                o.pins.insert(self.cfg.sandbox_ns_pin(&s.namespace, &s.id, kind));
            }
        }
        let orphans = self.orphan_attachments()?;
        for key in self.net.networks.attached()? {
            o.pins.insert(self.net.networks.netns_path(&key));
            if !orphans.contains(&key) {
                o.attachments.insert(key);
            }
        }
        Ok(o)
    }

    /// Every leftover found now (blocking: walks /proc, cgroups and dirs).
    pub(crate) fn leftovers(&self) -> Result<Vec<Leftover>> {
        let o = self.owned()?;
        let mut found = self.stray_shims(&o);
        found.extend(self.stray_cgroups(&o));
        found.extend(self.stray_mounts(&o));
        found.extend(self.stray_dirs(&o));
        found.extend(self.stray_sockets(&o));
        let orphans = self.orphan_attachments()?.into_iter().filter(|k| !o.attachments.contains(k));
        found.extend(orphans.map(|key| Leftover {
            kind: "network",
            subject: format!("{}/{}", key.namespace, key.id),
            why: "a network attachment (namespace, veth, address) no container or sandbox owns".into(),
            fix: "run the CNI DEL and release its namespace and address".into(),
            owner: Owner::Attachment(key.clone()),
            repair: Repair::Detach(key),
        }));
        found.extend(self.shimless_records()?);
        found.sort_by(|a, b| a.repair.cmp(&b.repair));
        Ok(found)
    }

    /// berth-shim processes serving this berthd whose container or
    /// sandbox has no record.
    fn stray_shims(&self, o: &Owned) -> Vec<Leftover> {
        let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        let pids = pids.filter_map(|e| name(&e).parse::<u32>().ok());
        let mut found = Vec::new();
        for pid in pids {
            let args = crate::control::cmdline(pid);
            let flag = |f: &str| args.windows(2).find(|w| w[0] == f).map(|w| w[1].clone());
            if !self.cfg.is_own_shim(&args) {
                continue;
            }
            let (Some(ns), Some(id)) = (flag("--namespace"), flag("--id")) else { continue };
            let sandbox = args.iter().any(|a| a == "--sandbox");
            let owned = if sandbox { o.sandboxes.contains(&(ns.clone(), id.clone())) } else { o.container(&ns, &id) };
            if !owned {
                let what = if sandbox { "sandbox" } else { "container" };
                found.push(Leftover {
                    kind: "shim",
                    subject: format!("pid {pid} ({ns}/{id})"),
                    why: format!("a berth-shim whose {what} has no record"),
                    fix: "kill its process group".into(),
                    owner: if sandbox { Owner::Sandbox(ns, id) } else { Owner::Container(ns, id) },
                    repair: Repair::KillShim(pid),
                });
            }
        }
        found
    }

    /// Container cgroups under berthd's parent, in every hierarchy, that
    /// no record names; with the processes still in them. Repaired only
    /// when berthd's own files of that container (bundle, logs, runtime
    /// state) show it was berthd's: another berthd may share the parent.
    fn stray_cgroups(&self, o: &Owned) -> Vec<Leftover> {
        let parent = trim(&self.cfg.cgroup_parent);
        let parents = self.cfg.container_parents();
        let ours = |ns: &str, id: &str| parents.iter().any(|d| d.join(ns).join(id).is_dir());
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for mount in self.cgroups.mount_points() {
            for (ns, id, _) in per_container(&mount.join(&parent)) {
                let cgroup = trim(&format!("{parent}/{ns}/{id}"));
                if o.cgroups.contains(&cgroup) || !seen.insert(cgroup.clone()) {
                    continue;
                }
                let procs = self.cgroups.procs(&cgroup).map_or(0, |p| p.len());
                let why = match procs {
                    0 => "a container cgroup no record names".to_string(),
                    n => format!("{n} process(es) in a cgroup whose container is gone"),
                };
                let (owner, repair, fix) = if ours(&ns, &id) {
                    let fix = "kill what is in it and remove it from every hierarchy";
                    (Owner::Cgroup(cgroup.clone()), Repair::KillCgroup(cgroup.clone()), fix)
                } else {
                    let fix = "no file of berthd's names it (another berthd's, with the same --cgroup-parent?): \
                               check, then kill its processes and rmdir it by hand";
                    (Owner::Nobody, Repair::Manual, fix)
                };
                found.push(Leftover { kind: "cgroup", subject: cgroup, why, fix: fix.into(), owner, repair });
            }
        }
        found
    }

    /// Mounts under berthd's directories no record owns: a container
    /// rootfs snapshot, a network or sandbox namespace pin.
    fn stray_mounts(&self, o: &Owned) -> Vec<Leftover> {
        let bundles = self.cfg.state.join("bundles");
        let any = AttachKey { namespace: String::new(), id: String::new() };
        let netns_dir = self.net.networks.netns_path(&any).parent().map(Path::to_path_buf).unwrap_or_default();
        let pin_dirs = [self.cfg.sandbox_ns_dir(), netns_dir];
        let mut found = Vec::new();
        for m in mounts_under(&self.cfg.state) {
            let rel = m.strip_prefix(&bundles).ok().map(|r| r.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>());
            if let Some([ns, id, rootfs]) = rel.as_deref()
                && rootfs == "rootfs"
                && !o.rootfs.contains(&m)
                && let (Ok(ns), Ok(id)) = (Namespace::new(ns.as_ref()), ContainerId::new(id.as_ref()))
            {
                found.push(Leftover {
                    kind: "mount",
                    subject: m.display().to_string(),
                    why: format!("the rootfs snapshot of {ns}/{id}, which has no record"),
                    fix: "unmount it and remove the snapshot".into(),
                    owner: Owner::Rootfs(m.clone()),
                    repair: Repair::ReleaseRootfs { key: crate::images::snapshot_key(&ns, &id), target: m.clone() },
                });
            } else if pin_dirs.iter().any(|d| m.parent() == Some(d.as_path())) && !o.pins.contains(&m) {
                found.push(Leftover {
                    kind: "netns",
                    subject: m.display().to_string(),
                    why: "a namespace pinned for a container or sandbox that has no record".into(),
                    fix: "unmount and remove the pin".into(),
                    owner: Owner::Pin(m.clone()),
                    repair: Repair::Unpin(m.clone()),
                });
            }
        }
        found
    }

    /// Bundles (with exit files), log and runtime state directories of
    /// containers, and sandbox directories, with no record.
    fn stray_dirs(&self, o: &Owned) -> Vec<Leftover> {
        // In `container_parents`' order: logs, bundles, runtimes' state.
        let kinds = [("logs", "a log directory"), ("bundle", "a bundle (spec, exit files, shim log)")];
        let mut found = Vec::new();
        for (i, dir) in self.cfg.container_parents().into_iter().enumerate() {
            let (kind, what) = kinds.get(i).copied().unwrap_or(("runtime-state", "runtime state"));
            for (ns, id, path) in per_container(&dir).into_iter().filter(|(ns, id, _)| !o.container(ns, id)) {
                found.push(Leftover {
                    kind,
                    subject: path.display().to_string(),
                    why: format!("{what} of {ns}/{id}, which has no record"),
                    fix: "remove it".into(),
                    owner: Owner::Container(ns, id),
                    repair: Repair::RemoveDir(path),
                });
            }
        }
        let sandboxes = per_container(&self.cfg.state.join("sandboxes"));
        for (ns, id, path) in
            sandboxes.into_iter().filter(|(ns, id, _)| !o.sandboxes.contains(&(ns.clone(), id.clone())))
        {
            found.push(Leftover {
                kind: "bundle",
                subject: path.display().to_string(),
                why: format!("the directory of sandbox {ns}/{id}, which has no record"),
                fix: "remove it".into(),
                owner: Owner::Sandbox(ns, id),
                repair: Repair::RemoveDir(path),
            });
        }
        found
    }

    /// Shim sockets no container or sandbox owns.
    fn stray_sockets(&self, o: &Owned) -> Vec<Leftover> {
        let dirs = [self.cfg.state.join("shims"), self.cfg.state.join("sandbox-shims")];
        let files = dirs.iter().flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten());
        files
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock") && !o.sockets.contains(p))
            .map(|p| Leftover {
                kind: "socket",
                subject: p.display().to_string(),
                why: "a shim socket no container or sandbox owns".into(),
                fix: "remove it".into(),
                owner: Owner::Socket(p.clone()),
                repair: Repair::RemoveFile(p),
            })
            .collect()
    }

    /// Records of live containers whose shim is gone: berthd's watch on it
    /// failed. Recovery (a berthd restart) records the exit and cleans up.
    fn shimless_records(&self) -> Result<Vec<Leftover>> {
        let live = |pid: u32| pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists();
        Ok(self
            .store
            .list(None)?
            .into_iter()
            .filter(|r| matches!(r.state, State::Running | State::Paused | State::Created) && !live(r.shim.pid))
            .map(|r| Leftover {
                kind: "record",
                subject: format!("{}/{}", r.namespace, r.id),
                why: format!("the record says {} but its shim (pid {}) is gone", r.state, r.shim.pid),
                fix: "restart berthd: its recovery records the exit (255 if none was recorded) and cleans up".into(),
                owner: Owner::Nobody,
                repair: Repair::Manual,
            })
            .collect())
    }

    async fn repair(&self, r: &Repair) -> Result<()> {
        match r {
            Repair::KillShim(pid) => {
                // The pid read at the scan must still be one of our shims.
                if !self.cfg.is_own_shim(&crate::control::cmdline(*pid)) {
                    return Err(Error::FailedPrecondition(format!("pid {pid} is no longer a berth-shim")));
                }
                let group = nix::unistd::Pid::from_raw(-(*pid as i32));
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
                Ok(())
            }
            Repair::KillCgroup(cgroup) => {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    self.cgroups.kill_all(cgroup);
                    match self.cgroups.remove_tree(cgroup) {
                        Ok(()) => return Ok(()),
                        Err(e) if Instant::now() > deadline => return Err(Error::io(format!("remove {cgroup}"), e)),
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
            Repair::Detach(key) => self.net.networks.detach(key).await.map_err(Into::into),
            Repair::ReleaseRootfs { key, target } => self.images.release_rootfs(key, target),
            Repair::Unpin(path) => berth_network::pin::remove(path).map_err(Into::into),
            Repair::RemoveDir(dir) => {
                if let Some(m) = mounts_under(dir).first() {
                    return Err(Error::FailedPrecondition(format!("{} is still mounted", m.display())));
                }
                crate::delete::remove_path(dir)
            }
            Repair::RemoveFile(f) => {
                std::fs::remove_file(f).map_err(|e| Error::io(format!("remove {}", f.display()), e))
            }
            Repair::Manual => Ok(()),
        }
    }

    /// Whether something owns the leftover now; if not, its container's id
    /// stays reserved (as a create's would be) while the guard lives, so
    /// none of that id starts while it goes.
    fn claimed_since(&self, l: &Leftover) -> Result<(bool, Option<crate::manager::Reservation<'_>>)> {
        if self.owned()?.owns(&l.owner) {
            return Ok((true, None));
        }
        let Some(key) = l.container_key() else { return Ok((false, None)) };
        let Some(reservation) = self.reserve(key.clone()) else { return Ok((true, None)) };
        // A create that ended between the look and the reservation left
        // its record (or intent).
        let (ns, id) = &key;
        let durable = self.store.get(ns, id)?.is_some()
            || self.store.intents()?.iter().any(|i| i.namespace == *ns && i.id == *id);
        Ok((durable, Some(reservation)))
    }

    /// The doctor's report; with `fix`, after repairing what is safe.
    pub(crate) async fn doctor(self: &Arc<Self>, fix: bool) -> Result<pb::DoctorReport> {
        let joined = |e: tokio::task::JoinError| Error::io("doctor", std::io::Error::other(e));
        let scan = |mgr: Arc<Manager>| async move {
            tokio::task::spawn_blocking(move || mgr.leftovers()).await.map_err(joined)?
        };
        let mut findings = Vec::new();
        let mut found = scan(self.clone()).await?;
        if fix {
            for l in found.iter().filter(|l| l.repair != Repair::Manual) {
                // The container's id is reserved as a create's would be, so
                // none of that id starts while its leftovers go.
                let outcome = match self.claimed_since(l) {
                    Ok((false, _reservation)) => self.repair(&l.repair).await,
                    Ok((true, _)) => {
                        Err(Error::FailedPrecondition("a container or sandbox has claimed it since".into()))
                    }
                    Err(e) => Err(e),
                };
                tracing::warn!(kind = l.kind, subject = %l.subject, ok = outcome.is_ok(), "doctor repaired a leftover");
                findings.push(finding(l, Some(outcome)));
            }
            found = scan(self.clone()).await?;
            // What a repair left (a failure is already reported).
            let failed: HashSet<String> = findings.iter().filter(|f| !f.fixed).map(|f| f.subject.clone()).collect();
            found.retain(|l| !failed.contains(&l.subject));
        }
        findings.extend(found.iter().map(|l| finding(l, None)));
        let mgr = self.clone();
        let checks = tokio::task::spawn_blocking(move || mgr.health_checks()).await.map_err(joined)?;
        Ok(pb::DoctorReport { findings, checks })
    }
}

impl Leftover {
    /// The container a leftover was (its shim, cgroup or directories).
    fn container_key(&self) -> Option<crate::manager::Key> {
        let (ns, id) = match &self.owner {
            Owner::Container(ns, id) => (ns.as_str(), id.as_str()),
            Owner::Cgroup(c) => {
                let mut parts = c.rsplit('/');
                let id = parts.next()?;
                (parts.next()?, id)
            }
            _ => return None,
        };
        Some((Namespace::new(ns).ok()?, ContainerId::new(id).ok()?))
    }
}

fn finding(l: &Leftover, outcome: Option<Result<()>>) -> pb::Finding {
    pb::Finding {
        kind: l.kind.into(),
        subject: l.subject.clone(),
        explanation: l.why.clone(),
        fix: l.fix.clone(),
        fixed: matches!(outcome, Some(Ok(()))),
        fix_error: match outcome {
            Some(Err(e)) => e.to_string(),
            _ => String::new(),
        },
        manual: l.repair == Repair::Manual,
    }
}
