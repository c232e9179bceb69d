//! Scenarios beyond `run`: exec into a running container (berth vs runc)
//! and statistics over many containers.

use std::time::{Duration, Instant};

use berth_testing::Daemon;

use crate::make_bundle;
use crate::measure::{Runner, time_interleaved};

pub struct ExecTimes {
    pub berth: Option<Duration>,
    pub runc: Option<Duration>,
}

fn runc(d: &Daemon, args: &[&str]) -> bool {
    crate::measure::runc(&d.run_dir().join("runc-root"), &[], args)
}

/// Median of `berth exec ID /bin/true` and `runc exec ID /bin/true` against
/// a running sleep container of each.
pub fn exec(d: &Daemon, rounds: usize) -> ExecTimes {
    eprintln!("berth exec, runc exec: {rounds} rounds …");
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let sleeper = make_bundle(d.dir(), &d.rootfs, "sleeper", &["sleep", "100000"]);
    let berth_ok = d.berth(&["run", "-d", "--name", "exec-target", &rootfs, "sleep", "100000"]).code == 0;
    let runc_ok = runc(d, &["run", "-d", "--bundle", &sleeper.to_string_lossy(), "exec-target"]);
    let mut runners: Vec<Runner<'_>> = vec![
        Box::new(|_| berth_ok && d.berth(&["exec", "exec-target", "/bin/true"]).code == 0),
        Box::new(|_| runc_ok && runc(d, &["exec", "exec-target", "/bin/true"])),
    ];
    let t = time_interleaved(rounds, &mut runners);
    drop(runners);
    d.berth(&["rm", "-f", "exec-target"]);
    runc(d, &["delete", "--force", "exec-target"]);
    ExecTimes { berth: t[0], runc: t[1] }
}

/// Median wall time of `berth stats --no-stream --json` with `n` running
/// containers (5 samples).
pub fn stats(d: &Daemon, n: usize) -> Option<Duration> {
    eprintln!("starting {n} containers for stats …");
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let ids: Vec<String> = (0..n).map(|i| format!("st{i}")).collect();
    let started = ids.iter().all(|id| d.berth(&["run", "-d", "--name", id, &rootfs, "sleep", "100000"]).code == 0);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = d.berth(&["stats", "--no-stream", "--json"]);
        let counted = serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(|a| a.len()))
            .unwrap_or(0);
        if out.code == 0 && counted == n {
            times.push(t.elapsed());
        }
    }
    for id in &ids {
        d.berth(&["rm", "-f", id]);
    }
    times.sort();
    (started && times.len() == 5).then(|| times[2])
}

/// `berth run --rm ROOTFS /bin/true` under berth's default confinement
/// against `runc run` of runc's spec given berth's seccomp profile (read
/// from a container berth created), interleaved: each run with the same
/// filter to install. `None`s when berth's profile cannot be read.
pub fn confined_run(d: &Daemon, rounds: usize) -> (Option<Duration>, Option<Duration>) {
    eprintln!("berth run --rm ROOTFS, runc run with berth's seccomp profile: {rounds} rounds …");
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let created = d.berth(&["create", "--name", "profile-source", &rootfs, "/bin/true"]).code == 0;
    let config = d.state.join("bundles/default/profile-source/config.json");
    let seccomp = created.then(|| crate::scale_floor::berth_seccomp(&config)).flatten();
    d.berth(&["rm", "-f", "profile-source"]);
    let Some(seccomp) = seccomp else { return (None, None) };
    let bundle = make_bundle(d.dir(), &d.rootfs, "confined", &["/bin/true"]);
    crate::edit_spec(&bundle, |spec| spec["linux"]["seccomp"] = seccomp);
    let bundle = bundle.to_string_lossy().into_owned();
    let runc_root = d.run_dir().join("runc-root");
    let target = [rootfs.as_str(), "/bin/true"];
    let mut runners = crate::measure::run_rm_and_runc(d, &target, &bundle, &runc_root, "c");
    let t = crate::measure::time_interleaved_settled(rounds, &mut runners, crate::measure::settle_removal(d, "c"));
    (t[0], t[1])
}
