//! `--only vm` (issue 16): a container in a VM of its own. Times `berth
//! run --rm --vm ROOTFS true` and the wait for a container's first output
//! through berthd, then the same steps driven directly through the VMM
//! layer and the guest's Task API (VMM launch, guest boot until the agent
//! answers, the container's create/start/wait/delete in the guest, power
//! off): what berthd's total leaves of those is berth's own host-side
//! share. That difference mixes separate runs; so the share is also taken
//! within each run, from the steps the VM shim records (`vm-steps.json`:
//! the run's total, and its rm's, less the guest's steps). Also the PSS
//! of one idle VM (QEMU, the vsock backend, the shim), and the accelerator.

use std::io::Read;
use std::time::{Duration, Instant};

use berth_testing::Daemon;
use berth_vm::{Assets, VmSpec, qemu::Microvm};
use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::r#async::transport::Socket;
use containerd_shim_protos::ttrpc::asynchronous::Client;
use containerd_shim_protos::ttrpc::context;

use crate::measure::median;

pub struct VmFigures {
    pub accel: &'static str,
    /// The VM shim's steps through berthd (`vm-steps.json`): medians by
    /// step, in the order they end.
    pub steps: Vec<(String, Duration)>,
    /// The same runs' total (run, then rm) less their `guest.*` steps.
    pub measured_share: Option<Duration>,
    pub note: Option<String>,
    pub run_rm: Option<Duration>,
    pub first_output: Option<Duration>,
    pub launch: Option<Duration>,
    pub boot: Option<Duration>,
    pub container: Option<Duration>,
    pub power_off: Option<Duration>,
    pub idle_pss_mb: Option<f64>,
}

impl VmFigures {
    /// berthd's total less the guest's boot, work and power-off.
    pub fn host_share(&self) -> Option<Duration> {
        let guest = self.boot? + self.container? + self.power_off?;
        self.run_rm?.checked_sub(guest)
    }
}

fn collect(rounds: usize, mut f: impl FnMut() -> Option<Duration>) -> Option<Duration> {
    let mut v: Vec<Duration> = (0..rounds).filter_map(|_| f()).collect();
    median(&mut v)
}

/// Time until the first byte of `echo` arrives from a container in a VM.
fn first_output(d: &Daemon, rootfs: &str) -> Option<Duration> {
    let start = Instant::now();
    let mut child = d.berth_spawn(&["run", "--rm", "--vm", rootfs, "echo", "x"]);
    let mut byte = [0u8; 1];
    let got = child.stdout.as_mut().and_then(|out| out.read(&mut byte).ok()) == Some(1);
    let elapsed = start.elapsed();
    let ok = child.wait().is_ok_and(|s| s.success());
    (got && ok).then_some(elapsed)
}

/// A VM shim's step: name, from, to (µs since the shim started).
type Span = (String, u64, u64);

/// One `berth run --vm ROOTFS true` and its `rm`: their wall time and the
/// steps its VM shim recorded.
fn steps_round(d: &Daemon, rootfs: &str, n: usize) -> Option<(Duration, Vec<Span>)> {
    let name = format!("steps{n}");
    let t = Instant::now();
    let ran = d.berth(&["run", "--vm", "--name", &name, rootfs, "true"]).code == 0;
    let run = t.elapsed();
    let rec: Option<serde_json::Value> = serde_json::from_str(&d.berth(&["inspect", "--json", &name]).stdout).ok();
    let file = rec
        .as_ref()
        .and_then(|r| r["bundle"].as_str())
        .map(|b| std::path::Path::new(b).join(berth_model::vm::STEPS_FILE));
    let steps = file.and_then(|f| std::fs::read(f).ok()).and_then(|b| serde_json::from_slice(&b).ok());
    let t = Instant::now();
    let removed = d.berth(&["rm", &name]).code == 0;
    (ran && removed).then_some((run + t.elapsed(), steps?))
}

/// How long the host waited on the guest: the union of the `guest.*`
/// spans (a Wait overlaps the Start it was asked before).
fn guest_time(spans: &[Span]) -> Duration {
    let mut guest: Vec<(u64, u64)> =
        spans.iter().filter(|(n, ..)| n.starts_with("guest.")).map(|(_, from, to)| (*from, *to)).collect();
    guest.sort();
    let (mut total, mut end) = (0, 0);
    for (from, to) in guest {
        let from = from.max(end);
        if to > from {
            total += to - from;
            end = to;
        }
    }
    Duration::from_micros(total)
}

/// Medians of the steps of `rounds`, and of each round's total less the
/// time the host waited on the guest.
fn steps_figures(rounds: &[(Duration, Vec<Span>)]) -> (Vec<(String, Duration)>, Option<Duration>) {
    let mut names: Vec<String> = Vec::new();
    for (_, spans) in rounds {
        for (name, ..) in spans {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let steps = names
        .into_iter()
        .filter_map(|name| {
            let mut v: Vec<Duration> = rounds
                .iter()
                .map(|(_, s)| {
                    Duration::from_micros(
                        s.iter().filter(|(n, ..)| *n == name).map(|(_, f, t)| t.saturating_sub(*f)).sum(),
                    )
                })
                .collect();
            Some((name, median(&mut v)?))
        })
        .collect();
    let mut shares: Vec<Duration> =
        rounds.iter().filter_map(|(total, spans)| total.checked_sub(guest_time(spans))).collect();
    (steps, median(&mut shares))
}

/// Steps of one VM driven directly: (launch, boot, container, power off).
async fn direct_round(spec: &VmSpec) -> Option<[Duration; 4]> {
    let t = Instant::now();
    let mut vm = berth_vm::launch(&Microvm, spec).ok()?;
    let launch = t.elapsed();
    let t = Instant::now();
    let stream = vm.wait_ready(Duration::from_secs(60)).await.ok()?;
    let boot = t.elapsed();
    let task = TaskClient::new(Client::new(Socket::new(stream)));
    let ctx = || context::with_timeout(Duration::from_secs(30).as_nanos() as i64);
    let t = Instant::now();
    let bundle = berth_testing::vm::guest_bundle(&spec.share, berth_model::vm::GUEST_SHARE, "c", &["true"]);
    let id = || "c".to_string();
    let create = api::CreateTaskRequest { id: id(), bundle, ..Default::default() };
    task.create(ctx(), &create).await.ok()?;
    task.start(ctx(), &api::StartRequest { id: id(), ..Default::default() }).await.ok()?;
    task.wait(ctx(), &api::WaitRequest { id: id(), ..Default::default() }).await.ok()?;
    task.delete(ctx(), &api::DeleteRequest { id: id(), ..Default::default() }).await.ok()?;
    let container = t.elapsed();
    let t = Instant::now();
    let _ = task.shutdown(ctx(), &api::ShutdownRequest { id: spec.id.clone(), now: true, ..Default::default() }).await;
    let clean = vm.stop(Duration::from_secs(20)).await;
    let power_off = t.elapsed();
    let _ = std::fs::remove_dir_all(spec.share.join("c"));
    clean.then_some([launch, boot, container, power_off])
}

/// PSS of the shim of container `id` and of its children (QEMU, backend).
fn idle_pss(d: &Daemon, id: &str) -> Option<f64> {
    let ps: serde_json::Value = serde_json::from_str(d.berth(&["ps", "--json"]).ok()).ok()?;
    let shim = ps.as_array()?.iter().find(|c| c["id"] == id)?["shim_pid"].as_u64()? as u32;
    let mut pids = vec![shim];
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        if ppid == Some(shim) {
            pids.push(pid);
        }
    }
    let mem = crate::measure::shim_memory(&pids)?;
    Some(mem.pss_mb * pids.len() as f64)
}

pub fn run(rounds: usize) -> Option<VmFigures> {
    let assets_dir = berth_testing::vm::assets_dir();
    let d = Daemon::start_with(&["--vm-assets", &assets_dir.to_string_lossy()]);
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let (accel, note) = berth_vm::accel::resolve(berth_vm::AccelChoice::Auto).ok()?;
    eprintln!("vm: {rounds} rounds of berth run --rm --vm ({}) …", accel.as_str());
    let run_rm = collect(rounds, || {
        let t = Instant::now();
        (d.berth(&["run", "--rm", "--vm", &rootfs, "true"]).code == 0).then(|| t.elapsed())
    });
    let first_output = collect(rounds, || first_output(&d, &rootfs));
    let stepped: Vec<_> = (0..rounds).filter_map(|n| steps_round(&d, &rootfs, n)).collect();
    let (shim_steps, measured_share) = steps_figures(&stepped);

    let assets = Assets::load(&assets_dir, env!("CARGO_PKG_VERSION")).ok()?;
    let share = d.dir().join("bench-share");
    std::fs::create_dir_all(&share).ok()?;
    let spec = VmSpec {
        id: "bench".into(),
        cpus: 1,
        memory_mib: berth_vm::DEFAULT_MEMORY_MIB,
        share,
        state: d.dir().join("bench-vm"),
        accel,
        assets,
        guest_log: None,
        net: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let mut steps: [Vec<Duration>; 4] = Default::default();
    for _ in 0..rounds {
        if let Some(round) = rt.block_on(direct_round(&spec)) {
            for (v, t) in steps.iter_mut().zip(round) {
                v.push(t);
            }
        }
    }
    let [launch, boot, container, power_off] = steps.map(|mut v| median(&mut v));

    d.berth(&["run", "-d", "--vm", "--name", "idle", &rootfs, "sleep", "1000"]).ok();
    // Idle: the guest has settled after its boot.
    std::thread::sleep(Duration::from_secs(2));
    let idle_pss_mb = idle_pss(&d, "idle");
    d.berth(&["rm", "-f", "idle"]).ok();
    Some(VmFigures {
        accel: accel.as_str(),
        steps: shim_steps,
        measured_share,
        note,
        run_rm,
        first_output,
        launch,
        boot,
        container,
        power_off,
        idle_pss_mb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_time_is_the_union_of_its_spans() {
        let span = |n: &str, f, t| (n.to_string(), f, t);
        let spans = vec![span("guest.boot", 10, 100), span("host.streams", 100, 110), span("guest.wait", 110, 300)];
        let spans = [spans, vec![span("guest.start", 120, 150), span("guest.power_off", 400, 450)]].concat();
        assert_eq!(guest_time(&spans), Duration::from_micros(90 + 190 + 50));
        let (steps, share) = steps_figures(&[(Duration::from_micros(1000), spans)]);
        assert_eq!(share, Some(Duration::from_micros(1000 - 330)));
        assert_eq!(steps[0], ("guest.boot".to_string(), Duration::from_micros(90)));
    }
}
