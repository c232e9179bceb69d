//! Terminals and stdin (SPEC B6, B17): `run -t`, `exec -t`, `-it` with
//! input, window size at start and on SIGWINCH, `-i` without a terminal.
//! For terminals the CLI runs inside `script`, which gives it a real pty,
//! as a person's terminal would.

use berth_testing::Daemon;

fn exec_and_run_get_a_real_terminal(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("term", &["sleep", "1000"]);
    let (code, out) = d.in_pty("berth exec -t term sh -c 'tty; exit 6'", "");
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    // Without -t there is no terminal.
    let out = d.berth(&["exec", "term", "sh", "-c", "tty || true"]);
    assert!(out.stdout.contains("not a tty"), "{out:?}");

    let rootfs = d.rootfs.to_str().unwrap().to_string();
    let (code, out) =
        d.in_pty(&format!("stty cols 90 rows 20; berth run --rm -t {rootfs} sh -c 'tty; stty size; exit 5'"), "");
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("/dev/pts/") && out.contains("20 90"), "init starts with our window size: {out}");
    d.berth(&["rm", "-f", "term"]).ok();
    assert_eq!(d.berth(&["ps", "-a", "--json"]).ok().trim(), "[]");
    // The shim took its terminal sockets down with the processes.
    let sockets: Vec<_> =
        std::fs::read_dir(d.state.join("shims")).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    assert!(sockets.is_empty(), "sockets left: {sockets:?}");
}

fn window_size_follows_resizes(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("win", &["sleep", "1000"]);
    let (_, out) = d.in_pty("stty cols 100 rows 30; berth exec -t win sh -c 'sleep 0.5; stty size'", "");
    assert!(out.contains("30 100"), "{out}");
    // SIGWINCH after a resize of our terminal reaches the container.
    let script = "stty cols 80 rows 24; berth exec -t win sh -c 'sleep 1.5; stty size' & sleep 0.7; stty cols 120 rows 40; kill -WINCH $!; wait $!";
    let (_, out) = d.in_pty(script, "");
    assert!(out.contains("40 120"), "{out}");
    d.berth(&["rm", "-f", "win"]).ok();
}

fn interactive_input_reaches_the_process(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("shell", &["sleep", "1000"]);
    let (code, out) = d.in_pty("berth exec -it shell sh", "echo typed-$((6*7))\nexit 3\n");
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("typed-42"), "{out}");
    let rootfs = d.rootfs.to_str().unwrap().to_string();
    let (code, out) = d.in_pty(&format!("berth run --rm -it {rootfs} sh"), "echo in-run-$((2+2))\nexit 4\n");
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("in-run-4"), "{out}");
    d.berth(&["rm", "-f", "shell"]).ok();
}

fn stdin_without_a_terminal(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("pipe", &["sleep", "1000"]);
    let out = d.berth_with_input(&["exec", "-i", "pipe", "cat"], "hello\nworld\n");
    assert_eq!((out.code, out.stdout.as_str()), (0, "hello\nworld\n"), "{out:?}");
    // The end of our input is the end of the process's.
    let out = d.berth_with_input(&["exec", "-i", "pipe", "sh", "-c", "read x; read y || echo eof-after-$x"], "one\n");
    assert_eq!(out.stdout, "eof-after-one\n", "{out:?}");
    // Without -i the process reads nothing.
    let out = d.berth_with_input(&["exec", "pipe", "sh", "-c", "read x || echo nothing"], "ignored\n");
    assert_eq!(out.stdout, "nothing\n", "{out:?}");
    let rootfs = d.rootfs.to_str().unwrap();
    let out = d.berth_with_input(&["run", "--rm", "-i", rootfs, "wc", "-l"], "a\nb\nc\n");
    assert_eq!((out.code, out.stdout.trim()), (0, "3"), "{out:?}");
    d.berth(&["rm", "-f", "pipe"]).ok();
    assert!(d.shim_pids().is_empty());
}

berth_testing::on_both_shims!(
    exec_and_run_get_a_real_terminal,
    window_size_follows_resizes,
    interactive_input_reaches_the_process,
    stdin_without_a_terminal
);
