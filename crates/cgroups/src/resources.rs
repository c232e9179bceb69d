//! Container statistics and live resource updates (SPEC B12, B14), as a
//! thin layer over youki's libcgroups, which reads and writes cgroup v1 and
//! v2 alike. berth's own types cross process boundaries as JSON.

use std::path::PathBuf;

use libcgroups::common::{AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt, create_cgroup_manager};
use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{0}")]
    Invalid(String),
    #[error("cgroup {cgroup}: {message}")]
    Cgroup { cgroup: String, message: String },
}

impl ResourceError {
    pub fn code(&self) -> berth_model::Code {
        match self {
            ResourceError::Invalid(_) => berth_model::Code::InvalidArgument,
            ResourceError::Cgroup { .. } => berth_model::Code::Internal,
        }
    }
}

/// The statistics of SPEC B12, the same on cgroup v1 and v2.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub blkio: Vec<BlkioEntry>,
    pub hugetlb: Vec<HugetlbEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Nanoseconds of CPU time.
    pub usage_total: u64,
    pub usage_user: u64,
    pub usage_kernel: u64,
    pub per_cpu: Vec<u64>,
    pub throttling_periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    pub usage: u64,
    /// u64::MAX-ish when unlimited.
    pub limit: u64,
    pub max_usage: u64,
    pub cache: u64,
    pub rss: u64,
    pub swap_usage: u64,
    pub swap_limit: u64,
    pub fail_count: u64,
    /// File pages the kernel may reclaim first: usage minus this is the
    /// working set (kubelet's and cAdvisor's measure).
    #[serde(default)]
    pub inactive_file: u64,
    /// Processes the OOM killer killed in the cgroup (`oom_kill`), where
    /// the kernel counts them.
    #[serde(default)]
    pub oom_kills: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PidsStats {
    pub current: u64,
    /// 0 when unlimited.
    pub limit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HugetlbEntry {
    pub page_size: String,
    pub usage: u64,
    pub max_usage: u64,
    pub fail_count: u64,
}

/// Limits to change on a live container (SPEC B14); `None` leaves a limit
/// as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<i64>,
    /// Bytes of memory plus swap; -1 for unlimited.
    pub memory_swap: Option<i64>,
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per `cpu_period`.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub pids: Option<i64>,
}

const MIN_MEMORY: i64 = 4 * 1024 * 1024;
const MAX_PIDS: i64 = 4_194_304;

impl Limits {
    /// The limits that are set, as the OCI spec's `LinuxResources` (what
    /// libcgroups applies, and what containerd's shims take in Update).
    pub fn to_oci(&self) -> Result<LinuxResources, oci_spec::OciSpecError> {
        let mut res = LinuxResourcesBuilder::default();
        if self.memory.is_some() || self.memory_swap.is_some() {
            let mut m = LinuxMemoryBuilder::default();
            if let Some(v) = self.memory {
                m = m.limit(v);
            }
            if let Some(v) = self.memory_swap {
                m = m.swap(v);
            }
            res = res.memory(m.build()?);
        }
        if self.cpu_shares.is_some()
            || self.cpu_quota.is_some()
            || self.cpu_period.is_some()
            || self.cpuset_cpus.is_some()
        {
            let mut c = LinuxCpuBuilder::default();
            if let Some(v) = self.cpu_shares {
                c = c.shares(v);
            }
            if let Some(v) = self.cpu_quota {
                c = c.quota(v);
            }
            if let Some(v) = self.cpu_period {
                c = c.period(v);
            }
            if let Some(v) = &self.cpuset_cpus {
                c = c.cpus(v.clone());
            }
            res = res.cpu(c.build()?);
        }
        if let Some(p) = self.pids {
            res = res.pids(LinuxPidsBuilder::default().limit(p).build()?);
        }
        res.build()
    }

    /// The limits an OCI `LinuxResources` sets, of those berth changes live
    /// (others, e.g. block I/O weights, are not taken).
    pub fn from_oci(r: &LinuxResources) -> Limits {
        let (memory, cpu) = (r.memory().as_ref(), r.cpu().as_ref());
        Limits {
            memory: memory.and_then(|m| m.limit()),
            memory_swap: memory.and_then(|m| m.swap()),
            cpu_shares: cpu.and_then(|c| c.shares()),
            cpu_quota: cpu.and_then(|c| c.quota()),
            cpu_period: cpu.and_then(|c| c.period()),
            cpuset_cpus: cpu.and_then(|c| c.cpus().clone()),
            pids: r.pids().as_ref().map(|p| p.limit()),
        }
    }

    /// Checks the values against sane bounds and this host's CPUs.
    pub fn validate(&self) -> Result<(), ResourceError> {
        let bad = |m: String| Err(ResourceError::Invalid(m));
        if let Some(m) = self.memory
            && m < MIN_MEMORY
        {
            return bad(format!("memory limit {m} is below the minimum of {MIN_MEMORY} bytes"));
        }
        if let Some(s) = self.memory_swap
            && s != -1
            && s < self.memory.unwrap_or(MIN_MEMORY)
        {
            return bad(format!("memory+swap limit {s} must be -1 or at least the memory limit"));
        }
        if self.cpu_shares.is_some_and(|s| !(2..=262_144).contains(&s)) {
            return bad("cpu shares must be between 2 and 262144".into());
        }
        if self.cpu_period.is_some_and(|p| !(1_000..=1_000_000).contains(&p)) {
            return bad("cpu period must be between 1000 and 1000000 microseconds".into());
        }
        if self.cpu_quota.is_some_and(|q| q != -1 && q < 1_000) {
            return bad("cpu quota must be -1 or at least 1000 microseconds".into());
        }
        if self.pids.is_some_and(|p| p != -1 && !(1..=MAX_PIDS).contains(&p)) {
            return bad(format!("pids limit must be -1 or between 1 and {MAX_PIDS}"));
        }
        if let Some(cpus) = &self.cpuset_cpus {
            let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
            let host = parse_cpu_list(online.trim()).unwrap_or_default();
            let wanted =
                parse_cpu_list(cpus).ok_or_else(|| ResourceError::Invalid(format!("bad cpu list {cpus:?}")))?;
            if let Some(c) = wanted.iter().find(|c| !host.contains(c)) {
                return bad(format!("cpu {c} is not online on this host (online: {})", online.trim()));
            }
        }
        Ok(())
    }
}

/// Parses "0-2,4" into [0, 1, 2, 4].
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
}

fn manager(cgroup: &str) -> Result<AnyCgroupManager, ResourceError> {
    let config =
        CgroupConfig { cgroup_path: PathBuf::from(cgroup), systemd_cgroup: false, container_name: String::new() };
    create_cgroup_manager(config).map_err(|e| cg_err(cgroup, e))
}

fn cg_err(cgroup: &str, e: impl std::fmt::Display) -> ResourceError {
    ResourceError::Cgroup { cgroup: cgroup.to_string(), message: e.to_string() }
}

/// Factors that turn libcgroups' CPU figures into nanoseconds: (total and
/// throttled time, user/kernel time). v1 reports nanoseconds and USER_HZ
/// ticks, v2 microseconds.
fn cpu_units() -> (u64, u64) {
    match libcgroups::common::get_cgroup_setup() {
        Ok(libcgroups::common::CgroupSetup::Unified) => (1_000, 1_000),
        _ => {
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            (1, 1_000_000_000 / if hz > 0 { hz as u64 } else { 100 })
        }
    }
}

/// Reads the container's statistics; CPU times in nanoseconds.
pub fn stats(cgroup: &str) -> Result<ContainerStats, ResourceError> {
    let s = manager(cgroup)?.stats().map_err(|e| cg_err(cgroup, e))?;
    Ok(convert(&s))
}

/// [`stats`], reading the v1 controllers of hierarchies found once (see
/// `v1stats.rs`); a pure v2 host goes through libcgroups.
pub fn stats_in(h: &crate::Hierarchies, cgroup: &str) -> Result<ContainerStats, ResourceError> {
    let mut stats = match crate::v1stats::read_v1(h, cgroup) {
        Some(read) => read.map(|s| convert(&s)).map_err(|e| cg_err(cgroup, e))?,
        None => stats(cgroup)?,
    };
    stats.memory.oom_kills = crate::oom_kills_in(h, cgroup);
    Ok(stats)
}

pub(crate) fn convert(s: &libcgroups::stats::Stats) -> ContainerStats {
    let (total_ns, tick_ns) = cpu_units();
    let mem = &s.memory;
    let stat = |k: &str| mem.stats.get(k).copied().unwrap_or(0);
    ContainerStats {
        cpu: CpuStats {
            usage_total: s.cpu.usage.usage_total * total_ns,
            usage_user: s.cpu.usage.usage_user * tick_ns,
            usage_kernel: s.cpu.usage.usage_kernel * tick_ns,
            per_cpu: s.cpu.usage.per_core_usage_total.clone(),
            throttling_periods: s.cpu.throttling.periods,
            throttled_periods: s.cpu.throttling.throttled_periods,
            throttled_time: s.cpu.throttling.throttled_time * total_ns,
        },
        memory: MemoryStats {
            usage: mem.memory.usage,
            limit: mem.memory.limit,
            max_usage: mem.memory.max_usage,
            cache: mem.cache.max(stat("cache")).max(stat("file")),
            rss: stat("rss").max(stat("anon")),
            swap_usage: mem.memswap.usage.saturating_sub(mem.memory.usage),
            swap_limit: mem.memswap.limit,
            fail_count: mem.memory.fail_count,
            inactive_file: stat("total_inactive_file").max(stat("inactive_file")),
            oom_kills: 0,
        },
        pids: PidsStats { current: s.pids.current, limit: s.pids.limit },
        blkio: s
            .blkio
            .service_bytes
            .iter()
            .map(|d| BlkioEntry {
                major: d.major,
                minor: d.minor,
                op: d.op_type.clone().unwrap_or_default(),
                bytes: d.value,
            })
            .collect(),
        hugetlb: s
            .hugetlb
            .iter()
            .map(|(size, h)| HugetlbEntry {
                page_size: size.clone(),
                usage: h.usage,
                max_usage: h.max_usage,
                fail_count: h.fail_count,
            })
            .collect(),
    }
}

/// Applies the given limits to the live cgroup (SPEC B14).
pub fn update(cgroup: &str, l: &Limits) -> Result<(), ResourceError> {
    l.validate()?;
    let resources = l.to_oci().map_err(|e| ResourceError::Invalid(e.to_string()))?;
    let opt =
        ControllerOpt { resources: &resources, disable_oom_killer: false, oom_score_adj: None, freezer_state: None };
    manager(cgroup)?.apply(&opt).map_err(|e| cg_err(cgroup, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,4"), Some(vec![0, 1, 2, 4]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn absurd_limits_are_refused() {
        let cases = [
            Limits { memory: Some(-5), ..Default::default() },
            Limits { memory: Some(1024), ..Default::default() },
            Limits { memory: Some(64 << 20), memory_swap: Some(1 << 20), ..Default::default() },
            Limits { cpu_shares: Some(1), ..Default::default() },
            Limits { cpu_period: Some(10), ..Default::default() },
            Limits { cpu_quota: Some(5), ..Default::default() },
            Limits { pids: Some(0), ..Default::default() },
            Limits { cpuset_cpus: Some("0-100000".into()), ..Default::default() },
            Limits { cpuset_cpus: Some("4095".into()), ..Default::default() },
        ];
        for l in cases {
            assert!(l.validate().is_err(), "{l:?}");
        }
        let ok = Limits {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            pids: Some(10),
            cpuset_cpus: Some("0".into()),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
    }
}
