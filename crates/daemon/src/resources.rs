//! Statistics and live limit updates (SPEC B12, B14) through the shim, and
//! the limits a container gets at create.

use std::sync::Arc;

use std::collections::BTreeMap;

use berth_cgroups::{ContainerStats, Hierarchies, Limits};
use berth_model::{ContainerId, Namespace, State};
use berth_store::ContainerRecord;
use oci_spec::runtime::{LinuxPids, Spec};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::manager::Manager;
use crate::paging;

/// Shims a Stats call asks at once.
const STATS_BATCH: usize = 32;

/// Checks limits, as a typed InvalidArgument.
pub fn validate(l: &Limits) -> Result<()> {
    l.validate().map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Cgroup settings a container gets at create only (no live update).
#[derive(Debug, Clone, Default)]
pub struct CreateOnly {
    /// cgroup v2 file name → value.
    pub unified: BTreeMap<String, String>,
    /// Page size ("2MB") → bytes.
    pub hugepages: BTreeMap<String, u64>,
}

/// Longest `unified` value accepted.
const MAX_UNIFIED_VALUE: usize = 4096;

/// Checks the create-only settings against the host and writes them into
/// the spec: `unified` needs a v2 host; hugepage limits are dropped where
/// the host has no hugetlb controller (the runtime would refuse them).
fn apply_create_only(spec: &mut Spec, c: &CreateOnly, host: &Hierarchies) -> Result<()> {
    let invalid = |m: String| Error::InvalidArgument(m);
    for (key, value) in &c.unified {
        let name_ok = key.contains('.')
            && !key.starts_with('.')
            && !key.starts_with("cgroup.")
            && !key.contains("..")
            && key.chars().all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch));
        if !name_ok || key.len() > 255 {
            return Err(invalid(format!(
                "unified key {:?} is not a cgroup file name",
                key.chars().take(64).collect::<String>()
            )));
        }
        if value.len() > MAX_UNIFIED_VALUE || value.contains(['\n', '\0']) {
            return Err(invalid(format!(
                "unified value for {key} must be one line of at most {MAX_UNIFIED_VALUE} bytes"
            )));
        }
    }
    for size in c.hugepages.keys() {
        let (digits, unit) = size.split_at(size.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(size.len()));
        if digits.parse::<u64>().is_ok_and(|n| n == 0) || digits.is_empty() || !matches!(unit, "KB" | "MB" | "GB") {
            return Err(invalid(format!(
                "hugepage size {:?} is not like 2MB or 1GB",
                size.chars().take(16).collect::<String>()
            )));
        }
    }
    if !c.unified.is_empty() && !host.is_v2() {
        return Err(Error::FailedPrecondition(
            "unified cgroup settings need a cgroup v2 host; this host's container cgroups are v1".into(),
        ));
    }
    let res =
        spec.linux_mut().get_or_insert_with(Default::default).resources_mut().get_or_insert_with(Default::default);
    if !c.unified.is_empty() {
        res.set_unified(Some(c.unified.clone().into_iter().collect()));
    }
    if !c.hugepages.is_empty() {
        if !host.has_controller("hugetlb") {
            tracing::debug!("no hugetlb controller: hugepage limits not applied");
            return Ok(());
        }
        let limits = c
            .hugepages
            .iter()
            .map(|(size, limit)| {
                let mut l = oci_spec::runtime::LinuxHugepageLimit::default();
                l.set_page_size(size.clone());
                l.set_limit(i64::try_from(*limit).unwrap_or(i64::MAX));
                l
            })
            .collect();
        res.set_hugepage_limits(Some(limits));
    }
    Ok(())
}

/// Writes the limits and create-only settings into a new container's spec.
pub fn apply_to_spec(spec: &mut Spec, l: &Limits, extra: &CreateOnly, host: &Hierarchies) -> Result<()> {
    apply_create_only(spec, extra, host)?;
    validate(l)?;
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let res = linux.resources_mut().get_or_insert_with(Default::default);
    if l.memory.is_some() || l.memory_swap.is_some() {
        let mut m = res.memory().unwrap_or_default();
        m.set_limit(l.memory.or(m.limit()));
        m.set_swap(l.memory_swap.or(m.swap()));
        if m.swap().is_some() && m.limit().is_none() {
            return Err(Error::InvalidArgument("a memory+swap limit needs a memory limit (--memory)".into()));
        }
        res.set_memory(Some(m));
    }
    if l.cpu_shares.is_some() || l.cpu_quota.is_some() || l.cpu_period.is_some() || l.cpuset_cpus.is_some() {
        let mut c = res.cpu().clone().unwrap_or_default();
        c.set_shares(l.cpu_shares.or(c.shares()));
        c.set_quota(l.cpu_quota.or(c.quota()));
        c.set_period(l.cpu_period.or(c.period()));
        c.set_cpus(l.cpuset_cpus.clone().or(c.cpus().clone()));
        res.set_cpu(Some(c));
    }
    if let Some(p) = l.pids {
        let mut pids = LinuxPids::default();
        pids.set_limit(p);
        res.set_pids(Some(pids));
    }
    Ok(())
}

/// The longest cgroup parent accepted.
const MAX_CGROUP_PARENT: usize = 1024;

/// Container `id`'s cgroup: `PARENT/ID` for a parent the create names
/// (absolute cgroupfs path of letters, digits, `_.:-` components, not
/// inside berthd's own parent, whose layout berthd owns), else berthd's
/// `<--cgroup-parent>/<namespace>/<id>`. A cgroup that exists already is
/// refused.
pub(crate) fn container_cgroup(
    cfg: &Config,
    host: &Hierarchies,
    ns: &Namespace,
    id: &ContainerId,
    parent: &str,
) -> Result<String> {
    if parent.is_empty() {
        return Ok(cfg.cgroup_path(ns, id));
    }
    let invalid = |why: &str| {
        Error::InvalidArgument(format!("cgroup parent {:?} {why}", parent.chars().take(80).collect::<String>()))
    };
    let component_ok = |c: &str| {
        !c.is_empty() && c != "." && c != ".." && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "_.:-".contains(ch))
    };
    let trimmed = parent.trim_end_matches('/');
    if parent.len() > MAX_CGROUP_PARENT || !parent.starts_with('/') || trimmed.is_empty() {
        return Err(invalid("must be an absolute cgroup path below the root (such as /kubepods/pod1234)"));
    }
    if !trimmed[1..].split('/').all(component_ok) {
        return Err(invalid("may hold only letters, digits, '_', '.', ':', '-' and '/' between non-empty names"));
    }
    let own = format!("/{}", cfg.cgroup_parent.trim_matches('/'));
    if trimmed == own || trimmed.starts_with(&format!("{own}/")) {
        return Err(invalid(&format!("is inside berthd's own cgroup parent {own}, whose layout berthd keeps")));
    }
    let cgroup = format!("{trimmed}/{id}");
    // Recovery and delete kill what is in a container's cgroup: never one
    // that was there before it.
    if !host.existing(&cgroup).is_empty() {
        return Err(Error::FailedPrecondition(format!("cgroup {cgroup} exists already: a container needs a new one")));
    }
    Ok(cgroup)
}

impl Manager {
    /// Makes a container cgroup in berthd's own layout start with its
    /// CPUs and memory nodes (v1 cpuset: `Hierarchies::inherit_cpuset`);
    /// if that fails, the runtime writes them as before.
    pub(crate) fn prepare_cgroup_parent(&self, ns: &Namespace, id: &ContainerId, cgroup: &str) {
        if cgroup == self.cfg.cgroup_path(ns, id)
            && let Err(e) = self.cgroups.inherit_cpuset(&self.cfg.namespace_cgroup(ns))
        {
            tracing::debug!(namespace = %ns, "cpuset parent not prepared: {e}");
        }
    }

    /// A live container's statistics, read by berthd from the container's
    /// cgroup (berthd names every container's cgroup and knows the
    /// hierarchies); through its shim's Stats if that fails. Reading here
    /// spares every shim a forked helper per call.
    pub async fn stats(&self, ns: &Namespace, id: &ContainerId) -> Result<ContainerStats> {
        let rec = self.get(ns, id)?;
        if !matches!(rec.state, State::Created | State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!("container {id} is {}: no statistics", rec.state)));
        }
        let entry = self.entry(ns, id)?;
        let (hierarchies, cgroup) = (self.cgroups.clone(), rec.cgroup.clone());
        match tokio::task::spawn_blocking(move || berth_cgroups::stats_in(&hierarchies, &cgroup)).await {
            Ok(Ok(stats)) => Ok(stats),
            _ => entry.shim.stats(id).await,
        }
    }

    /// Statistics for one page of a Stats call (`paging.rs`): the named
    /// containers in the order given, each once, or else every live
    /// container of the namespace by id; those after `after`. Asks up to
    /// [`STATS_BATCH`] shims at once and hands the results to `add` in
    /// order until it returns false (the page is full). A live container
    /// that stops meanwhile is left out; a named one that cannot answer is
    /// an error.
    pub async fn stats_page(
        self: &Arc<Self>,
        ns: &Namespace,
        ids: Vec<ContainerId>,
        after: Option<&ContainerId>,
        mut add: impl FnMut(ContainerId, ContainerStats) -> bool,
    ) -> Result<()> {
        let named = !ids.is_empty();
        let todo = if named {
            paging::ids_after(ids, after)?
        } else {
            let after = after.map(|a| (ns.clone(), a.clone()));
            paging::sorted_after(self.live_ids(ns)?, |id| (ns.clone(), id.clone()), after.as_ref())
        };
        for batch in todo.chunks(STATS_BATCH) {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, id) in batch.iter().enumerate() {
                let (mgr, ns, id) = (self.clone(), ns.clone(), id.clone());
                tasks.spawn(async move { (i, mgr.stats(&ns, &id).await) });
            }
            let mut results: Vec<Option<Result<ContainerStats>>> = batch.iter().map(|_| None).collect();
            while let Some(done) = tasks.join_next().await {
                if let Ok((i, r)) = done {
                    results[i] = Some(r);
                }
            }
            for (id, r) in batch.iter().zip(results) {
                let stats = match r {
                    Some(Ok(s)) => s,
                    Some(Err(e)) if named => return Err(e),
                    None if named => {
                        let message = format!("statistics of {id} failed");
                        return Err(Error::Shim { code: berth_model::Code::Internal, message });
                    }
                    // Stopped meanwhile.
                    _ => continue,
                };
                if !add(id.clone(), stats) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Ids of the namespace's live containers (for stats of "all").
    pub fn live_ids(&self, ns: &Namespace) -> Result<Vec<ContainerId>> {
        Ok(self
            .list(Some(ns))?
            .into_iter()
            .filter(|r| matches!(r.state, State::Running | State::Paused))
            .map(|r| r.id)
            .collect())
    }

    pub async fn update_limits(&self, ns: &Namespace, id: &ContainerId, limits: Limits) -> Result<ContainerRecord> {
        validate(&limits)?;
        let rec = self.get(ns, id)?;
        if !matches!(rec.state, State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {}: update needs it running or paused",
                rec.state
            )));
        }
        let _op = self.lock_op(ns, id).await;
        let entry = self.entry(ns, id)?;
        entry.shim.update(id, &limits).await?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_parent_is_an_absolute_path_outside_berths_own() {
        let cfg = Config {
            root: "/r".into(),
            state: "/s".into(),
            socket: "/s.sock".into(),
            cgroup_parent: "berth".into(),
            shim_binary: "/b".into(),
            start_timeout: std::time::Duration::from_secs(1),
            default_runtime: "embedded".into(),
            criu: "criu".into(),
            log_rotation: berth_model::LogRotation::DEFAULT,
            vm: crate::vm::VmConfig { assets: "/nonexistent".into(), accel: berth_vm::Accel::Tcg, note: None },
        };
        let (ns, id) = (Namespace::new("k8s.io").unwrap(), ContainerId::new("c1").unwrap());
        let host = Hierarchies::parse_for_tests("34 30 0:30 / /nonexistent-berth-cgroup rw - cgroup cgroup rw,memory");
        let container_cgroup =
            |cfg: &Config, ns: &Namespace, id: &ContainerId, parent: &str| container_cgroup(cfg, &host, ns, id, parent);
        assert_eq!(container_cgroup(&cfg, &ns, &id, "").unwrap(), "berth/k8s.io/c1");
        assert_eq!(
            container_cgroup(&cfg, &ns, &id, "/kubepods/burstable/pod-1:a/").unwrap(),
            "/kubepods/burstable/pod-1:a/c1"
        );
        for bad in ["kubepods", "/", "/a//b", "/a/../b", "/a/./b", "/a b", "/berth", "/berth/k8s.io", "/a\n"] {
            let e = container_cgroup(&cfg, &ns, &id, bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
        }
        assert!(container_cgroup(&cfg, &ns, &id, &format!("/{}", "a".repeat(1100))).is_err());
        assert_eq!(container_cgroup(&cfg, &ns, &id, "/berthx").unwrap(), "/berthx/c1");
    }

    #[test]
    fn create_only_settings_are_checked_and_follow_the_host() {
        let v1 = Hierarchies::parse_for_tests("34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory");
        let v2 = Hierarchies::parse_for_tests("25 1 0:22 / /nonexistent-cgroup2 rw - cgroup2 cgroup2 rw");
        let unified =
            CreateOnly { unified: [("memory.high".to_string(), "64M".to_string())].into(), ..Default::default() };
        let mut spec = Spec::default();
        assert!(matches!(apply_create_only(&mut spec, &unified, &v1), Err(Error::FailedPrecondition(_))));
        apply_create_only(&mut spec, &unified, &v2).unwrap();
        let res = spec.linux().clone().unwrap().resources().clone().unwrap();
        assert_eq!(res.unified().clone().unwrap()["memory.high"], "64M");
        // No hugetlb controller: the limits are left out, not refused.
        let huge = CreateOnly { hugepages: [("2MB".to_string(), 0)].into(), ..Default::default() };
        let mut spec = Spec::default();
        apply_create_only(&mut spec, &huge, &v1).unwrap();
        assert!(spec.linux().clone().unwrap().resources().clone().unwrap().hugepage_limits().is_none());
        for bad in ["../x", "memory", "a/b.c", ".x", "cgroup.procs", "cgroup.kill"] {
            let c = CreateOnly { unified: [(bad.to_string(), "1".to_string())].into(), ..Default::default() };
            assert!(
                matches!(apply_create_only(&mut Spec::default(), &c, &v2), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        let c = CreateOnly { unified: [("memory.high".to_string(), "1\nx".to_string())].into(), ..Default::default() };
        assert!(matches!(apply_create_only(&mut Spec::default(), &c, &v2), Err(Error::InvalidArgument(_))));
        for bad in ["2", "MB", "2mb", "2TB", "0KB"] {
            let c = CreateOnly { hugepages: [(bad.to_string(), 1)].into(), ..Default::default() };
            assert!(
                matches!(apply_create_only(&mut Spec::default(), &c, &v1), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}
