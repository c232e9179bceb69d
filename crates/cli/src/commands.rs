//! One function per CLI verb; each translates arguments into API calls.

use std::io::Write;

use berth_api::v1 as pb;
use nix::sys::signal::Signal;
use tokio_stream::StreamExt;

use crate::CreateArgs;
use crate::client::{Client, Failure};
use crate::limits::LimitArgs;
use crate::output;
use crate::terminal;

/// Exit code of `run` when berth itself (not the container) failed.
const RUN_FAILED: i32 = 125;

pub(crate) fn cref(c: &Client, id: &str) -> pb::ContainerRef {
    pb::ContainerRef { namespace: c.namespace.clone(), id: id.to_string() }
}

fn random_id() -> String {
    let mut buf = [0u8; 6];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    if ok.is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        buf.copy_from_slice(&(t.as_nanos() as u64 ^ std::process::id() as u64).to_le_bytes()[..6]);
    }
    hex::encode(buf)
}

pub fn parse_signal(s: &str) -> Result<u32, Failure> {
    berth_model::signal_number(s).ok_or_else(|| Failure::new(format!("unknown signal {s:?}")))
}

/// `--security-opt` values: the seccomp choice (a profile file is read
/// here, on the client's side) and no-new-privileges.
fn security_opts(opts: &[String]) -> Result<(String, bool), Failure> {
    let (mut seccomp, mut nnp) = (String::new(), false);
    for o in opts {
        let (key, value) = o.split_once(['=', ':']).unwrap_or((o.as_str(), ""));
        match (key, value) {
            ("seccomp", "unconfined") => seccomp = "unconfined".into(),
            ("seccomp", "") => return Err(Failure::new("--security-opt seccomp needs =unconfined or =PROFILE.json")),
            ("seccomp", file) => {
                seccomp =
                    std::fs::read_to_string(file).map_err(|e| Failure::new(format!("seccomp profile {file}: {e}")))?;
            }
            ("no-new-privileges", "" | "true") => nnp = true,
            ("no-new-privileges", "false") => nnp = false,
            _ => return Err(Failure::new(format!("unknown --security-opt {o:?}"))),
        }
    }
    Ok((seccomp, nnp))
}

async fn do_create(c: &mut Client, a: CreateArgs, start: bool, auto_remove: bool) -> Result<pb::Container, Failure> {
    let size = a.tty.then(terminal::window_size).flatten().unwrap_or((0, 0));
    // An existing directory is a rootfs or bundle; anything else an image.
    let (path, image) = if a.rootfs.is_dir() {
        let path = std::path::absolute(&a.rootfs)
            .map_err(|e| Failure::new(format!("bad path {}: {e}", a.rootfs.display())))?;
        (path.to_string_lossy().into_owned(), String::new())
    } else {
        let reference = a.rootfs.to_string_lossy().into_owned();
        (String::new(), crate::images::ensure(c, &reference, a.pull, a.insecure).await?)
    };
    let (seccomp, no_new_privileges) = security_opts(&a.security_opt)?;
    let labels = parse_labels(a.labels)?;
    let req = pb::CreateRequest {
        namespace: c.namespace.clone(),
        id: a.name.unwrap_or_else(random_id),
        path,
        args: a.cmd,
        env: a.env,
        cwd: a.workdir.unwrap_or_default(),
        runtime: if a.vm { berth_model::VM_RUNTIME.to_string() } else { a.runtime.unwrap_or_default() },
        labels,
        start,
        resources: Some(a.limits.to_pb()?),
        tty: a.tty,
        tty_width: size.0,
        tty_height: size.1,
        stdin: a.interactive,
        restart_policy: a.restart,
        privileged: a.privileged,
        cap_add: a.cap_add,
        cap_drop: a.cap_drop,
        devices: a.devices,
        seccomp,
        no_new_privileges,
        auto_remove,
        image,
        entrypoint: a.entrypoint,
        user: a.user.unwrap_or_default(),
        volumes: a.volumes,
        tmpfs: a.tmpfs,
        read_only: a.read_only,
        hostname: a.hostname.unwrap_or_default(),
        pid: a.pid.unwrap_or_default(),
        ipc: a.ipc.unwrap_or_default(),
        oom_score_adj: a.oom_score_adj,
        cgroup_parent: a.cgroup_parent.unwrap_or_default(),
        network: a.network.unwrap_or_default(),
        publish: a.publish,
        dns: a.dns,
        dns_search: a.dns_search,
        dns_options: a.dns_options,
        add_hosts: a.add_hosts,
        sandbox: a.sandbox.unwrap_or_default(),
        groups: a.group_add,
        sysctls: parse_pairs("sysctl", a.sysctls)?,
        log_path: match a.log_path {
            Some(p) => std::path::absolute(&p)
                .map_err(|e| Failure::new(format!("bad log path {}: {e}", p.display())))?
                .to_string_lossy()
                .into_owned(),
            None => String::new(),
        },
        log_max_size: a
            .log_max_size
            .as_deref()
            .map(berth_model::parse_size)
            .transpose()
            .map_err(|e| Failure::new(format!("--log-max-size: {e}")))?,
        log_max_files: a.log_max_files,
        // Kubernetes' settings: CRI sets them, the CLI has no flags.
        unified: Default::default(),
        hugepage_limits: Default::default(),
        masked_paths: Vec::new(),
        readonly_paths: Vec::new(),
        apparmor_profile: String::new(),
    };
    Ok(c.containers.create(req).await?.into_inner())
}

/// `KEY=VALUE` labels.
pub fn parse_labels(labels: Vec<String>) -> Result<std::collections::HashMap<String, String>, Failure> {
    parse_pairs("label", labels)
}

/// `KEY=VALUE` pairs of a repeated flag (`what` names it in errors).
fn parse_pairs(what: &str, pairs: Vec<String>) -> Result<std::collections::HashMap<String, String>, Failure> {
    let mut out = std::collections::HashMap::new();
    for l in pairs {
        let (k, v) = l.split_once('=').ok_or_else(|| Failure::new(format!("{what} {l:?} is not KEY=VALUE")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub async fn create(c: &mut Client, a: CreateArgs) -> Result<i32, Failure> {
    let ctr = do_create(c, a, false, false).await?;
    println!("{}", ctr.id);
    Ok(0)
}

pub async fn start(c: &mut Client, ids: Vec<String>) -> Result<i32, Failure> {
    for id in ids {
        c.containers.start(cref(c, &id)).await?;
        println!("{id}");
    }
    Ok(0)
}

/// `run`: create, then start. With `--rm` berthd removes the container
/// once it has exited, whatever happens to this client. Attached, the
/// output stream (or terminal) is opened before the start, so berthd's
/// removal waits for it to drain, and signals are forwarded meanwhile.
pub async fn run(c: &mut Client, a: CreateArgs, rm: bool, detach: bool) -> Result<i32, Failure> {
    if rm && a.restart != "no" {
        return Err(Failure { exit_code: RUN_FAILED, ..Failure::new("--rm cannot be combined with a restart policy") });
    }
    let (tty, interactive) = (a.tty, a.interactive);
    let id = a.name.clone().unwrap_or_else(random_id);
    let a = CreateArgs { name: Some(id.clone()), ..a };
    // A failed create leaves nothing (and never touches an existing
    // container of that name): there is nothing to clean up here.
    let failed = |f: Failure| Failure { exit_code: RUN_FAILED, ..f };
    do_create(c, a, detach, rm).await.map_err(failed)?;
    if detach {
        println!("{id}");
        return Ok(0);
    }
    let attached = attend(c, &id, "", tty, interactive, true).await;
    if rm && matches!(attached, Err(Failure { exit_code: RUN_FAILED, .. })) {
        // We created it and it never started: remove it.
        let _ = c.containers.delete(pb::DeleteRequest { namespace: c.namespace.clone(), id, force: true }).await;
    }
    Ok(attached?.code as i32)
}

/// Stays with a process (init when `exec_id` is empty) until it exits:
/// its terminal, or its output with signals forwarded; our stdin with
/// `interactive`. With `start`, the container is started once its output
/// is open (a failed start is a `RUN_FAILED`). Returns its exit.
async fn attend(
    c: &mut Client,
    id: &str,
    exec_id: &str,
    tty: bool,
    interactive: bool,
    start: bool,
) -> Result<pb::ExitStatus, Failure> {
    // Until the start, a failure is berth's own (`run` exits 125).
    let before_start = |f: Failure| if start { Failure { exit_code: RUN_FAILED, ..f } } else { f };
    let terminal = match tty {
        true => Some(terminal::open(c, id, exec_id, interactive).await.map_err(before_start)?),
        false => None,
    };
    let printer = if tty {
        None
    } else {
        let logs = pb::LogsRequest {
            namespace: c.namespace.clone(),
            id: id.to_string(),
            follow: true,
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let stream = c.containers.logs(logs).await.map_err(|s| before_start(s.into()))?;
        Some(tokio::spawn(copy_logs(stream.into_inner())))
    };
    let pump = match interactive && !tty {
        true => Some(terminal::pump_stdin(c, id, exec_id).await.map_err(before_start)?),
        false => None,
    };
    if start {
        c.containers.start(cref(c, id)).await.map_err(|s| before_start(s.into()))?;
    }
    let target = pb::KillRequest {
        namespace: c.namespace.clone(),
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        signal: 0,
        all: false,
    };
    let forwarder = tokio::spawn(forward_signals(c.containers.clone(), target));
    if let Some(output) = terminal {
        terminal::attach(c, id, exec_id, output).await?;
    }
    let exit = wait_process(c, id, exec_id).await;
    forwarder.abort();
    if let Some(p) = pump {
        p.abort();
    }
    if let Some(p) = printer {
        let _ = p.await;
    }
    exit
}

/// Waits for init (`exec_id` empty) or an exec to exit.
async fn wait_process(c: &mut Client, id: &str, exec_id: &str) -> Result<pb::ExitStatus, Failure> {
    let (namespace, id) = (c.namespace.clone(), id.to_string());
    let exit = if exec_id.is_empty() {
        c.containers.wait(pb::ContainerRef { namespace, id }).await?
    } else {
        c.containers.exec_wait(pb::ExecRef { namespace, id, exec_id: exec_id.to_string() }).await?
    };
    Ok(exit.into_inner())
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT to `berth run` / `berth exec` go to
/// the container's process (`target` names it), like docker's sig-proxy.
async fn forward_signals(
    mut api: berth_api::v1::containers_client::ContainersClient<tonic::transport::Channel>,
    target: pb::KillRequest,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup), Ok(mut quit)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::quit()),
    ) else {
        return;
    };
    loop {
        let sig = tokio::select! {
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
            _ = hup.recv() => Signal::SIGHUP,
            _ = quit.recv() => Signal::SIGQUIT,
        };
        let req = pb::KillRequest { signal: sig as u32, ..target.clone() };
        let _ = api.kill(req).await;
    }
}

pub(crate) async fn copy_logs(mut logs: tonic::Streaming<pb::LogChunk>) -> Result<(), Failure> {
    while let Some(chunk) = logs.next().await {
        let chunk = chunk?;
        let r = if chunk.stream == pb::Stream::Stderr as i32 {
            let mut e = std::io::stderr().lock();
            e.write_all(&chunk.data).and_then(|_| e.flush())
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(&chunk.data).and_then(|_| o.flush())
        };
        if r.is_err() {
            break;
        }
    }
    Ok(())
}

/// Every container, following List's pages (each ends before the gRPC
/// message limit) until the last.
async fn list_all(c: &mut Client, all_namespaces: bool) -> Result<Vec<pb::Container>, Failure> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListRequest { namespace: c.namespace.clone(), all_namespaces, page_token, page_size: 0 };
        let page = c.containers.list(req.clone()).await?.into_inner();
        page_token = crate::client::next_page(&req.page_token, page.next_page_token, page.containers.len())?;
        out.extend(page.containers);
        if page_token.is_empty() {
            return Ok(out);
        }
    }
}

pub async fn ps(c: &mut Client, all: bool, all_namespaces: bool, json: bool) -> Result<i32, Failure> {
    let mut cs = list_all(c, all_namespaces).await?;
    if !all {
        cs.retain(|x| x.state != "stopped");
    }
    cs.sort_by(|a, b| (&a.namespace, a.created_at_ns, &a.id).cmp(&(&b.namespace, b.created_at_ns, &b.id)));
    if json {
        let v: Vec<_> = cs.iter().map(output::container_json).collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        print!("{}", output::table(&cs, all_namespaces));
    }
    Ok(0)
}

pub async fn inspect(c: &mut Client, id: String, json: bool) -> Result<i32, Failure> {
    let ctr = c.containers.get(cref(c, &id)).await?.into_inner();
    if json {
        let text =
            serde_json::to_string_pretty(&output::container_json(&ctr)).map_err(|e| Failure::new(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", output::inspect_text(&ctr));
    }
    Ok(0)
}

pub async fn kill(
    c: &mut Client,
    id: String,
    exec_id: Option<String>,
    signal: &str,
    all: bool,
) -> Result<i32, Failure> {
    let signal = parse_signal(signal)?;
    let exec_id = exec_id.unwrap_or_default();
    c.containers.kill(pb::KillRequest { namespace: c.namespace.clone(), id, signal, all, exec_id }).await?;
    Ok(0)
}

pub struct ExecArgs {
    pub exec_id: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub interactive: bool,
    pub container: String,
    pub cmd: Vec<String>,
}

fn parse_user(u: &str) -> Result<(u32, Option<u32>), Failure> {
    let bad = || Failure::new(format!("user {u:?} is not UID[:GID] (numeric)"));
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let uid = uid.parse().map_err(|_| bad())?;
    let gid = gid.map(|g| g.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

pub async fn exec(c: &mut Client, a: ExecArgs) -> Result<i32, Failure> {
    let user = a.user.as_deref().map(parse_user).transpose()?;
    let size = a.tty.then(terminal::window_size).flatten().unwrap_or((0, 0));
    let exec_id = a.exec_id.unwrap_or_else(random_id);
    let req = pb::ExecRequest {
        namespace: c.namespace.clone(),
        id: a.container.clone(),
        exec_id: exec_id.clone(),
        args: a.cmd,
        env: a.env,
        cwd: a.workdir.unwrap_or_default(),
        uid: user.map(|u| u.0),
        gid: user.and_then(|u| u.1),
        tty: a.tty,
        tty_width: size.0,
        tty_height: size.1,
        stdin: a.interactive,
    };
    c.containers.exec(req).await?;
    let exit = attend(c, &a.container, &exec_id, a.tty, a.interactive, false).await?;
    let r = pb::ExecRef { namespace: c.namespace.clone(), id: a.container, exec_id };
    c.containers.exec_delete(r).await?;
    Ok(exit.code as i32)
}

pub async fn stop(c: &mut Client, ids: Vec<String>, time: u32) -> Result<i32, Failure> {
    if time == 0 {
        return Err(Failure::new("stop timeout must be at least 1 second"));
    }
    for id in ids {
        let req = pb::StopRequest { namespace: c.namespace.clone(), id: id.clone(), timeout_seconds: Some(time) };
        c.containers.stop(req).await?;
        println!("{id}");
    }
    Ok(0)
}

pub async fn wait(c: &mut Client, id: String) -> Result<i32, Failure> {
    let exit = c.containers.wait(cref(c, &id)).await?.into_inner();
    println!("{}", exit.code);
    Ok(exit.code as i32)
}

/// Deletes asked of berthd at once by one `rm`: enough to overlap the
/// shims' work, few enough not to flood the daemon.
const RM_IN_FLIGHT: usize = 16;

/// Removes the containers, up to [`RM_IN_FLIGHT`] at a time; each id (or
/// its one-line failure) is printed in the order given.
pub async fn rm(c: &mut Client, ids: Vec<String>, force: bool) -> Result<i32, Failure> {
    use futures_util::stream;
    let (client, namespace) = (c.containers.clone(), c.namespace.clone());
    let deletes = futures_util::StreamExt::map(stream::iter(ids), |id| {
        let (mut client, namespace) = (client.clone(), namespace.clone());
        async move {
            let result = client.delete(pb::DeleteRequest { namespace, id: id.clone(), force }).await;
            (id, result)
        }
    });
    let mut results = futures_util::StreamExt::buffered(deletes, RM_IN_FLIGHT);
    let mut failed = false;
    while let Some((id, result)) = futures_util::StreamExt::next(&mut results).await {
        match result {
            Ok(_) => println!("{id}"),
            Err(s) => {
                eprintln!("berth: {}", Failure::from(s).message);
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// Pauses (or resumes) each container in turn.
pub async fn pause(c: &mut Client, ids: Vec<String>, pause: bool) -> Result<i32, Failure> {
    for id in ids {
        let r = cref(c, &id);
        if pause {
            c.containers.pause(r).await?;
        } else {
            c.containers.resume(r).await?;
        }
        println!("{id}");
    }
    Ok(0)
}

pub async fn update(c: &mut Client, id: String, limits: &LimitArgs) -> Result<i32, Failure> {
    let req = pb::UpdateRequest { namespace: c.namespace.clone(), id: id.clone(), resources: Some(limits.to_pb()?) };
    c.containers.update(req).await?;
    println!("{id}");
    Ok(0)
}

pub async fn top(c: &mut Client, id: String, json: bool) -> Result<i32, Failure> {
    let procs = c.containers.top(cref(c, &id)).await?.into_inner().processes;
    if json {
        let v: Vec<_> = procs
            .iter()
            .map(|p| serde_json::json!({"pid": p.pid, "exec_id": p.exec_id, "command": p.command}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        print!("{}", output::top_table(&procs));
    }
    Ok(0)
}

pub struct EventsArgs {
    pub json: bool,
    pub types: Vec<String>,
    pub id: Option<String>,
    pub since: Option<u64>,
    pub no_follow: bool,
}

pub async fn events(c: &mut Client, a: EventsArgs) -> Result<i32, Failure> {
    let json = a.json;
    let req = pb::SubscribeRequest {
        namespace: c.namespace.clone(),
        types: a.types,
        id: a.id.unwrap_or_default(),
        since: a.since,
        no_follow: a.no_follow,
    };
    let mut stream = c.events.subscribe(req).await?.into_inner();
    let mut out = std::io::stdout();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        let line = if json { output::event_json(&ev).to_string() } else { output::event_line(&ev) };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("9").ok(), Some(9));
        assert_eq!(parse_signal("KILL").ok(), Some(9));
        assert_eq!(parse_signal("sigterm").ok(), Some(15));
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 12);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
