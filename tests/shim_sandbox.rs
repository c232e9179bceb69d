//! berth-shim as a sandbox shim (`--sandbox`), driven directly over ttrpc
//! (no berthd): one shim holds several containers, each created, started,
//! exec'd into, waited for and deleted on its own; a runtime call that
//! hangs (a createRuntime hook) stalls no other request; Shutdown ends the
//! shim only once it holds nothing. A lone shim still exits after the
//! Delete of its container. Run as root.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_testing::{bin_path, busybox_rootfs, sweep_cgroup};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::{self, asynchronous::Client, context};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long a request may take while another one hangs.
const PROMPT: Duration = Duration::from_secs(2);
static SHIMS: AtomicUsize = AtomicUsize::new(0);

/// One berth-shim with its directory and cgroup; the shim is killed by its
/// pid and the cgroup and the files are removed when dropped.
struct Fixture {
    dir: TempDir,
    rootfs: PathBuf,
    socket: PathBuf,
    cgroup: String,
    /// Marks the hook processes this fixture's bundles start.
    marker: String,
    shim: Child,
}

impl Fixture {
    fn start(id: &str, sandbox: bool) -> Fixture {
        let dir = tempfile::Builder::new().prefix("sbx").tempdir().expect("temp dir");
        let rootfs = busybox_rootfs(dir.path());
        let socket = dir.path().join("shim.sock");
        let n = SHIMS.fetch_add(1, Ordering::SeqCst);
        let cgroup = format!("/berth-sbx-test-{}-{n}", std::process::id());
        let marker = format!("BERTH_SBX_HOOK={}-{n}", std::process::id());
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind shim socket");
        let fd = listener.as_raw_fd();
        let log = std::fs::File::create(dir.path().join("shim.log")).expect("shim log");
        let mut cmd = Command::new(bin_path("berth-shim"));
        cmd.args(["--namespace", "sbx", "--id", id, "--runtime", "embedded", "--runtime-root"])
            .arg(dir.path().join("runtime"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if sandbox {
            cmd.arg("--sandbox");
        }
        // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if fd == 3 {
                    // dup2 onto itself would keep close-on-exec.
                    if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if nix::libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let shim = cmd.spawn().expect("spawn berth-shim");
        drop(listener);
        Fixture { dir, rootfs, socket, cgroup, marker, shim }
    }

    async fn client(&self) -> TaskClient {
        let client = Client::connect(&format!("unix://{}", self.socket.display())).await.expect("connect to the shim");
        TaskClient::new(client)
    }

    /// A bundle for container `id` running `args`, with `hooks` (JSON).
    fn bundle(&self, id: &str, args: &[&str], hooks: serde_json::Value) -> String {
        let bundle = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(&bundle).expect("bundle dir");
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin"],
                "cwd": "/",
            },
            "root": {"path": self.rootfs, "readonly": true},
            "hostname": id,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
            ],
            "hooks": hooks,
            "linux": {
                "cgroupsPath": format!("{}/{id}", self.cgroup),
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            },
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).expect("write config.json");
        bundle.to_string_lossy().into_owned()
    }

    /// Hook processes of this fixture still alive.
    fn hooks(&self) -> Vec<Pid> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|v| v == self.marker.as_bytes()) {
                found.push(Pid::from_raw(pid));
            }
        }
        found
    }

    /// Waits until a hook of this fixture runs (a create is in flight).
    async fn await_hook(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.hooks().is_empty() {
            assert!(Instant::now() < deadline, "the hook never ran\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn shim_gone_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if matches!(self.shim.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shim.log")).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.shim.kill();
        let _ = self.shim.wait();
        for pid in self.hooks() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        sweep_cgroup(&self.cgroup);
    }
}

fn ctx() -> context::Context {
    context::with_timeout(0)
}

fn code(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not a status: {other:?}"),
    }
}

fn message(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

async fn create(c: &TaskClient, id: &str, bundle: &str) -> ttrpc::Result<u32> {
    let req = api::CreateTaskRequest { id: id.to_string(), bundle: bundle.to_string(), ..Default::default() };
    c.create(ctx(), &req).await.map(|r| r.pid)
}

async fn start(c: &TaskClient, id: &str, exec_id: &str) -> u32 {
    let req = api::StartRequest { id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
    c.start(ctx(), &req).await.unwrap_or_else(|e| panic!("start {id} {exec_id}: {e:?}")).pid
}

async fn wait(c: &TaskClient, id: &str, exec_id: &str) -> u32 {
    let req = api::WaitRequest { id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
    c.wait(ctx(), &req).await.unwrap_or_else(|e| panic!("wait {id} {exec_id}: {e:?}")).exit_status
}

async fn state(c: &TaskClient, id: &str) -> ttrpc::Result<api::StateResponse> {
    c.state(ctx(), &api::StateRequest { id: id.to_string(), ..Default::default() }).await
}

async fn signal(c: &TaskClient, id: &str, signal: i32) {
    let req = api::KillRequest { id: id.to_string(), signal: signal as u32, ..Default::default() };
    c.kill(ctx(), &req).await.unwrap_or_else(|e| panic!("kill {id}: {e:?}"));
}

async fn delete(c: &TaskClient, id: &str) -> ttrpc::Result<api::DeleteResponse> {
    c.delete(ctx(), &api::DeleteRequest { id: id.to_string(), ..Default::default() }).await
}

async fn shutdown(c: &TaskClient, id: &str) -> ttrpc::Result<()> {
    c.shutdown(ctx(), &api::ShutdownRequest { id: id.to_string(), ..Default::default() }).await.map(drop)
}

/// Runs `sh -c script` as exec `exec_id` in container `id`; its exit code.
async fn exec(c: &TaskClient, id: &str, exec_id: &str, script: &str) -> u32 {
    let process = serde_json::json!({
        "args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
    });
    let mut spec = Any::new();
    spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".to_string();
    spec.value = process.to_string().into_bytes();
    let req = api::ExecProcessRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        spec: Some(spec).into(),
        ..Default::default()
    };
    c.exec(ctx(), &req).await.unwrap_or_else(|e| panic!("exec {id} {exec_id}: {e:?}"));
    start(c, id, exec_id).await;
    let code = wait(c, id, exec_id).await;
    let req = api::DeleteRequest { id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
    c.delete(ctx(), &req).await.unwrap_or_else(|e| panic!("delete exec {id} {exec_id}: {e:?}"));
    code
}

/// `fut`'s output, which must come within [`PROMPT`].
async fn promptly<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(PROMPT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} stalled behind a's create"),
    }
}

/// Whether `pid` runs (is not gone, nor a zombie).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

fn running(s: &api::StateResponse) -> bool {
    s.status.enum_value() == Ok(api::Status::RUNNING)
}

/// A shell that exits with `code` on SIGTERM (pid 1 ignores signals it
/// has no handler for).
fn until_term(code: u32) -> Vec<String> {
    let script = format!("trap 'exit {code}' TERM; while :; do sleep 0.05; done");
    vec!["sh".into(), "-c".into(), script]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

#[test]
fn a_sandbox_shim_holds_several_containers_each_on_its_own() {
    let mut f = Fixture::start("sbx1", true);
    let shim_pid = f.shim.id();
    rt().block_on(async {
        let c = f.client().await;
        let ids = ["c1", "c2", "c3"];
        let mut pids = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let args = until_term(10 + n as u32);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let bundle = f.bundle(id, &args, serde_json::json!({}));
            let pid = create(&c, id, &bundle).await.unwrap_or_else(|e| panic!("create {id}: {e:?}\n{}", f.log()));
            let again = create(&c, id, &bundle).await.expect_err("a second create of one id");
            assert_eq!(code(&again), ttrpc::Code::ALREADY_EXISTS, "{again:?}");
            assert_eq!(start(&c, id, "").await, pid);
            pids.push(pid);
        }
        assert_eq!(pids.iter().collect::<std::collections::HashSet<_>>().len(), 3, "{pids:?}");
        // Requests naming a container the shim does not hold.
        let e = state(&c, "nope").await.expect_err("unknown container");
        assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
        assert!(message(&e).contains("not served by this shim"), "{e:?}");
        // Connect names the sandbox or a held container.
        let conn = |id: &str| api::ConnectRequest { id: id.to_string(), ..Default::default() };
        let sandbox = c.connect(ctx(), &conn("sbx1")).await.expect("connect to the sandbox");
        assert_eq!((sandbox.shim_pid, sandbox.task_pid), (shim_pid, 0));
        assert_eq!(c.connect(ctx(), &conn("c2")).await.expect("connect to c2").task_pid, pids[1]);
        assert_eq!(code(&c.connect(ctx(), &conn("nope")).await.expect_err("unknown")), ttrpc::Code::NOT_FOUND);

        // An exec in each, with its own exit code.
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(exec(&c, id, "e", &format!("exit {}", 20 + n)).await, 20 + n as u32);
        }

        // c3 exits; c1 and c2 run on.
        signal(&c, "c3", nix::libc::SIGTERM).await;
        assert_eq!(wait(&c, "c3", "").await, 12);
        for id in ["c1", "c2"] {
            assert!(running(&state(&c, id).await.expect("state")), "{id} still runs");
        }
        assert_eq!(exec(&c, "c1", "after", "exit 4").await, 4);
        let e = shutdown(&c, "sbx1").await.expect_err("shutdown while containers are held");
        assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
        assert!(message(&e).contains('3'), "names how many: {e:?}");

        // Each deleted on its own; the shim lives on after the last.
        let deleted = delete(&c, "c3").await.expect("delete c3");
        assert_eq!((deleted.pid, deleted.exit_status), (pids[2], 12));
        let e = delete(&c, "c1").await.expect_err("c1 still runs");
        assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
        for (n, id) in ["c1", "c2"].iter().enumerate() {
            signal(&c, id, nix::libc::SIGTERM).await;
            assert_eq!(wait(&c, id, "").await, 10 + n as u32);
            assert_eq!(delete(&c, id).await.expect("delete").exit_status, 10 + n as u32);
        }
        assert_eq!(code(&state(&c, "c1").await.expect_err("deleted")), ttrpc::Code::NOT_FOUND);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(alive(shim_pid), "a sandbox shim outlives its last container");
        // A deleted id can be created again.
        let bundle = f.bundle("c1", &["true"], serde_json::json!({}));
        create(&c, "c1", &bundle).await.expect("create c1 again");
        assert_eq!(code(&shutdown(&c, "sbx1").await.expect_err("c1 held")), ttrpc::Code::FAILED_PRECONDITION);
        delete(&c, "c1").await.expect("delete a created container");
        assert_eq!(code(&shutdown(&c, "c1").await.expect_err("not the sandbox")), ttrpc::Code::NOT_FOUND);
        shutdown(&c, "sbx1").await.expect("shutdown");
    });
    assert!(f.shim_gone_within(Duration::from_secs(5)), "shutdown ends the shim\n{}", f.log());
    assert!(!f.socket.exists() || std::os::unix::net::UnixStream::connect(&f.socket).is_err());
}

#[test]
fn a_hung_runtime_call_does_not_stall_the_other_containers() {
    assert!(Path::new("/bin/sleep").exists(), "the hook needs /bin/sleep on the host");
    let mut f = Fixture::start("sbx2", true);
    rt().block_on(async {
        let c = f.client().await;
        let args = until_term(9);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let b = f.bundle("b", &args, serde_json::json!({}));
        let b_pid = create(&c, "b", &b).await.unwrap_or_else(|e| panic!("create b: {e:?}\n{}", f.log()));
        start(&c, "b", "").await;

        let hook = serde_json::json!({
            "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "env": [f.marker]}],
        });
        let a = f.bundle("a", &["true"], hook);
        let a_client = c.clone();
        let a_create = tokio::spawn(async move { create(&a_client, "a", &a).await });
        // The hook runs: a's create is in flight.
        f.await_hook().await;

        let s = promptly("state", state(&c, "b")).await;
        assert!(running(&s.expect("state of b")));
        let req = api::PidsRequest { id: "b".into(), ..Default::default() };
        let pids = promptly("pids", c.pids(ctx(), &req)).await;
        let pids: Vec<u32> = pids.expect("pids of b").processes.iter().map(|p| p.pid).collect();
        assert!(pids.contains(&b_pid), "{pids:?} lacks {b_pid}");
        let again = promptly("create", create(&c, "a", "/nonexistent")).await;
        assert_eq!(code(&again.expect_err("a is being created")), ttrpc::Code::ALREADY_EXISTS);
        promptly("kill", signal(&c, "b", nix::libc::SIGTERM)).await;
        assert_eq!(promptly("wait", wait(&c, "b", "")).await, 9);
        let deleted = promptly("delete", delete(&c, "b")).await;
        assert_eq!(deleted.expect("delete b").exit_status, 9);
        assert!(!a_create.is_finished(), "a's create still hangs in its hook");
        let e = shutdown(&c, "sbx2").await.expect_err("a is being created");
        assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);

        // Killing the hook ends a's create (a failed hook fails it).
        for pid in f.hooks() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let created = tokio::time::timeout(Duration::from_secs(10), a_create).await.expect("a's create ended");
        if created.expect("create task").is_ok() {
            delete(&c, "a").await.expect("delete a");
        }
        shutdown(&c, "sbx2").await.expect("shutdown");
    });
    assert!(f.shim_gone_within(Duration::from_secs(5)), "shutdown ends the shim\n{}", f.log());
}

/// A Create its caller gave up on (deleted while in flight, as berthd's
/// rollback does after a deadline) is undone when the runtime returns: the
/// shim never holds it, so the sandbox can still be shut down.
#[test]
fn an_abandoned_create_is_undone_when_it_returns() {
    let mut f = Fixture::start("sbx4", true);
    rt().block_on(async {
        let c = f.client().await;
        let hook = serde_json::json!({
            "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "1"], "env": [f.marker]}],
        });
        let a = f.bundle("a", &["sleep", "1000"], hook);
        let a_client = c.clone();
        let a_create = tokio::spawn(async move { create(&a_client, "a", &a).await });
        f.await_hook().await;
        let e = promptly("delete", delete(&c, "a")).await.expect_err("a is being created");
        assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION, "{}", message(&e));
        let created = tokio::time::timeout(Duration::from_secs(10), a_create).await.expect("a's create ended");
        let e = created.expect("create task").expect_err("an abandoned create fails");
        assert!(message(&e).contains("abandoned"), "{}", message(&e));
        let e = state(&c, "a").await.expect_err("a is not held");
        assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
        shutdown(&c, "sbx4").await.expect("nothing is held");
    });
    assert!(f.shim_gone_within(Duration::from_secs(5)), "shutdown ends the shim\n{}", f.log());
}

#[test]
fn a_lone_shim_exits_after_the_delete_of_its_container() {
    let mut f = Fixture::start("lone", false);
    rt().block_on(async {
        let c = f.client().await;
        let other = f.bundle("other", &["true"], serde_json::json!({}));
        assert_eq!(code(&create(&c, "other", &other).await.expect_err("not its id")), ttrpc::Code::NOT_FOUND);
        let bundle = f.bundle("lone", &["sh", "-c", "exit 4"], serde_json::json!({}));
        create(&c, "lone", &bundle).await.unwrap_or_else(|e| panic!("create: {e:?}\n{}", f.log()));
        start(&c, "lone", "").await;
        assert_eq!(wait(&c, "lone", "").await, 4);
        assert_eq!(delete(&c, "lone").await.expect("delete").exit_status, 4);
    });
    assert!(f.shim_gone_within(Duration::from_secs(5)), "the lone shim exits after its delete\n{}", f.log());
}
