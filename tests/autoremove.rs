//! `run --rm` is berthd's job, not the CLI's (issue 9, items 5 and 6): a
//! failed run never touches an existing container, auto-removal survives
//! the client's death and berthd restarts, and signals reach the container.

use std::time::{Duration, Instant};

use berth_testing::Daemon;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Waits until `id` is gone from `ps -a`.
#[track_caller]
fn assert_removed_within(d: &Daemon, id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let out = d.berth(&["inspect", id]);
        if out.code != 0 && out.stderr.contains("not found") {
            break;
        }
        assert!(Instant::now() < deadline, "{id} was not removed: {out:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.container_paths("default", id).is_empty(), "state of {id} left");
    assert!(d.cgroup_dirs("default", id).is_empty(), "cgroup of {id} left");
}

/// Waits until `id` runs.
fn wait_running(d: &Daemon, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.berth(&["inspect", "--json", id]).stdout.contains("\"running\"") {
        assert!(Instant::now() < deadline, "{id} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failed_run_leaves_an_existing_container_alone() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.run_detached("x", &["sleep", "100"]);
    let out = d.berth(&["run", "--rm", "--name", "x", rootfs, "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("already exists"), "{out:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.berth(&["inspect", "--json", "x"]).ok().contains("\"running\""));
    let events = d.berth(&["events", "--since", "0", "--no-follow", "--id", "x"]).ok().to_string();
    assert!(!events.contains("exit") && !events.contains("delete"), "{events}");
    d.berth(&["rm", "-f", "x"]).ok();
}

#[test]
fn run_rm_returns_the_exit_code_and_removes() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let out = d.berth(&["run", "--rm", "--name", "r", rootfs, "sh", "-c", "echo out; exit 3"]);
    assert_eq!((out.code, out.stdout.as_str()), (3, "out\n"), "{out:?}");
    assert_removed_within(&d, "r", Duration::from_secs(10));
    // All of a big output arrives before the removal, through the shim's pipe.
    let big = "head -c 3000000 /dev/zero | tr '\\0' x";
    let out = d.berth(&["run", "--rm", "--name", "big", rootfs, "sh", "-c", big]);
    assert_eq!((out.code, out.stdout.len()), (0, 3_000_000), "{}", out.stderr);
    assert!(out.stdout.bytes().all(|b| b == b'x'));
    assert_removed_within(&d, "big", Duration::from_secs(10));
    // Detached: berthd removes it after it exits.
    d.berth(&["run", "--rm", "-d", "--name", "rd", rootfs, "sleep", "0.3"]).ok();
    assert_removed_within(&d, "rd", Duration::from_secs(10));
    let e = d.berth(&["run", "--rm", "-d", "--restart", "always", rootfs, "true"]);
    assert_ne!(e.code, 0, "{e:?}");
}

#[test]
fn removal_survives_the_clients_death() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let mut cli = d.berth_spawn(&["run", "--rm", "--name", "k", rootfs, "sleep", "1"]);
    wait_running(&d, "k");
    cli.kill().unwrap();
    let _ = cli.wait();
    assert_removed_within(&d, "k", Duration::from_secs(15));
}

#[test]
fn removal_survives_a_berthd_restart() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&["run", "--rm", "-d", "--name", "s", rootfs, "sleep", "1"]).ok();
    wait_running(&d, "s");
    d.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    d.spawn();
    assert_removed_within(&d, "s", Duration::from_secs(15));
}

#[test]
fn signals_to_the_client_reach_the_container() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    for (sig, code) in [(Signal::SIGHUP, "7"), (Signal::SIGQUIT, "8"), (Signal::SIGTERM, "9")] {
        let script = "trap 'exit 7' HUP; trap 'exit 8' QUIT; trap 'exit 9' TERM; while true; do sleep 0.05; done";
        let id = format!("sig{code}");
        let cli = d.berth_spawn(&["run", "--rm", "--name", &id, rootfs, "sh", "-c", script]);
        wait_running(&d, &id);
        std::thread::sleep(Duration::from_millis(200));
        kill(Pid::from_raw(cli.id() as i32), sig).unwrap();
        let out = cli.wait_with_output().unwrap();
        assert_eq!(out.status.code().map(|c| c.to_string()).as_deref(), Some(code), "{sig}: {out:?}");
        assert_removed_within(&d, &id, Duration::from_secs(10));
    }
}

/// Runs `f` with a raw API client on a current-thread runtime.
fn with_api<T>(d: &Daemon, f: impl AsyncFnOnce(&mut ApiClient) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut api = berth_e2e::api(&d.socket).await;
        f(&mut api).await
    })
}

type ApiClient = berth_api::v1::containers_client::ContainersClient<tonic::transport::Channel>;

fn follow(id: &str) -> pb::LogsRequest {
    pb::LogsRequest { id: id.into(), follow: true, ..Default::default() }
}

use berth_api::v1 as pb;

#[test]
fn a_client_that_leaves_before_the_start_leaves_nothing() {
    let d = Daemon::start();
    let create = |id: &str| pb::CreateRequest {
        id: id.into(),
        path: d.rootfs.to_string_lossy().into_owned(),
        args: vec!["sleep".into(), "100".into()],
        auto_remove: true,
        ..Default::default()
    };
    with_api(&d, async |api| {
        // The `run` client's steps: create, follow the output … then it dies.
        api.create(create("gone")).await.unwrap();
        let stream = api.logs(follow("gone")).await.unwrap();
        drop(stream);
        // Created without a follower: it waits for its start.
        api.create(create("later")).await.unwrap();
    });
    assert_removed_within(&d, "gone", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.berth(&["inspect", "--json", "later"]).ok().contains("\"created\""));
    d.berth(&["rm", "-f", "later"]).ok();
}

#[test]
fn a_pending_removal_never_takes_a_newer_container_of_the_same_name() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    with_api(&d, async |api| {
        let noisy = "head -c 20000000 /dev/zero";
        d.berth(&["run", "--rm", "-d", "--name", "g", rootfs, "sh", "-c", noisy]).ok();
        // A follower that reads nothing of a big output keeps the removal
        // waiting (the server cannot finish sending it).
        let stream = api.logs(follow("g")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.berth(&["inspect", "--json", "g"]).stdout.contains("\"stopped\"") {
            assert!(Instant::now() < deadline, "g did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The user removes it and makes a new one of the same name.
        d.berth(&["rm", "g"]).ok();
        d.run_detached("g", &["sleep", "100"]);
        drop(stream);
    });
    std::thread::sleep(Duration::from_millis(500));
    let new = d.berth(&["inspect", "--json", "g"]).ok().to_string();
    assert!(new.contains("\"running\""), "the new g was touched: {new}");
    let events = d.berth(&["events", "--since", "0", "--no-follow", "--id", "g", "--json"]).ok().to_string();
    assert_eq!(events.matches("\"delete\"").count(), 1, "{events}");
    d.berth(&["rm", "-f", "g"]).ok();
}
