//! `--breakdown` (issue 14): where the time of `berth run --rm /bin/true`
//! goes. berthd records each phase of create, start, exit and delete
//! (`berth system phases`); this runs N rounds of berth run --rm and of
//! runc's own steps (create, start, delete) on the same bundle,
//! interleaved, and prints the median of every phase next to the totals.
//! What the phases leave of berth's total is the CLI, the RPCs and the
//! wait for the exit.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testing::Daemon;

use crate::measure::{Runner, median, time_interleaved_settled};

/// runc's steps of one round, in order; the process exits between start
/// and delete.
const RUNC_STEPS: [&str; 3] = ["create", "start", "delete"];

fn runc(root: &Path, args: &[&str]) -> bool {
    Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until runc says the container has stopped.
fn await_stopped(root: &Path, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let out = Command::new("runc").arg("--root").arg(root).args(["state", id]).output();
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"stopped\"")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} ms", d.as_secs_f64() * 1e3)).unwrap_or_else(|| "n/a".into())
}

pub fn run(d: &Daemon, bundle: &Path, rounds: usize) {
    let bundle_s = bundle.to_string_lossy().into_owned();
    let root = d.run_dir().join("runc-breakdown");
    let mut steps: Vec<Vec<Duration>> = vec![Vec::new(); RUNC_STEPS.len()];
    d.berth(&["system", "phases", "--reset"]).ok();
    eprintln!("breakdown: berth run --rm and runc create/start/delete, {rounds} rounds …");
    let mut runners: Vec<Runner<'_>> = vec![
        Box::new(|i| d.berth(&["run", "--rm", "--name", &format!("pb{i}"), &bundle_s]).code == 0),
        Box::new(|i| {
            let id = format!("rb{i}");
            let mut ok = true;
            for (step, times) in RUNC_STEPS.iter().zip(steps.iter_mut()) {
                if *step == "delete" {
                    await_stopped(&root, &id);
                }
                let t = Instant::now();
                let args: Vec<&str> = match *step {
                    "create" => vec!["create", "--bundle", &bundle_s, &id],
                    _ => vec![step, &id],
                };
                ok &= runc(&root, &args);
                times.push(t.elapsed());
            }
            ok
        }),
    ];
    let totals = time_interleaved_settled(rounds, &mut runners, crate::measure::settle_removal(d, "p"));
    drop(runners);
    // run --rm returns before berthd's removal: let it finish.
    std::thread::sleep(Duration::from_millis(500));
    let out = d.berth(&["system", "phases", "--json"]);
    let phases: serde_json::Value = serde_json::from_str(out.ok()).unwrap_or_default();

    println!();
    println!("| phase (median of {rounds}) | berth | runc |");
    println!("|---|---|---|");
    println!("| total: berth run --rm / runc create+start+delete | {} | {} |", ms(totals[0]), ms(totals[1]));
    let mut in_phases = 0u64;
    for p in phases.as_array().into_iter().flatten() {
        let name = p["phase"].as_str().unwrap_or("?");
        let us = p["median_us"].as_u64().unwrap_or(0);
        if !name.starts_with("delete.") {
            in_phases += us;
        }
        println!("| berthd {name} | {:.2} ms | |", us as f64 / 1e3);
    }
    for (step, times) in RUNC_STEPS.iter().zip(steps.iter_mut()) {
        println!("| runc {step} | | {} |", ms(median(times)));
    }
    if let Some(total) = totals[0] {
        let outside = total.as_secs_f64() * 1e3 - in_phases as f64 / 1e3;
        println!(
            "| berth outside berthd's create/start/exit phases (CLI, RPCs, waiting for the exit) | {outside:.2} ms | |"
        );
    }
}
