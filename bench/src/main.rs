//! berth-bench: berth against its peers on this machine, in one run, printed
//! as one table. Measures the median wall time of running /bin/true to
//! completion (berth run --rm, runc run, ctr run --rm) on the same bundle,
//! and the mean RSS/PSS of a shim per detached container (berth-shim vs
//! containerd-shim-runc-v2).
//!
//! Also the time a daemon takes to list every running container again after
//! a SIGKILL and restart (berthd vs containerd), and cold-cache image
//! pulls and runs from a loopback registry (berth vs ctr; bench/src/image.rs),
//! and what a network costs a run (berth --network none vs the default
//! bridge network vs ctr --cni; bench/src/network.rs).
//!
//! Usage: berth-bench [--runs N] [--containers M] [--stats-containers K]
//!        [--recovery-containers R] [--recovery-rounds Q] [--only network|shim|checkpoint|cri|vm] [--scale N]
//!        [--breakdown]   (as root; see `make bench`)
//!
//! `--breakdown` prints only the phases of berth run --rm (as berthd
//! records them) next to runc's create/start/delete (bench/src/breakdown.rs).
//! `--only vm` times containers in VMs and splits the time (bench/src/vm.rs).

mod breakdown;
mod checkpoint;
mod cnihost;
mod containerd;
mod create_floor;
mod cri;
mod image;
mod measure;
mod network;
mod recovery;
mod scale;
mod scale_floor;
mod scenarios;
mod shim;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_testing::Daemon;

use crate::measure::{Mem, settled_memory, time_interleaved_settled};

/// Cgroup parent of the runc containers (removed at the end).
pub const RUNC_CGROUP_PARENT: &str = "/berth-bench-runc";

struct Opts {
    runs: usize,
    containers: usize,
    stats_containers: usize,
    recovery_containers: usize,
    recovery_rounds: usize,
    /// `--only network`: that scenario alone.
    only_network: bool,
    /// `--only shim`: containerd through runc-v2 vs berth-shim, alone.
    only_shim: bool,
    /// `--only checkpoint`: checkpoint/restore vs runc, and a migration.
    only_checkpoint: bool,
    /// `--only cri`: pod round trips through CRI, berth vs containerd.
    only_cri: bool,
    /// `--only vm`: a container in a VM, and where its time goes.
    only_vm: bool,
    /// `--scale N`: the scale figures with N containers, alone.
    scale: Option<usize>,
    /// `--breakdown`: the phases of berth run --rm next to runc's steps, alone.
    breakdown: bool,
}

const USAGE: &str = "usage: berth-bench [--runs N] [--containers M] [--stats-containers K] \
                     [--recovery-containers R] [--recovery-rounds Q] [--only network|shim|checkpoint|cri|vm] [--scale N] [--breakdown]";

fn parse_opts() -> Opts {
    let mut o = Opts {
        runs: 30,
        containers: 10,
        stats_containers: 100,
        recovery_containers: 500,
        recovery_rounds: 3,
        only_network: false,
        only_shim: false,
        only_checkpoint: false,
        only_cri: false,
        only_vm: false,
        scale: None,
        breakdown: false,
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--breakdown") {
        args.remove(at);
        o.breakdown = true;
    }
    for pair in args.chunks(2) {
        if pair[0] == "--only" && pair.get(1).map(String::as_str) == Some("network") {
            o.only_network = true;
            continue;
        }
        if pair[0] == "--only" && pair.get(1).map(String::as_str) == Some("shim") {
            o.only_shim = true;
            continue;
        }
        if pair[0] == "--only" && pair.get(1).map(String::as_str) == Some("checkpoint") {
            o.only_checkpoint = true;
            continue;
        }
        if pair[0] == "--only" && pair.get(1).map(String::as_str) == Some("cri") {
            o.only_cri = true;
            continue;
        }
        if pair[0] == "--only" && pair.get(1).map(String::as_str) == Some("vm") {
            o.only_vm = true;
            continue;
        }
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--runs", Some(v)) => o.runs = v,
            ("--containers", Some(v)) => o.containers = v,
            ("--stats-containers", Some(v)) => o.stats_containers = v,
            ("--recovery-containers", Some(v)) => o.recovery_containers = v,
            ("--recovery-rounds", Some(v)) => o.recovery_rounds = v,
            ("--scale", Some(v)) => o.scale = Some(v),
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    }
    o
}

/// An OCI bundle from `runc spec` running `args`, with no terminal.
pub fn make_bundle(dir: &Path, rootfs: &Path, name: &str, args: &[&str]) -> PathBuf {
    let bundle = dir.join(name);
    std::fs::create_dir_all(&bundle).expect("bundle dir");
    let ok = Command::new("runc").arg("spec").current_dir(&bundle).status().expect("runc spec").success();
    assert!(ok, "runc spec failed");
    edit_spec(&bundle, |spec| {
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(args);
        spec["root"]["path"] = rootfs.to_string_lossy().into_owned().into();
        spec["linux"]["cgroupsPath"] = format!("{RUNC_CGROUP_PARENT}/{name}").into();
    });
    bundle
}

/// A copy of `bundle` whose container's cgroup is `path`.
pub fn with_cgroups_path(bundle: &Path, path: &str) -> PathBuf {
    let copy = bundle.with_extension("cgroup");
    std::fs::create_dir_all(&copy).expect("bundle dir");
    std::fs::copy(bundle.join("config.json"), copy.join("config.json")).expect("copy spec");
    edit_spec(&copy, |spec| spec["linux"]["cgroupsPath"] = path.into());
    copy
}

/// Changes the spec (`config.json`) of `bundle` in place.
pub fn edit_spec(bundle: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read spec")).expect("spec");
    change(&mut spec);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("encode")).expect("write spec");
}

/// `| label | a | b | a/b |`.
fn compare_row(label: &str, a: Option<Duration>, b: Option<Duration>) {
    println!("| {label} | {} | {} | {} |", fmt_ms(a), fmt_ms(b), ratio(a, b));
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3)).unwrap_or_else(|| "n/a".into())
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    ratio_of(a.map(|a| a.as_secs_f64()), b.map(|b| b.as_secs_f64()))
}

fn ratio_of(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".into(),
    }
}

fn fmt_mem(m: Option<Mem>, f: fn(&Mem) -> f64) -> String {
    m.map(|m| format!("{:.2} MB", f(&m))).unwrap_or_else(|| "n/a".into())
}

/// `a - b` in ms, signed.
fn fmt_diff(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.1} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1e3),
        _ => "n/a".into(),
    }
}

/// The network table: medians, the network's added time and the ratios
/// the issue sets targets for.
fn print_network(runs: usize, n: &network::NetworkTimes) {
    println!();
    println!("| run /bin/true to completion, networked (median of {runs}, interleaved) | wall time |");
    println!("|---|---|");
    println!("| berth run --rm --network none | {} |", fmt_ms(n.berth_none));
    println!("| berth run --rm --network berth (bridge, host-local, portmap) | {} |", fmt_ms(n.berth_net));
    println!("| berth run --network none; berth rm (teardown included) | {} |", fmt_ms(n.berth_none_rm));
    println!("| berth run --network berth; berth rm (CNI DEL included) | {} |", fmt_ms(n.berth_net_rm));
    println!("| ctr run --rm --rootfs (containerd 1.6) | {} |", fmt_ms(n.ctr));
    println!("| ctr run --rm --cni --rootfs (same plugins) | {} |", fmt_ms(n.ctr_cni));
    println!("| network added, berth run --rm (target ≤ 15 ms) | {} |", fmt_diff(n.berth_net, n.berth_none));
    println!("| network added, berth run + rm | {} |", fmt_diff(n.berth_net_rm, n.berth_none_rm));
    println!("| CNI added, ctr run --rm | {} |", fmt_diff(n.ctr_cni, n.ctr));
    println!("| ratio berth run --rm, network / ctr --cni (target ≤ 0.3×) | {} |", ratio(n.berth_net, n.ctr_cni));
    println!("| ratio berth run + rm, network / ctr --cni | {} |", ratio(n.berth_net_rm, n.ctr_cni));
}

/// The shim table (issue 12): containerd through runc-v2 vs berth-shim.
fn print_shim(runs: usize, containers: usize, f: &shim::ShimFigures) {
    println!();
    println!("| containerd 1.6, ctr run --rm --rootfs /bin/true (median of {runs}, interleaved) | wall time |");
    println!("|---|---|");
    println!("| --runtime io.containerd.runc.v2 | {} |", fmt_ms(f.runc_v2));
    println!("| --runtime io.containerd.berth.v1 | {} |", fmt_ms(f.berth));
    println!("| ratio berth-shim / runc-v2 (target ≤ 0.6×) | {} |", ratio(f.berth, f.runc_v2));
    println!();
    println!("| shim per container, {containers} detached containers | RSS | PSS |");
    println!("|---|---|---|");
    let row = |name: &str, m: Option<Mem>| {
        println!("| {name} | {} | {} |", fmt_mem(m, |m| m.rss_mb), fmt_mem(m, |m| m.pss_mb));
    };
    row("containerd-shim-runc-v2", f.mem_runc_v2);
    row("berth-shim (io.containerd.berth.v1)", f.mem_berth);
    let pss = |m: Option<Mem>| m.map(|m| m.pss_mb);
    println!("| ratio PSS berth / runc-v2 (target ≤ 0.3×) | | {} |", ratio_of(pss(f.mem_berth), pss(f.mem_runc_v2)));
    println!();
    println!("| berthd, berth run --rm ROOTFS /bin/true (median of {runs}, interleaved) | wall time |");
    println!("|---|---|");
    println!("| through berth-shim (embedded) | {} |", fmt_ms(f.berthd_own));
    println!("| --runtime io.containerd.runc.v2 | {} |", fmt_ms(f.berthd_runc_v2));
    println!("| ratio berth-shim / runc-v2 | {} |", ratio(f.berthd_own, f.berthd_runc_v2));
    println!();
    println!("| berthd's shim, each the only berth-shim running | RSS | PSS |");
    println!("|---|---|---|");
    row("lone container (1)", f.mem_lone);
    row(&format!("sandbox ({containers} containers)"), f.mem_sandbox);
    println!("| ratio PSS sandbox / lone (target ≤ 1.5×) | | {} |", ratio_of(pss(f.mem_sandbox), pss(f.mem_lone)));
}

/// The scale table (issue 14) with its targets and the peers' figures.
fn print_scale(s: &scale::Scale) {
    let n = s.containers;
    let per = |t: Option<Duration>| t.map(|t| t / n.max(1) as u32);
    let mb = |v: Option<f64>| v.map(|v| format!("{v:.1} MB")).unwrap_or_else(|| "n/a".into());
    let (b, c) = (&s.berth, &s.containerd);
    println!();
    println!("| {n} containers | berth | peer | ratio | target (at 1,000) |");
    println!("|---|---|---|---|---|");
    println!(
        "| sequential run -d, all (per container) / ctr run -d | {} ({}) | {} ({}) | {} | ≤ 20 s |",
        fmt_ms(b.run_all),
        fmt_ms(per(b.run_all)),
        fmt_ms(c.run_all),
        fmt_ms(per(c.run_all)),
        ratio(b.run_all, c.run_all)
    );
    let row = |what: &str, berth: String, peer: String, ratio: String, target: &str| {
        println!("| {what} | {berth} | {peer} | {ratio} | {target} |");
    };
    let run_runc = format!("{} ({})", fmt_ms(s.run_runc), fmt_ms(per(s.run_runc)));
    let what = "sequential run -d, all / runc run -d of as many, one at a time";
    row(what, fmt_ms(b.run_all), run_runc, ratio(b.run_all, s.run_runc), "≤ 20 s");
    println!("| berthd RSS with all running | {} | | | ≤ 20 MB |", mb(s.berthd_rss_mb));
    let pss = (b.shims_pss_mb, c.shims_pss_mb);
    row("shims' PSS, total / containerd-shim-runc-v2", mb(pss.0), mb(pss.1), ratio_of(pss.0, pss.1), "≤ 200 MB");
    println!("| stats --no-stream --json | {} | | | ≤ 500 ms |", fmt_ms(s.stats));
    let timed_row = |what: &str, a: Option<Duration>, b: Option<Duration>, target: &str| {
        row(what, fmt_ms(a), fmt_ms(b), ratio(a, b), target);
    };
    let start = format!("run --rm /bin/true with all running / runc run (median of {})", scale::START_ROUNDS);
    timed_row(&start, s.start_berth, s.start_runc, "≤ 1.0×");
    timed_row("kill -9 + restart until all listed / ctr task ls", b.recovery, c.recovery, "≤ 300 ms");
    println!("| metrics scrape, each container's included (median of 3) | {} | | | ≤ 200 ms |", fmt_ms(s.scrape));
    timed_row("rm -f of all, one command / runc delete -f of as many (16 at a time)", s.rm_all, s.rm_runc, "≤ 5 s");
    let floor = "rm -f of all / the kernel's share alone: kill -9, wait, rmdir (16 at a time)";
    timed_row(floor, s.rm_all, s.rm_kernel, "≤ 5 s");
    print_create_floor(n, s.create_floor);
}

/// The kernel's steps of a create whose cost grows with the count, with
/// none running and with all: the floor under the run -d row.
fn print_create_floor(n: usize, (none, all): (Option<create_floor::Floor>, Option<create_floor::Floor>)) {
    println!();
    println!(
        "| the kernel's share of a create that grows with the count, no runtime (median of {}) | {n} running | none running | difference |",
        scale::FLOOR_ROUNDS
    );
    println!("|---|---|---|---|");
    let step = |what: &str, f: fn(&create_floor::Floor) -> Duration| {
        let (a, b) = (all.as_ref().map(f), none.as_ref().map(f));
        let diff = a.zip(b).map(|(a, b)| format!("{:+.2} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0));
        println!("| {what} | {} | {} | {} |", fmt_ms(a), fmt_ms(b), diff.unwrap_or_else(|| "n/a".into()));
    };
    step("unshare of a mount and a network namespace", |f| f.unshare);
    step("mount of sysfs in the new network namespace", |f| f.sysfs);
    step("pivot_root", |f| f.pivot_root);
    step("all three", create_floor::Floor::total);
}

/// The checkpoint table (issue 13): berth vs runc with the same CRIU.
fn print_vm(runs: usize, f: &vm::VmFigures) {
    println!("| a container in a VM ({}, median of {runs}) | time |", f.accel);
    println!("|---|---|");
    println!("| berth run --rm --vm ROOTFS true | {} |", fmt_ms(f.run_rm));
    println!("| … until the container's first output (echo) | {} |", fmt_ms(f.first_output));
    println!("| VMM launch (vsock backend, QEMU started) | {} |", fmt_ms(f.launch));
    println!("| guest boot, until the agent answers | {} |", fmt_ms(f.boot));
    println!("| container create, start, wait, delete in the guest | {} |", fmt_ms(f.container));
    println!("| power off, until QEMU exits | {} |", fmt_ms(f.power_off));
    println!("| berth's host-side share (total less boot, guest work, power off) | {} |", fmt_ms(f.host_share()));
    for (step, t) in &f.steps {
        println!("| VM shim step `{step}` (run without --rm, then rm) | {} |", fmt_ms(Some(*t)));
    }
    println!(
        "| berth's host-side share, same runs (run + rm less the time spent waiting on the guest) | {} |",
        fmt_ms(f.measured_share)
    );
    let pss = f.idle_pss_mb.map(|m| format!("{m:.1} MB")).unwrap_or_else(|| "n/a".into());
    println!("| PSS of one idle VM (QEMU, vsock backend, shim) | {pss} |");
    if let Some(note) = &f.note {
        println!("\n{note}");
    }
}

fn print_checkpoint(runs: usize, f: &checkpoint::CheckpointFigures) {
    println!();
    println!("| counter loop, median of {runs} (interleaved) | berth | runc | ratio (target ≤ 0.8×) |");
    println!("|---|---|---|---|");
    compare_row("checkpoint (stops it)", f.berth_dump, f.runc_dump);
    compare_row("restore (new id, running)", f.berth_restore, f.runc_restore);
    println!();
    println!("| migration to a second berthd (target ≤ 2 s) | wall time | archive |");
    println!("|---|---|---|");
    println!(
        "| 256 MB container holding ~100 MB: checkpoint, export, restore --from | {} | {:.0} MB |",
        fmt_ms(f.migrate),
        f.migrate_mb
    );
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == create_floor::PROBE_ARG {
        create_floor::probe(std::path::Path::new(&args[2]));
    }
    let o = parse_opts();
    // berthd logs as in production (tests keep `debug`): every request
    // traced at debug would be timed too.
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var(berth_testing::DAEMON_LOG_ENV, "info") };
    if o.only_network {
        let n = network::run(o.runs);
        print_network(o.runs, &n);
        return;
    }
    if o.only_vm {
        match vm::run(o.runs) {
            Some(f) => print_vm(o.runs, &f),
            None => eprintln!("vm: no figures (see the errors above)"),
        }
        return;
    }
    if o.only_cri {
        let f = cri::run(o.runs);
        println!("| CRI (median of {}, interleaved) | berth | containerd 1.6 | ratio |", o.runs);
        println!("|---|---|---|---|");
        let pod = ratio(f.berth_pod, f.ctr_pod);
        println!(
            "| pod round trip (run, create, start, exit, stop, remove) | {} | {} | {pod} |",
            fmt_ms(f.berth_pod),
            fmt_ms(f.ctr_pod)
        );
        let many = ratio(f.berth_many, f.ctr_many);
        println!(
            "| {} pods started at once | {} | {} | {many} |",
            cri::CONCURRENT,
            fmt_ms(f.berth_many),
            fmt_ms(f.ctr_many)
        );
        return;
    }
    if let Some(n) = o.scale {
        // Metrics on a socket of the run's own, each container's included.
        let metrics = std::env::temp_dir().join(format!("berth-bench-metrics-{}.sock", std::process::id()));
        let d =
            Daemon::start_with_run_tmpfs(&["--metrics-address", &metrics.to_string_lossy(), "--metrics-per-container"]);
        let bundle = make_bundle(d.dir(), &d.rootfs, "true", &["/bin/true"]);
        print_scale(&scale::run(&d, n, &bundle, &metrics));
        if let Ok(h) = berth_cgroups::Hierarchies::detect() {
            let _ = h.remove_tree(RUNC_CGROUP_PARENT);
        }
        drop(d);
        let _ = std::fs::remove_file(&metrics);
        return;
    }
    let d = Daemon::start_with_run_tmpfs(&[]);
    if o.only_shim {
        if let Some(f) = shim::run(&d, o.runs, o.containers) {
            print_shim(o.runs, o.containers, &f);
        }
        return;
    }
    if o.only_checkpoint {
        if let Some(f) = checkpoint::run(&d, o.runs) {
            print_checkpoint(o.runs, &f);
        }
        return;
    }
    let bundle = make_bundle(d.dir(), &d.rootfs, "true", &["/bin/true"]);
    if o.breakdown {
        breakdown::run(&d, &bundle, o.runs);
        if let Ok(h) = berth_cgroups::Hierarchies::detect() {
            let _ = h.remove_tree(RUNC_CGROUP_PARENT);
        }
        return;
    }
    let bundle_s = bundle.to_string_lossy().into_owned();

    let runc_root = d.run_dir().join("runc-root");
    let mut ctr = containerd::Containerd::start(d.dir(), d.run_dir());
    eprintln!("berth run --rm, runc run, ctr run --rm: {} rounds …", o.runs);
    let target = [bundle_s.as_str()];
    let mut runners = measure::run_rm_and_runc(&d, &target, &bundle_s, &runc_root, "");
    if let Some(c) = &ctr {
        runners.push(Box::new(|i| c.run_rm(containerd::RUNC_V2, &d.rootfs, &format!("c{i}"))));
    }
    let times = time_interleaved_settled(o.runs, &mut runners, measure::settle_removal(&d, ""));
    drop(runners);
    let (berth, runc, ctr_time) = (times[0], times[1], times.get(2).copied().flatten());

    let (confined, confined_runc) = scenarios::confined_run(&d, o.runs);
    let exec = scenarios::exec(&d, o.runs);
    let stats = scenarios::stats(&d, o.stats_containers);
    let image = image::run(&d, ctr.as_ref(), o.runs);
    let recovery = recovery::run(&d, ctr.as_mut(), o.recovery_containers, o.recovery_rounds);

    eprintln!("{} detached sleep containers each …", o.containers);
    let rootfs_s = d.rootfs.to_string_lossy().into_owned();
    let mut berth_shims = Vec::new();
    for i in 0..o.containers {
        let id = format!("m{i}");
        d.berth(&["run", "-d", "--name", &id, &rootfs_s, "sleep", "1000"]).ok();
        let c: serde_json::Value = serde_json::from_str(d.berth(&["inspect", "--json", &id]).ok()).expect("inspect");
        berth_shims.push(c["shim_pid"].as_u64().unwrap_or(0) as u32);
    }
    let berth_mem = settled_memory(&berth_shims);
    let ctr_mem =
        ctr.as_ref().and_then(|c| settled_memory(&c.run_detached(containerd::RUNC_V2, &d.rootfs, "cm", o.containers)));
    for i in 0..o.containers {
        d.berth(&["rm", "-f", &format!("m{i}")]);
    }
    drop(ctr);
    if let Ok(h) = berth_cgroups::Hierarchies::detect() {
        let _ = h.remove_tree(RUNC_CGROUP_PARENT);
    }
    let net = network::run(o.runs);
    let shims = shim::run(&d, o.runs, o.containers);

    println!();
    println!("berth-bench: {} runs per command (median), {} detached containers for memory", o.runs, o.containers);
    println!();
    println!("| run /bin/true to completion | wall time |");
    println!("|---|---|");
    println!("| berth run --rm (embedded runtime) | {} |", fmt_ms(berth));
    println!("| runc run (same bundle) | {} |", fmt_ms(runc));
    println!("| ctr run --rm --rootfs (containerd 1.6) | {} |", fmt_ms(ctr_time));
    println!("| ratio berth / runc | {} |", ratio(berth, runc));
    println!("| ratio berth / ctr | {} |", ratio(berth, ctr_time));
    println!();
    println!("| run /bin/true to completion, berth's default confinement | wall time |");
    println!("|---|---|");
    println!("| berth run --rm ROOTFS /bin/true | {} |", fmt_ms(confined));
    println!("| runc run, runc's spec with berth's seccomp profile | {} |", fmt_ms(confined_runc));
    println!("| ratio berth / runc | {} |", ratio(confined, confined_runc));
    println!();
    println!("| exec /bin/true in a running container | wall time |");
    println!("|---|---|");
    println!("| berth exec | {} |", fmt_ms(exec.berth));
    println!("| runc exec | {} |", fmt_ms(exec.runc));
    println!("| ratio berth / runc | {} |", ratio(exec.berth, exec.runc));
    println!();
    println!("| berth stats --no-stream --json over {} running containers | {} |", o.stats_containers, fmt_ms(stats));
    println!("|---|---|");
    println!();
    println!(
        "| image of 3 random layers, {:.1} MB gzip, loopback registry (median of {}) | berth | ctr (containerd 1.6) | ratio berth / ctr |",
        image.image_mb, o.runs
    );
    println!("|---|---|---|---|");
    compare_row("cold pull (berth pull --insecure / ctr image pull --plain-http)", image.pull_berth, image.pull_ctr);
    compare_row("run --rm IMAGE /bin/true", image.run_berth, image.run_ctr);
    println!();
    println!(
        "| recovery: kill -9 the daemon, restart, until all {} containers are listed running (median of {}) | time |",
        recovery.containers, o.recovery_rounds
    );
    println!("|---|---|");
    println!("| berthd | {} |", fmt_ms(recovery.berth));
    println!("| containerd 1.6 | {} |", fmt_ms(recovery.containerd));
    println!("| ratio berthd / containerd | {} |", ratio(recovery.berth, recovery.containerd));
    println!();
    println!("| shim memory per running container (mean) | RSS | PSS |");
    println!("|---|---|---|");
    println!("| berth-shim | {} | {} |", fmt_mem(berth_mem, |m| m.rss_mb), fmt_mem(berth_mem, |m| m.pss_mb));
    println!("| containerd-shim-runc-v2 | {} | {} |", fmt_mem(ctr_mem, |m| m.rss_mb), fmt_mem(ctr_mem, |m| m.pss_mb));
    print_network(o.runs, &net);
    if let Some(f) = &shims {
        print_shim(o.runs, o.containers, f);
    }
}
