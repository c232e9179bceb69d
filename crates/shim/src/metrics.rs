//! Statistics in containerd's own types, for a shim started by containerd:
//! `ctr task metrics` decodes the Stats answer's `Any` only as
//! `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`.
//! berthd keeps getting berth's richer JSON (`STATS_TYPE_URL`) from berth's
//! own shim, and decodes containerd's types back with [`stats_from_any`]
//! when it drives a third-party shim such as `containerd-shim-runc-v2`.

use berth_cgroups::{BlkioEntry, ContainerStats, CpuStats, HugetlbEntry, MemoryStats, PidsStats};
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

/// Whether the host runs cgroup v2 only (its root is the unified hierarchy).
fn unified_only() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The statistics as the Metrics type of this host's cgroup version.
pub fn to_any(stats: &ContainerStats) -> Result<Any, String> {
    use crate::any_of;
    let any = if unified_only() { any_of(&metrics_v2(stats)) } else { any_of(&metrics_v1(stats)) };
    any.map_err(|e| format!("encode metrics: {e}"))
}

fn metrics_v1(s: &ContainerStats) -> v1::Metrics {
    let usage = v1::CPUUsage {
        total: s.cpu.usage_total,
        kernel: s.cpu.usage_kernel,
        user: s.cpu.usage_user,
        per_cpu: s.cpu.per_cpu.clone(),
        ..Default::default()
    };
    let throttling = v1::Throttle {
        periods: s.cpu.throttling_periods,
        throttled_periods: s.cpu.throttled_periods,
        throttled_time: s.cpu.throttled_time,
        ..Default::default()
    };
    let m = &s.memory;
    let memory = v1::MemoryStat {
        cache: m.cache,
        rss: m.rss,
        total_cache: m.cache,
        total_rss: m.rss,
        inactive_file: m.inactive_file,
        total_inactive_file: m.inactive_file,
        usage: Some(v1::MemoryEntry {
            usage: m.usage,
            limit: m.limit,
            max: m.max_usage,
            failcnt: m.fail_count,
            ..Default::default()
        })
        .into(),
        swap: Some(v1::MemoryEntry { usage: m.swap_usage, limit: m.swap_limit, ..Default::default() }).into(),
        ..Default::default()
    };
    let blkio = v1::BlkIOStat {
        io_service_bytes_recursive: s
            .blkio
            .iter()
            .map(|b| v1::BlkIOEntry {
                op: b.op.clone(),
                major: b.major,
                minor: b.minor,
                value: b.bytes,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    v1::Metrics {
        hugetlb: s
            .hugetlb
            .iter()
            .map(|h| v1::HugetlbStat {
                usage: h.usage,
                max: h.max_usage,
                failcnt: h.fail_count,
                pagesize: h.page_size.clone(),
                ..Default::default()
            })
            .collect(),
        pids: Some(v1::PidsStat { current: s.pids.current, limit: s.pids.limit, ..Default::default() }).into(),
        cpu: Some(v1::CPUStat { usage: Some(usage).into(), throttling: Some(throttling).into(), ..Default::default() })
            .into(),
        memory: Some(memory).into(),
        blkio: Some(blkio).into(),
        memory_oom_control: Some(v1::MemoryOomControl { oom_kill: s.memory.oom_kills, ..Default::default() }).into(),
        ..Default::default()
    }
}

fn metrics_v2(s: &ContainerStats) -> v2::Metrics {
    let cpu = v2::CPUStat {
        usage_usec: s.cpu.usage_total / 1000,
        user_usec: s.cpu.usage_user / 1000,
        system_usec: s.cpu.usage_kernel / 1000,
        nr_periods: s.cpu.throttling_periods,
        nr_throttled: s.cpu.throttled_periods,
        throttled_usec: s.cpu.throttled_time / 1000,
        ..Default::default()
    };
    let m = &s.memory;
    let memory = v2::MemoryStat {
        anon: m.rss,
        file: m.cache,
        inactive_file: m.inactive_file,
        usage: m.usage,
        usage_limit: m.limit,
        max_usage: m.max_usage,
        swap_usage: m.swap_usage,
        swap_limit: m.swap_limit,
        ..Default::default()
    };
    // v2 has no failcnt; memory.events "max" counts the same thing: the
    // times usage hit the limit.
    let memory_events = v2::MemoryEvents { max: m.fail_count, oom_kill: m.oom_kills, ..Default::default() };
    // berth's entries are per device and operation; v2 has one per device.
    let mut io: Vec<v2::IOEntry> = Vec::new();
    for b in &s.blkio {
        let pos = io.iter().position(|e| (e.major, e.minor) == (b.major, b.minor));
        let entry = match pos {
            Some(i) => &mut io[i],
            None => {
                io.push(v2::IOEntry { major: b.major, minor: b.minor, ..Default::default() });
                let last = io.len() - 1;
                &mut io[last]
            }
        };
        match b.op.to_ascii_lowercase().as_str() {
            "read" => entry.rbytes += b.bytes,
            "write" => entry.wbytes += b.bytes,
            _ => {}
        }
    }
    v2::Metrics {
        pids: Some(v2::PidsStat { current: s.pids.current, limit: s.pids.limit, ..Default::default() }).into(),
        cpu: Some(cpu).into(),
        memory: Some(memory).into(),
        memory_events: Some(memory_events).into(),
        io: Some(v2::IOStat { usage: io, ..Default::default() }).into(),
        hugetlb: s
            .hugetlb
            .iter()
            .map(|h| v2::HugeTlbStat {
                current: h.usage,
                max: h.max_usage,
                failcnt: h.fail_count,
                pagesize: h.page_size.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// berth's statistics from a Stats answer: berth's own JSON, or containerd's
/// cgroup v1 / v2 Metrics as third-party shims send them.
pub fn stats_from_any(any: &Any) -> Result<ContainerStats, String> {
    let bad = |e: &dyn std::fmt::Display| format!("decode {}: {e}", any.type_url);
    if any.type_url == crate::STATS_TYPE_URL {
        return serde_json::from_slice(&any.value).map_err(|e| bad(&e));
    }
    // Go's typeurl may prefix the message name with a host
    // ("types.containerd.io/"); the name is what follows the last slash.
    match any.type_url.rsplit('/').next().unwrap_or_default() {
        "io.containerd.cgroups.v1.Metrics" => {
            v1::Metrics::parse_from_bytes(&any.value).map(|m| stats_v1(&m)).map_err(|e| bad(&e))
        }
        "io.containerd.cgroups.v2.Metrics" => {
            v2::Metrics::parse_from_bytes(&any.value).map(|m| stats_v2(&m)).map_err(|e| bad(&e))
        }
        _ => Err(format!("unknown statistics type {:?}", any.type_url)),
    }
}

/// The inverse of [`metrics_v1`].
fn stats_v1(m: &v1::Metrics) -> ContainerStats {
    let (usage, throttling) = (&m.cpu.usage, &m.cpu.throttling);
    let mem = &m.memory;
    ContainerStats {
        cpu: CpuStats {
            usage_total: usage.total,
            usage_user: usage.user,
            usage_kernel: usage.kernel,
            per_cpu: usage.per_cpu.clone(),
            throttling_periods: throttling.periods,
            throttled_periods: throttling.throttled_periods,
            throttled_time: throttling.throttled_time,
        },
        memory: MemoryStats {
            usage: mem.usage.usage,
            limit: mem.usage.limit,
            max_usage: mem.usage.max,
            // runc's shim reports the hierarchy totals where berth's
            // encoder writes both; prefer the larger, as berth_cgroups does.
            cache: mem.cache.max(mem.total_cache),
            rss: mem.rss.max(mem.total_rss),
            swap_usage: mem.swap.usage,
            swap_limit: mem.swap.limit,
            fail_count: mem.usage.failcnt,
            inactive_file: mem.inactive_file.max(mem.total_inactive_file),
            oom_kills: m.memory_oom_control.oom_kill,
        },
        pids: PidsStats { current: m.pids.current, limit: m.pids.limit },
        blkio: m
            .blkio
            .io_service_bytes_recursive
            .iter()
            .map(|b| BlkioEntry { major: b.major, minor: b.minor, op: b.op.clone(), bytes: b.value })
            .collect(),
        hugetlb: m
            .hugetlb
            .iter()
            .map(|h| HugetlbEntry {
                page_size: h.pagesize.clone(),
                usage: h.usage,
                max_usage: h.max,
                fail_count: h.failcnt,
            })
            .collect(),
    }
}

/// The inverse of [`metrics_v2`]: microseconds become nanoseconds again,
/// and each device's read and write bytes become two entries, named as
/// cgroup v1's blkio files name them.
fn stats_v2(m: &v2::Metrics) -> ContainerStats {
    let (cpu, mem) = (&m.cpu, &m.memory);
    ContainerStats {
        cpu: CpuStats {
            usage_total: cpu.usage_usec.saturating_mul(1000),
            usage_user: cpu.user_usec.saturating_mul(1000),
            usage_kernel: cpu.system_usec.saturating_mul(1000),
            per_cpu: Vec::new(),
            throttling_periods: cpu.nr_periods,
            throttled_periods: cpu.nr_throttled,
            throttled_time: cpu.throttled_usec.saturating_mul(1000),
        },
        memory: MemoryStats {
            usage: mem.usage,
            limit: mem.usage_limit,
            max_usage: mem.max_usage,
            cache: mem.file,
            rss: mem.anon,
            swap_usage: mem.swap_usage,
            swap_limit: mem.swap_limit,
            fail_count: m.memory_events.max,
            inactive_file: mem.inactive_file,
            oom_kills: m.memory_events.oom_kill,
        },
        pids: PidsStats { current: m.pids.current, limit: m.pids.limit },
        blkio: m
            .io
            .usage
            .iter()
            .flat_map(|e| {
                [("Read", e.rbytes), ("Write", e.wbytes)].map(|(op, bytes)| BlkioEntry {
                    major: e.major,
                    minor: e.minor,
                    op: op.to_string(),
                    bytes,
                })
            })
            .collect(),
        hugetlb: m
            .hugetlb
            .iter()
            .map(|h| HugetlbEntry {
                page_size: h.pagesize.clone(),
                usage: h.current,
                max_usage: h.max,
                fail_count: h.failcnt,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::any_of;

    fn sample() -> ContainerStats {
        let mut s = ContainerStats::default();
        s.cpu.usage_total = 5_000_000;
        s.memory.usage = 4096;
        s.pids.current = 2;
        s.blkio = vec![
            berth_cgroups::BlkioEntry { major: 8, minor: 0, op: "Read".into(), bytes: 10 },
            berth_cgroups::BlkioEntry { major: 8, minor: 0, op: "Write".into(), bytes: 20 },
        ];
        s
    }

    #[test]
    fn v1_metrics_carry_containerd_type_and_values() {
        let m = metrics_v1(&sample());
        let any = any_of(&m).expect("encode");
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let back = v1::Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!(back.cpu.usage.total, 5_000_000);
        assert_eq!(back.memory.usage.usage, 4096);
        assert_eq!(back.pids.current, 2);
        assert_eq!(back.blkio.io_service_bytes_recursive.len(), 2);
    }

    #[test]
    fn v2_metrics_merge_devices() {
        let m = metrics_v2(&sample());
        assert_eq!(any_of(&m).expect("encode").type_url, "io.containerd.cgroups.v2.Metrics");
        assert_eq!(m.cpu.usage_usec, 5_000);
        assert_eq!(m.io.usage.len(), 1);
        assert_eq!((m.io.usage[0].rbytes, m.io.usage[0].wbytes), (10, 20));
    }

    /// Every field non-zero, CPU times whole microseconds (v2 carries no
    /// finer), hierarchy totals equal to the local figures.
    fn full() -> ContainerStats {
        ContainerStats {
            cpu: CpuStats {
                usage_total: 9_000_000,
                usage_user: 5_000_000,
                usage_kernel: 4_000_000,
                per_cpu: vec![6_000_000, 3_000_000],
                throttling_periods: 7,
                throttled_periods: 3,
                throttled_time: 2_000,
            },
            memory: MemoryStats {
                usage: 4096,
                limit: 1 << 30,
                max_usage: 8192,
                cache: 100,
                rss: 200,
                swap_usage: 300,
                swap_limit: 1 << 31,
                fail_count: 4,
                inactive_file: 50,
                oom_kills: 2,
            },
            pids: PidsStats { current: 2, limit: 64 },
            blkio: sample().blkio,
            hugetlb: vec![HugetlbEntry { page_size: "2MB".into(), usage: 1, max_usage: 2, fail_count: 3 }],
        }
    }

    #[test]
    fn v1_round_trip() {
        let s = full();
        let any = any_of(&metrics_v1(&s)).expect("encode");
        assert_eq!(stats_from_any(&any), Ok(s));
    }

    #[test]
    fn v2_round_trip_keeps_what_v2_carries() {
        let s = full();
        let any = any_of(&metrics_v2(&s)).expect("encode");
        let want = ContainerStats { cpu: CpuStats { per_cpu: Vec::new(), ..s.cpu.clone() }, ..s };
        assert_eq!(stats_from_any(&any), Ok(want));
    }

    #[test]
    fn berth_json_and_prefixed_urls_decode() {
        let s = full();
        let json = Any {
            type_url: crate::STATS_TYPE_URL.into(),
            value: serde_json::to_vec(&s).expect("json"),
            ..Default::default()
        };
        assert_eq!(stats_from_any(&json), Ok(s.clone()));
        // Go's typeurl may write the "types.containerd.io/" prefix.
        let mut any = any_of(&metrics_v1(&s)).expect("encode");
        any.type_url = format!("types.containerd.io/{}", any.type_url);
        assert_eq!(stats_from_any(&any), Ok(s));
    }

    #[test]
    fn unknown_type_and_garbage_are_errors() {
        let unknown = Any { type_url: "example.com/Nope".into(), value: vec![], ..Default::default() };
        let err = stats_from_any(&unknown).expect_err("unknown type");
        assert!(err.contains("example.com/Nope"), "{err}");
        for url in ["io.containerd.cgroups.v1.Metrics", "io.containerd.cgroups.v2.Metrics", crate::STATS_TYPE_URL] {
            // Field 1, length-delimited, with a length running past the end.
            let garbage = Any { type_url: url.into(), value: vec![0x0a, 0xff, 0x01, 0x00], ..Default::default() };
            let err = stats_from_any(&garbage).expect_err(url);
            assert!(err.contains(url), "{err}");
        }
    }
}
