//! How containers and events look to people (tables) and scripts (JSON).

use std::time::{SystemTime, UNIX_EPOCH};

use berth_api::v1 as pb;
use serde_json::{Value, json};

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub fn age(ns: u64) -> String {
    let secs = now_ns().saturating_sub(ns) / 1_000_000_000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn exit_json(e: &Option<pb::ExitStatus>) -> Value {
    match e {
        Some(e) => json!({"code": e.code, "exited_at_ns": e.exited_at_ns}),
        None => Value::Null,
    }
}

pub fn container_json(c: &pb::Container) -> Value {
    json!({
        "namespace": c.namespace,
        "id": c.id,
        "state": c.state,
        "pid": c.pid,
        "runtime": c.runtime,
        "bundle": c.bundle,
        "rootfs": c.rootfs,
        "command": c.command,
        "created_at_ns": c.created_at_ns,
        "exit": exit_json(&c.exit),
        "labels": c.labels,
        "shim_pid": c.shim_pid,
        "cgroup": c.cgroup,
        "oom_killed": c.oom_killed,
        "restart_policy": c.restart_policy,
        "restart_count": c.restart_count,
        "stopped_by_user": c.stopped_by_user,
    })
}

pub fn event_json(e: &pb::Event) -> Value {
    json!({
        "seq": e.seq,
        "type": e.r#type,
        "namespace": e.namespace,
        "id": e.id,
        "timestamp_ns": e.timestamp_ns,
        "pid": e.pid,
        "exit": exit_json(&e.exit),
        "exec_id": e.exec_id,
    })
}

pub fn event_line(e: &pb::Event) -> String {
    let exit = e.exit.as_ref().map(|x| format!(" exit={}", x.code)).unwrap_or_default();
    let exec = if e.exec_id.is_empty() { String::new() } else { format!(" exec={}", e.exec_id) };
    format!("{:>6} {:<12} {}/{}{exec} pid={}{exit}", e.seq, e.r#type, e.namespace, e.id, e.pid)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n - 1).collect::<String>()) }
}

pub fn top_table(ps: &[pb::Process]) -> String {
    let mut rows = vec![vec!["PID".to_string(), "EXEC".into(), "COMMAND".into()]];
    for p in ps {
        let exec = if p.exec_id.is_empty() { "-".to_string() } else { p.exec_id.clone() };
        rows.push(vec![p.pid.to_string(), exec, p.command.join(" ")]);
    }
    render(rows)
}

pub fn table(cs: &[pb::Container], all_ns: bool) -> String {
    let mut rows = vec![vec![
        "ID".to_string(),
        "STATE".into(),
        "PID".into(),
        "EXIT".into(),
        "RUNTIME".into(),
        "CREATED".into(),
        "COMMAND".into(),
    ]];
    if all_ns {
        rows[0].insert(0, "NAMESPACE".into());
    }
    for c in cs {
        let mut row = vec![
            c.id.clone(),
            c.state.clone(),
            if c.pid == 0 { "-".into() } else { c.pid.to_string() },
            c.exit.as_ref().map(|e| e.code.to_string()).unwrap_or_else(|| "-".into()),
            c.runtime.clone(),
            age(c.created_at_ns),
            truncate(&c.command.join(" "), 40),
        ];
        if all_ns {
            row.insert(0, c.namespace.clone());
        }
        rows.push(row);
    }
    render(rows)
}

/// Aligns rows into columns; the first row is the header.
fn render(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn inspect_text(c: &pb::Container) -> String {
    let exit = c.exit.as_ref().map(|e| format!("{} ({})", e.code, age(e.exited_at_ns))).unwrap_or_else(|| "-".into());
    let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "ID:         {}\nNamespace:  {}\nState:      {}\nPid:        {}\nExit:       {exit}\nOOMKilled:  {}\nRestart:    {} (restarted {} times)\nRuntime:    {}\nCommand:    {}\nRootfs:     {}\nBundle:     {}\nCgroup:     {}\nShim pid:   {}\nCreated:    {}\nLabels:     {}\n",
        c.id,
        c.namespace,
        c.state,
        c.pid,
        c.oom_killed,
        c.restart_policy,
        c.restart_count,
        c.runtime,
        c.command.join(" "),
        c.rootfs,
        c.bundle,
        c.cgroup,
        c.shim_pid,
        age(c.created_at_ns),
        labels.join(", "),
    )
}
