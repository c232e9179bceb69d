//! How containers and events look to people (tables) and scripts (JSON).
//! Text for people never carries control characters from the data: labels,
//! commands and paths are the caller's, and a raw ESC would drive the
//! reader's terminal, so [`escape`] shows them as `\x1b`, `\n`, `\u{9b}`.
//! JSON carries every string exactly.

use std::borrow::Cow;

use berth_api::v1 as pb;
use serde_json::{Value, json};

use berth_model::now_ns;

pub fn age(ns: u64) -> String {
    let secs = now_ns().saturating_sub(ns) / 1_000_000_000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// Shows the control characters of `s` — C0 (ESC among them), DEL and
/// C1 — as escapes, so printing it cannot drive a terminal. Everything
/// else, backslashes included, is left as it is.
pub fn escape(s: &str) -> Cow<'_, str> {
    let control = |c: char| c.is_control();
    if !s.contains(control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
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
        "image": c.image,
        "volumes": c.volumes,
        "network": c.network.as_ref().map(attachment_json),
        "sandbox": c.sandbox,
        "restored_from": c.restored_from,
        "started_at_ns": c.started_at_ns,
        "log_path": c.log_path,
        "log_max_size": c.log_max_size,
        "log_max_files": c.log_max_files,
        "vm": c.vm.as_ref().map(vm_json),
    })
}

pub fn vm_json(v: &pb::VmInfo) -> Value {
    json!({ "accel": v.accel, "cpus": v.cpus, "memory_mib": v.memory_mib })
}

pub fn attachment_json(n: &pb::NetworkAttachment) -> Value {
    json!({
        "mode": n.mode,
        "netns": n.netns,
        "interface": n.interface,
        "ips": n.ips,
        "gateway": n.gateway,
        "mac": n.mac,
        "ports": n.ports,
    })
}

/// Published ports for the table: `8080->80/tcp`, host address first if
/// one was given.
fn ports(c: &pb::Container) -> String {
    let ports = c.network.as_ref().map(|n| n.ports.as_slice()).unwrap_or_default();
    if ports.is_empty() {
        return "-".into();
    }
    ports
        .iter()
        .map(|p| match p.rsplit_once(':') {
            Some((host, ctr)) => format!("{host}->{ctr}"),
            None => p.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The network lines of `inspect`.
fn network_text(c: &pb::Container) -> String {
    let Some(n) = &c.network else { return "Network:    - (as the bundle says)\n".into() };
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { escape(&s).into_owned() };
    format!(
        "Network:    {}\nIPs:        {}\nGateway:    {}\nMAC:        {}\nPorts:      {}\nNetns:      {}\n",
        escape(&n.mode),
        or_dash(n.ips.join(", ")),
        or_dash(n.gateway.clone()),
        or_dash(n.mac.clone()),
        or_dash(n.ports.join(", ")),
        or_dash(n.netns.clone()),
    )
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
        "vm": e.vm.as_ref().map(vm_json),
    })
}

pub fn event_line(e: &pb::Event) -> String {
    let exit = e.exit.as_ref().map(|x| format!(" exit={}", x.code)).unwrap_or_default();
    let exec = if e.exec_id.is_empty() { String::new() } else { format!(" exec={}", e.exec_id) };
    let vm = e.vm.as_ref().map(|v| format!(" vm={}", v.accel)).unwrap_or_default();
    let line = format!("{:>6} {:<12} {}/{}{exec} pid={}{exit}{vm}", e.seq, e.r#type, e.namespace, e.id, e.pid);
    escape(&line).into_owned()
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
        "PORTS".into(),
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
            ports(c),
            truncate(&escape(&c.command.join(" ")), 40),
        ];
        if all_ns {
            row.insert(0, c.namespace.clone());
        }
        rows.push(row);
    }
    render(rows)
}

/// Aligns rows into columns, control characters escaped; the first row is
/// the header.
pub fn render(rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> =
        rows.into_iter().map(|r| r.into_iter().map(|c| escape(&c).into_owned()).collect()).collect();
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
    let mut labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{}={}", escape(k), escape(v))).collect();
    labels.sort();
    format!(
        "ID:         {}\nNamespace:  {}\nState:      {}\nPid:        {}\nExit:       {exit}\nOOMKilled:  {}\nRestart:    {} (restarted {} times)\nRuntime:    {}\nCommand:    {}\nImage:      {}\nRootfs:     {}\nBundle:     {}\nCgroup:     {}\nShim pid:   {}\nSandbox:    {}\nRestored:   {}\nCreated:    {}\nLabels:     {}\n{}{}",
        escape(&c.id),
        escape(&c.namespace),
        escape(&c.state),
        c.pid,
        c.oom_killed,
        escape(&c.restart_policy),
        c.restart_count,
        escape(&c.runtime),
        escape(&c.command.join(" ")),
        if c.image.is_empty() { "-".into() } else { escape(&c.image) },
        escape(&c.rootfs),
        escape(&c.bundle),
        escape(&c.cgroup),
        c.shim_pid,
        if c.sandbox.is_empty() { "-".into() } else { escape(&c.sandbox) },
        if c.restored_from.is_empty() { "-".into() } else { escape(&c.restored_from) },
        age(c.created_at_ns),
        labels.join(", "),
        network_text(c),
        c.vm.as_ref()
            .map(|v| format!("VM:         {} vCPUs, {} MiB, {}\n", v.cpus, v.memory_mib, v.accel))
            .unwrap_or_default(),
    )
}

/// A byte count for people: 1.5KiB, 20.0MiB.
pub fn bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No byte of the text would be taken by a terminal as a control.
    fn inert(s: &str) -> bool {
        !s.chars().any(|c| c.is_control() && c != '\n')
    }

    #[test]
    fn escapes_c0_del_c1_and_nothing_else() {
        assert_eq!(escape("\x1b[2J"), "\\x1b[2J");
        assert_eq!(escape("a\nb\rc\td\0e\x7f"), "a\\nb\\rc\\td\\x00e\\x7f");
        assert_eq!(escape("\u{9b}31m\u{85}"), "\\u{9b}31m\\u{85}");
        assert!(matches!(escape("plain é ✓ \\x1b"), Cow::Borrowed("plain é ✓ \\x1b")));
        // Escaping twice changes nothing more.
        assert_eq!(escape(&escape("\x1b\u{9b}")), escape("\x1b\u{9b}"));
    }

    fn evil() -> pb::Container {
        pb::Container {
            id: "c1".into(),
            namespace: "default".into(),
            state: "running".into(),
            command: vec!["sh".into(), "-c".into(), "echo \x1b[2J\u{9b}0m".into()],
            labels: [("k\x1b]0;t\x07".to_string(), "v\x1b[2J\n".to_string())].into(),
            rootfs: "/r\x1b".into(),
            ..Default::default()
        }
    }

    #[test]
    fn tables_and_inspect_show_controls_escaped() {
        let c = evil();
        let t = table(std::slice::from_ref(&c), true);
        assert!(inert(&t), "{t:?}");
        assert!(t.contains("echo \\x1b[2J\\u{9b}0m"), "{t:?}");
        let i = inspect_text(&c);
        assert!(inert(&i), "{i:?}");
        assert!(i.contains("k\\x1b]0;t\\x07=v\\x1b[2J\\n"), "{i:?}");
        assert!(i.contains("Rootfs:     /r\\x1b\n"), "{i:?}");
        let procs = [pb::Process { pid: 1, exec_id: "e\x1b".into(), command: c.command.clone() }];
        let top = top_table(&procs);
        assert!(inert(&top) && top.contains("e\\x1b") && top.contains("\\x1b[2J"), "{top:?}");
        let ev = pb::Event { r#type: "exit".into(), id: "c1".into(), exec_id: "x\x1b[2J".into(), ..Default::default() };
        assert!(inert(&event_line(&ev)), "{:?}", event_line(&ev));
    }

    #[test]
    fn json_stays_exact() {
        let c = evil();
        let v = container_json(&c);
        assert_eq!(v["command"][2], "echo \x1b[2J\u{9b}0m");
        assert_eq!(v["labels"]["k\x1b]0;t\x07"], "v\x1b[2J\n");
        assert_eq!(v["rootfs"], "/r\x1b");
    }
}
