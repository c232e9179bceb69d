//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats from berth's cgroup statistics: CPU (cumulative,
//! and cores in use since the previous sample of the same container),
//! memory (working set = usage - inactive file pages, as cAdvisor counts
//! it), processes, and a pod's network from its namespace's interfaces.
//! A pod's CPU and memory are its containers' sums (berth keeps no pod
//! cgroup).

use std::collections::HashMap;

use berth_api::v1 as pb;
use pb::containers_server::Containers;
use tonic::Status;

use crate::containers::Ctr;
use crate::pods::Pod;
use crate::{Backend, Cri, NAMESPACE, cri, lock, ns_i64, req, selected};

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// Cores in use between two samples (usage in ns over elapsed ns, ×1e9).
fn nano_cores(prev: Option<(u64, u64)>, now: (u64, u64)) -> Option<u64> {
    let (t0, u0) = prev?;
    let (t1, u1) = now;
    let (dt, du) = (t1.checked_sub(t0)?, u1.checked_sub(u0)?);
    (dt > 0).then(|| (du as u128 * 1_000_000_000 / dt as u128) as u64)
}

fn memory(ts: i64, m: &pb::MemoryStats) -> cri::MemoryUsage {
    // An unlimited cgroup reports a limit near u64::MAX: nothing available.
    let limited = m.limit > 0 && m.limit < (1 << 62);
    cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(m.usage.saturating_sub(m.inactive_file)),
        available_bytes: if limited { u64v(m.limit.saturating_sub(m.usage)) } else { None },
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: None,
        major_page_faults: None,
    }
}

/// `/proc/PID/net/dev` of a process: the interfaces of its network
/// namespace (loopback left out), as CRI counts them.
fn interfaces(pid: u32) -> Vec<cri::NetworkInterfaceUsage> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else { return Vec::new() };
    parse_net_dev(&text)
}

fn parse_net_dev(text: &str) -> Vec<cri::NetworkInterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<u64> = rest.split_ascii_whitespace().filter_map(|v| v.parse().ok()).collect();
            (f.len() >= 16 && name.trim() != "lo").then(|| cri::NetworkInterfaceUsage {
                name: name.trim().to_string(),
                rx_bytes: u64v(f[0]),
                rx_errors: u64v(f[2]),
                tx_bytes: u64v(f[8]),
                tx_errors: u64v(f[10]),
            })
        })
        .collect()
}

impl<B: Backend> Cri<B> {
    /// berth's statistics of every running or paused CRI-namespace container.
    async fn berth_stats(&self) -> Result<HashMap<String, pb::ContainerStats>, Status> {
        let mut out = HashMap::new();
        let mut page_token = String::new();
        loop {
            let r = pb::StatsRequest {
                namespace: NAMESPACE.into(),
                page_token,
                writable_layer: true,
                ..Default::default()
            };
            let page = Containers::stats(&*self.b, req(r)).await?.into_inner();
            out.extend(page.stats.into_iter().map(|s| (s.id.clone(), s)));
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// CRI's statistics of one container (figures only while it runs).
    fn container_stats_of(&self, c: &Ctr, s: Option<&pb::ContainerStats>) -> cri::ContainerStats {
        let attributes = cri::ContainerAttributes {
            id: c.c.id.clone(),
            metadata: Some(c.meta.metadata.clone()),
            labels: c.meta.labels.clone(),
            annotations: c.meta.annotations.clone(),
        };
        let Some(s) = s else {
            return cri::ContainerStats { attributes: Some(attributes), ..Default::default() };
        };
        let ts = ns_i64(s.timestamp_ns);
        let cpu = s.cpu.as_ref().map(|cpu| {
            let sample = (s.timestamp_ns, cpu.usage_total);
            let prev = lock(&self.cpu_samples).insert(c.c.id.clone(), sample);
            cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u64v(cpu.usage_total),
                usage_nano_cores: nano_cores(prev, sample).and_then(u64v),
            }
        });
        let swap = s.memory.as_ref().map(|m| cri::SwapUsage {
            timestamp: ts,
            swap_available_bytes: None,
            swap_usage_bytes: u64v(m.swap_usage),
        });
        cri::ContainerStats {
            attributes: Some(attributes),
            cpu,
            memory: s.memory.as_ref().map(|m| memory(ts, m)),
            writable_layer: s.writable_layer.as_ref().map(|w| cri::FilesystemUsage {
                timestamp: ts,
                fs_id: Some(cri::FilesystemIdentifier { mountpoint: w.mountpoint.clone() }),
                used_bytes: u64v(w.used_bytes),
                inodes_used: u64v(w.inodes_used),
            }),
            swap,
        }
    }

    pub(crate) async fn container_stats(&self, id: &str) -> Result<cri::ContainerStatsResponse, Status> {
        let c = self.ctr(id).await?;
        let stats = self.berth_stats().await?;
        Ok(cri::ContainerStatsResponse { stats: Some(self.container_stats_of(&c, stats.get(&c.c.id))) })
    }

    pub(crate) async fn list_container_stats(
        &self,
        r: cri::ListContainerStatsRequest,
    ) -> Result<cri::ListContainerStatsResponse, Status> {
        let f = r.filter.unwrap_or_default();
        let stats = self.berth_stats().await?;
        let out = self
            .ctrs()
            .await?
            .into_iter()
            .filter(|c| stats.contains_key(&c.c.id))
            .filter(|c| f.id.is_empty() || c.c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.c.sandbox.starts_with(&f.pod_sandbox_id))
            .filter(|c| selected(&c.meta.labels, &f.label_selector))
            .map(|c| self.container_stats_of(&c, stats.get(&c.c.id)))
            .collect();
        self.forget_samples(&stats);
        Ok(cri::ListContainerStatsResponse { stats: out })
    }

    /// Drops the CPU samples of containers that no longer run.
    fn forget_samples(&self, running: &HashMap<String, pb::ContainerStats>) {
        lock(&self.cpu_samples).retain(|id, _| running.contains_key(id));
    }

    fn pod_stats_of(
        &self,
        pod: &Pod,
        ctrs: &[Ctr],
        stats: &HashMap<String, pb::ContainerStats>,
    ) -> cri::PodSandboxStats {
        let ts = ns_i64(berth_model::now_ns());
        let members: Vec<&Ctr> = ctrs.iter().filter(|c| c.c.sandbox == pod.sb.id).collect();
        let containers: Vec<cri::ContainerStats> =
            members.iter().map(|c| self.container_stats_of(c, stats.get(&c.c.id))).collect();
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| containers.iter().filter_map(f).sum::<u64>();
        let running = members.iter().any(|c| stats.contains_key(&c.c.id));
        let cpu = running.then(|| cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: u64v(sum(&|c| c.cpu.as_ref()?.usage_core_nano_seconds.as_ref().map(|v| v.value))),
            usage_nano_cores: u64v(sum(&|c| c.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value))),
        });
        let memory = running.then(|| cri::MemoryUsage {
            timestamp: ts,
            working_set_bytes: u64v(sum(&|c| c.memory.as_ref()?.working_set_bytes.as_ref().map(|v| v.value))),
            usage_bytes: u64v(sum(&|c| c.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value))),
            rss_bytes: u64v(sum(&|c| c.memory.as_ref()?.rss_bytes.as_ref().map(|v| v.value))),
            ..Default::default()
        });
        let processes: u64 = members.iter().filter_map(|c| stats.get(&c.c.id)?.pids.as_ref()).map(|p| p.current).sum();
        // Any running member's view of the pod's network namespace.
        let network = members.iter().find(|c| stats.contains_key(&c.c.id) && c.c.pid > 0).map(|c| {
            let interfaces = interfaces(c.c.pid);
            let default_interface =
                interfaces.iter().find(|i| i.name == "eth0").or_else(|| interfaces.first()).cloned();
            cri::NetworkUsage { timestamp: ts, default_interface, interfaces }
        });
        let attributes = cri::PodSandboxAttributes {
            id: pod.sb.id.clone(),
            metadata: Some(pod.meta.metadata.clone()),
            labels: pod.meta.labels.clone(),
            annotations: pod.meta.annotations.clone(),
        };
        let linux = cri::LinuxPodSandboxStats {
            cpu,
            memory,
            network,
            process: running.then(|| cri::ProcessUsage { timestamp: ts, process_count: u64v(processes) }),
            containers,
        };
        cri::PodSandboxStats { attributes: Some(attributes), linux: Some(linux), windows: None }
    }

    pub(crate) async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStatsResponse, Status> {
        let pod = self.pod(id).await?;
        let (ctrs, stats) = (self.ctrs().await?, self.berth_stats().await?);
        Ok(cri::PodSandboxStatsResponse { stats: Some(self.pod_stats_of(&pod, &ctrs, &stats)) })
    }

    pub(crate) async fn list_pod_sandbox_stats(
        &self,
        r: cri::ListPodSandboxStatsRequest,
    ) -> Result<cri::ListPodSandboxStatsResponse, Status> {
        let f = r.filter.unwrap_or_default();
        let (ctrs, stats) = (self.ctrs().await?, self.berth_stats().await?);
        let out = self
            .pods()
            .await?
            .iter()
            .filter(|p| p.state() == cri::PodSandboxState::SandboxReady)
            .filter(|p| f.id.is_empty() || p.sb.id.starts_with(&f.id))
            .filter(|p| selected(&p.meta.labels, &f.label_selector))
            .map(|p| self.pod_stats_of(p, &ctrs, &stats))
            .collect();
        self.forget_samples(&stats);
        Ok(cri::ListPodSandboxStatsResponse { stats: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_come_from_two_samples() {
        assert_eq!(nano_cores(None, (10, 5)), None);
        // 0.5 s of CPU over 1 s: half a core.
        assert_eq!(nano_cores(Some((1_000_000_000, 0)), (2_000_000_000, 500_000_000)), Some(500_000_000));
        assert_eq!(nano_cores(Some((5, 0)), (5, 10)), None);
        assert_eq!(nano_cores(Some((1, 10)), (2, 5)), None);
    }

    #[test]
    fn working_set_leaves_out_inactive_file_pages() {
        let m = pb::MemoryStats { usage: 100, inactive_file: 30, rss: 50, limit: 1000, ..Default::default() };
        let u = memory(7, &m);
        assert_eq!(u.working_set_bytes.unwrap().value, 70);
        assert_eq!(u.available_bytes.unwrap().value, 900);
        let unlimited = pb::MemoryStats { usage: 100, limit: u64::MAX - 4095, ..Default::default() };
        assert!(memory(7, &unlimited).available_bytes.is_none());
    }

    #[test]
    fn net_dev_lists_interfaces_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    2000      20    3    0    0     0          0         0     4000      40    5    0    0     0       0          0\n";
        let got = parse_net_dev(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "eth0");
        let v = |x: &Option<cri::UInt64Value>| x.as_ref().unwrap().value;
        assert_eq!(
            (v(&got[0].rx_bytes), v(&got[0].rx_errors), v(&got[0].tx_bytes), v(&got[0].tx_errors)),
            (2000, 3, 4000, 5)
        );
    }
}
