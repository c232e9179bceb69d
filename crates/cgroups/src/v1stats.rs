//! cgroup v1 statistics read straight from the controller directories of
//! hierarchies found once ([`Hierarchies`]), into libcgroups' own `Stats`
//! (so one conversion serves both readers). libcgroups' v1 manager finds
//! each controller by parsing /proc/self/mountinfo again, about twelve
//! times per call; mountinfo grows with every container's network
//! namespace and rootfs mounts, so that costs ~7 ms per call at 1,000
//! containers. The files and their parsing follow libcgroups' providers.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::stats::{BlkioDeviceStat, BlkioStats, CpuThrottling, CpuUsage, HugeTlbStats, MemoryData, Stats};

use crate::Hierarchies;

fn read(path: &Path) -> std::io::Result<String> {
    fs::read_to_string(path)
}

/// A single number; `max` (no limit) reads as `u64::MAX` like libcgroups.
fn value(path: &Path) -> std::io::Result<u64> {
    let text = read(path)?;
    let text = text.trim();
    if text == "max" {
        return Ok(u64::MAX);
    }
    text.parse().map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

/// `key value` lines.
fn flat(path: &Path) -> std::io::Result<HashMap<String, u64>> {
    let text = read(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect())
}

/// `MAJ:MIN [OP] VALUE` lines (the `Total` line has no device).
fn devices(path: &Path) -> std::io::Result<Vec<BlkioDeviceStat>> {
    let text = read(path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() <= 2 {
            continue;
        }
        let Some((major, minor)) = f[0].split_once(':') else { continue };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else { continue };
        let (op_type, raw) = if f.len() == 3 { (Some(f[1].to_string()), f[2]) } else { (None, f[1]) };
        let Ok(value) = raw.parse() else { continue };
        out.push(BlkioDeviceStat { major, minor, op_type, value });
    }
    Ok(out)
}

fn memory_data(dir: &Path, prefix: &str) -> std::io::Result<MemoryData> {
    let f = |name: &str| dir.join(format!("{prefix}{name}"));
    Ok(MemoryData {
        usage: value(&f("usage_in_bytes"))?,
        max_usage: value(&f("max_usage_in_bytes"))?,
        limit: value(&f("limit_in_bytes"))?,
        fail_count: value(&f("failcnt"))?,
    })
}

/// `cgroup`'s directory in the v1 hierarchy of `controller`, if it has one.
fn controller(h: &Hierarchies, name: &str, cgroup: &str) -> Option<PathBuf> {
    h.v1_dir(name, cgroup).filter(|d| d.is_dir())
}

/// The statistics of `cgroup` on a v1 (or hybrid) host; `None` where no
/// v1 memory or cpuacct controller holds it (a pure v2 host).
pub(crate) fn read_v1(h: &Hierarchies, cgroup: &str) -> Option<std::io::Result<Stats>> {
    let memory = controller(h, "memory", cgroup);
    let cpuacct = controller(h, "cpuacct", cgroup);
    if memory.is_none() && cpuacct.is_none() {
        return None;
    }
    Some(collect(h, cgroup, memory, cpuacct))
}

fn collect(h: &Hierarchies, cgroup: &str, memory: Option<PathBuf>, cpuacct: Option<PathBuf>) -> std::io::Result<Stats> {
    let mut s = Stats::default();
    if let Some(dir) = controller(h, "cpu", cgroup) {
        let t = flat(&dir.join("cpu.stat"))?;
        let get = |k: &str| t.get(k).copied().unwrap_or(0);
        s.cpu.throttling = CpuThrottling {
            periods: get("nr_periods"),
            throttled_periods: get("nr_throttled"),
            throttled_time: get("throttled_time"),
        };
    }
    if let Some(dir) = cpuacct {
        let t = flat(&dir.join("cpuacct.stat"))?;
        let per_cpu = read(&dir.join("cpuacct.usage_percpu"))?;
        s.cpu.usage = CpuUsage {
            usage_total: value(&dir.join("cpuacct.usage"))?,
            usage_user: t.get("user").copied().unwrap_or(0),
            usage_kernel: t.get("system").copied().unwrap_or(0),
            per_core_usage_total: per_cpu.split_ascii_whitespace().filter_map(|v| v.parse().ok()).collect(),
            ..Default::default()
        };
    }
    if let Some(dir) = memory {
        s.memory.memory = memory_data(&dir, "memory.")?;
        // Without swap accounting there are no memsw files.
        s.memory.memswap = memory_data(&dir, "memory.memsw.").unwrap_or_default();
        s.memory.stats = flat(&dir.join("memory.stat"))?;
        s.memory.cache = s.memory.stats.get("cache").copied().unwrap_or(0);
        s.memory.hierarchy = value(&dir.join("memory.use_hierarchy")).is_ok_and(|v| v == 1);
    }
    if let Some(dir) = controller(h, "pids", cgroup) {
        s.pids.current = value(&dir.join("pids.current"))?;
        let limit = value(&dir.join("pids.max"))?;
        s.pids.limit = if limit == u64::MAX { 0 } else { limit };
    }
    // Kernels built without blkio throttling have no such file: no figures.
    let blkio = controller(h, "blkio", cgroup).filter(|d| d.join("blkio.throttle.io_service_bytes").exists());
    if let Some(dir) = blkio {
        s.blkio = if dir.join("blkio.weight").exists() {
            BlkioStats { service_bytes: devices(&dir.join("blkio.io_service_bytes_recursive"))?, ..Default::default() }
        } else {
            BlkioStats { service_bytes: devices(&dir.join("blkio.throttle.io_service_bytes"))?, ..Default::default() }
        };
    }
    if let Some(dir) = controller(h, "hugetlb", cgroup) {
        for size in hugetlb_sizes(&dir) {
            let f = |n: &str| dir.join(format!("hugetlb.{size}.{n}"));
            let stats = HugeTlbStats {
                usage: value(&f("usage_in_bytes"))?,
                max_usage: value(&f("max_usage_in_bytes"))?,
                fail_count: value(&f("failcnt"))?,
            };
            s.hugetlb.insert(size, stats);
        }
    }
    Ok(s)
}

/// The page sizes of a v1 hugetlb directory (`hugetlb.2MB.usage_in_bytes`).
fn hugetlb_sizes(dir: &Path) -> Vec<String> {
    let names = fs::read_dir(dir).into_iter().flatten().flatten();
    let mut sizes: Vec<String> = names
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("hugetlb.")?.strip_suffix(".usage_in_bytes").map(str::to_string)
        })
        .collect();
    sizes.sort();
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `cgroup` in every hierarchy and moves `pid` into it.
    fn enter(h: &Hierarchies, cgroup: &str, pid: u32) -> Result<(), String> {
        for mp in h.mount_points() {
            let dir = mp.join(cgroup.trim_start_matches('/'));
            if fs::create_dir_all(&dir).is_ok() {
                let _ = fs::write(dir.join("cgroup.procs"), pid.to_string());
            }
        }
        Ok(())
    }

    /// On this (v1 or hybrid) host, the direct reader and libcgroups'
    /// manager agree on a live cgroup with limits and a process in it.
    #[test]
    fn reads_what_libcgroups_reads() {
        let h = Hierarchies::detect().expect("cgroup mounts");
        let cgroup = format!("/berth-v1stats-test-{}", std::process::id());
        let limits = crate::Limits { memory: Some(64 << 20), pids: Some(50), ..Default::default() };
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let made =
            enter(&h, &cgroup, sleeper.id()).and_then(|()| crate::update(&cgroup, &limits).map_err(|e| e.to_string()));
        // Both readings first, the cleanup, then the checks: a failed check
        // leaves no cgroup or process behind.
        let read = made.and_then(|()| {
            let Some(direct) = read_v1(&h, &cgroup) else { return Ok(None) }; // a pure v2 host
            let direct = crate::resources::convert(&direct.map_err(|e| e.to_string())?);
            let lib = crate::stats(&cgroup).map_err(|e| e.to_string())?;
            Ok(Some((direct, lib)))
        });
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let _ = h.remove(&cgroup);
        let Some((direct, lib)) = read.expect("stats read") else { return };
        assert_eq!(direct.memory.limit, lib.memory.limit);
        assert_eq!(direct.memory.limit, 64 << 20);
        assert_eq!(direct.memory.swap_limit, lib.memory.swap_limit);
        assert_eq!(direct.pids, lib.pids);
        assert_eq!(direct.pids.current, 1);
        assert_eq!(direct.cpu.per_cpu.len(), lib.cpu.per_cpu.len());
        assert_eq!(direct.blkio.len(), lib.blkio.len());
        assert_eq!(direct.hugetlb.len(), lib.hugetlb.len());
    }
}
