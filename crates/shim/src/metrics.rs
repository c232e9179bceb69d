//! Statistics in containerd's own types, for a shim started by containerd:
//! `ctr task metrics` decodes the Stats answer's `Any` only as
//! `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`.
//! berthd keeps getting berth's richer JSON (`STATS_TYPE_URL`).

use berth_cgroups::ContainerStats;
use berth_shim::any_of;
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

/// Whether the host runs cgroup v2 only (its root is the unified hierarchy).
fn unified_only() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The statistics as the Metrics type of this host's cgroup version.
pub fn to_any(stats: &ContainerStats) -> Result<Any, String> {
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
        usage: m.usage,
        usage_limit: m.limit,
        max_usage: m.max_usage,
        swap_usage: m.swap_usage,
        swap_limit: m.swap_limit,
        ..Default::default()
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

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
}
