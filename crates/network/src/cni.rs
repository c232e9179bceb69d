//! The CNI runtime side: executing plugins the way libcni does. Each call
//! finds the plugin binary in the configured directories, passes the
//! `CNI_*` environment and the plugin's config (with `name`, `cniVersion`,
//! `prevResult` and `runtimeConfig` injected) on stdin, and reads the result
//! or the CNI error JSON from stdout, all within a deadline. List operations
//! chain plugins in order for ADD and in reverse for DEL.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use berth_model::PortMapping;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::conflist::{ConfList, plugin_type};
use crate::{Config, Error, Result};

/// A plugin's stdout beyond this is dropped (results are a few KiB).
const MAX_OUTPUT_BYTES: u64 = 1 << 20;
/// How much of a failing plugin's stderr makes it into an error.
const MAX_STDERR_BYTES: u64 = 4096;
/// PATH for plugins when berthd has none (they run iptables, ip, ...).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

/// What a plugin is told about the container: the `CNI_*` variables and the
/// capability arguments. Kept in the attachment cache so DEL gets the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RuntimeConf {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// Runs ADD for every plugin in order, each given the previous one's result,
/// and returns the last result. If plugin k fails, DEL runs for plugins k..0
/// in reverse (best effort, failures logged) and the ADD error is returned.
pub(crate) async fn add(cfg: &Config, list: &ConfList, rt: &RuntimeConf) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for (k, plugin) in list.plugins.iter().enumerate() {
        match exec(cfg, list, plugin, Command::Add, rt, prev.as_ref()).await {
            Ok(result) => prev = Some(result),
            Err(err) => {
                for undo in list.plugins[..=k].iter().rev() {
                    if let Err(e) = exec(cfg, list, undo, Command::Del, rt, prev.as_ref()).await {
                        tracing::warn!(network = %list.name, container = %rt.container_id, "undoing a failed ADD: {e}");
                    }
                }
                return Err(err);
            }
        }
    }
    // A validated list has at least one plugin, so this is the last result.
    Ok(prev.unwrap_or_default())
}

/// Runs CHECK for every plugin in order with the cached ADD result.
pub(crate) async fn check(cfg: &Config, list: &ConfList, rt: &RuntimeConf, cached: Option<&Value>) -> Result<()> {
    for plugin in &list.plugins {
        exec(cfg, list, plugin, Command::Check, rt, cached).await?;
    }
    Ok(())
}

/// Runs DEL for every plugin in reverse order with the cached ADD result.
/// Every plugin runs even if one fails; the first error is returned.
pub(crate) async fn del(cfg: &Config, list: &ConfList, rt: &RuntimeConf, cached: Option<&Value>) -> Result<()> {
    let mut first = None;
    for plugin in list.plugins.iter().rev() {
        if let Err(e) = exec(cfg, list, plugin, Command::Del, rt, cached).await {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// The plugin's binary: the first `dir/type` that is a file.
pub(crate) fn find_plugin(cfg: &Config, plugin: &str) -> Result<PathBuf> {
    cfg.bin_dirs
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::PluginNotFound { plugin: plugin.to_string(), dirs: search_path(cfg) })
}

fn search_path(cfg: &Config) -> String {
    cfg.bin_dirs.iter().map(|d| d.to_string_lossy()).collect::<Vec<_>>().join(":")
}

/// The config a plugin reads on stdin: its own object plus the injected
/// `name`, `cniVersion`, `prevResult` and `runtimeConfig` (only the
/// capabilities the plugin declares and berth has values for).
pub(crate) fn plugin_stdin(list: &ConfList, plugin: &Value, rt: &RuntimeConf, prev: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    let Value::Object(fields) = &mut conf else { return conf };
    fields.insert("name".into(), list.name.clone().into());
    fields.insert("cniVersion".into(), list.cni_version.clone().into());
    if let Some(prev) = prev {
        fields.insert("prevResult".into(), prev.clone());
    }
    if has_capability(plugin, "portMappings") && !rt.port_mappings.is_empty() {
        let ports: Vec<Value> = rt.port_mappings.iter().map(port_mapping).collect();
        fields.insert("runtimeConfig".into(), serde_json::json!({ "portMappings": ports }));
    }
    conf
}

/// Whether a plugin declares `"capabilities": {cap: true}`.
pub(crate) fn has_capability(plugin: &Value, cap: &str) -> bool {
    plugin["capabilities"][cap].as_bool() == Some(true)
}

/// One mapping in the form the portmap plugin reads.
fn port_mapping(p: &PortMapping) -> Value {
    let mut m = serde_json::json!({
        "hostPort": p.host_port,
        "containerPort": p.container_port,
        "protocol": p.protocol.as_str(),
    });
    if !p.host_ip.is_empty() {
        m["hostIP"] = p.host_ip.clone().into();
    }
    m
}

/// Runs one plugin once and returns its parsed result (`null` when a DEL or
/// CHECK prints nothing).
async fn exec(
    cfg: &Config,
    list: &ConfList,
    plugin: &Value,
    command: Command,
    rt: &RuntimeConf,
    prev: Option<&Value>,
) -> Result<Value> {
    let name = plugin_type(plugin);
    let bin = find_plugin(cfg, name)?;
    let stdin = serde_json::to_vec(&plugin_stdin(list, plugin, rt, prev))
        .map_err(|e| Error::InvalidArgument(format!("CNI config of {name}: {e}")))?;
    let failed = |message: String| Error::PluginFailed { plugin: name.to_string(), command: command.as_str(), message };
    let run = Run { bin: &bin, command, rt, cni_path: search_path(cfg) };
    let (status, stdout, stderr) = match tokio::time::timeout(cfg.plugin_timeout, run.spawn(stdin)?).await {
        Ok(done) => done.map_err(|e| Error::io(format!("run CNI plugin {name}"), e))?,
        Err(_) => {
            return Err(Error::PluginTimeout {
                plugin: name.to_string(),
                command: command.as_str(),
                secs: cfg.plugin_timeout.as_secs_f64().ceil() as u64,
            });
        }
    };
    if !status.success() {
        return Err(failed(error_message(&stdout, &stderr, status)));
    }
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return match command {
            Command::Add => Err(failed("printed no result".into())),
            Command::Del | Command::Check => Ok(Value::Null),
        };
    }
    serde_json::from_slice(&stdout).map_err(|e| failed(format!("printed an invalid result: {e}")))
}

/// One plugin process: spawned in its own process group so that a timeout
/// kills it together with whatever it started (iptables, ...).
struct Run<'a> {
    bin: &'a Path,
    command: Command,
    rt: &'a RuntimeConf,
    cni_path: String,
}

type Output = (std::process::ExitStatus, Vec<u8>, Vec<u8>);

impl Run<'_> {
    /// Starts the plugin; the returned future feeds stdin, reads bounded
    /// output and reaps it. Dropping the future (deadline) kills the
    /// plugin's process group and reaps the plugin.
    fn spawn(&self, input: Vec<u8>) -> Result<impl Future<Output = std::io::Result<Output>>> {
        let mut child = tokio::process::Command::new(self.bin)
            .env_clear()
            .env("CNI_COMMAND", self.command.as_str())
            .env("CNI_CONTAINERID", &self.rt.container_id)
            .env("CNI_NETNS", &self.rt.netns)
            .env("CNI_IFNAME", &self.rt.ifname)
            .env("CNI_ARGS", "")
            .env("CNI_PATH", &self.cni_path)
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("start CNI plugin {}", self.bin.display()), e))?;
        let guard = GroupGuard(child.id());
        Ok(async move {
            let (mut stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
            let write = async move {
                if let Some(stdin) = stdin.as_mut() {
                    // A plugin may exit without reading its config: not our error.
                    let _ = stdin.write_all(&input).await;
                }
            };
            let (_, out, err) =
                tokio::join!(write, read_bounded(stdout, MAX_OUTPUT_BYTES), read_bounded(stderr, MAX_STDERR_BYTES));
            let status = child.wait().await?;
            std::mem::forget(guard);
            Ok((status, out?, err?))
        })
    }
}

/// Kills the process group of a plugin that did not finish (the group id
/// is the pid of the plugin berth started); `kill_on_drop` then lets tokio
/// reap the plugin itself.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Reads up to `cap` bytes and discards the rest, so the writer never blocks.
async fn read_bounded(reader: Option<impl AsyncRead + Unpin>, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut reader) = reader {
        (&mut reader).take(cap).read_to_end(&mut buf).await?;
        tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?;
    }
    Ok(buf)
}

/// One line from a failed plugin: its CNI error's `msg` and `details`, else
/// its stderr, else its exit status.
fn error_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    #[derive(Deserialize)]
    struct CniError {
        #[serde(default)]
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    let text = match serde_json::from_slice::<CniError>(stdout) {
        Ok(e) if !e.msg.is_empty() && !e.details.is_empty() => format!("{} ({}; code {})", e.msg, e.details, e.code),
        Ok(e) if !e.msg.is_empty() => format!("{} (code {})", e.msg, e.code),
        _ if !String::from_utf8_lossy(stderr).trim().is_empty() => String::from_utf8_lossy(stderr).into_owned(),
        _ => status.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    use berth_model::Protocol;

    use super::*;

    fn list(plugins: Value) -> ConfList {
        let json = serde_json::json!({"cniVersion": "1.0.0", "name": "t", "plugins": plugins});
        ConfList::from_value(json, Path::new("t.conflist")).unwrap()
    }

    fn rt(ports: Vec<PortMapping>) -> RuntimeConf {
        RuntimeConf { container_id: "c1".into(), netns: "/x/ns".into(), ifname: "eth0".into(), port_mappings: ports }
    }

    /// A plugin directory holding shell scripts, and a config that uses it.
    fn scripts(scripts: &[(&str, &str)], timeout: Duration) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in scripts {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let cfg = Config {
            bin_dirs: vec![dir.path().join("missing"), dir.path().to_path_buf()],
            conf_dir: dir.path().into(),
            root: dir.path().into(),
            state: dir.path().into(),
            default_bridge: "unused0".into(),
            default_subnet: "10.255.255.0/24".into(),
            plugin_timeout: timeout,
        };
        (dir, cfg)
    }

    #[test]
    fn injects_name_version_prev_result_and_declared_capabilities_only() {
        let l = list(serde_json::json!([
            {"type": "bridge", "name": "ignored"},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]));
        let ports = vec![
            PortMapping { host_ip: String::new(), host_port: 8080, container_port: 80, protocol: Protocol::Tcp },
            PortMapping { host_ip: "127.0.0.1".into(), host_port: 53, container_port: 5353, protocol: Protocol::Udp },
        ];
        let bridge = plugin_stdin(&l, &l.plugins[0], &rt(ports.clone()), None);
        assert_eq!((bridge["name"].as_str(), bridge["cniVersion"].as_str()), (Some("t"), Some("1.0.0")));
        assert!(bridge.get("runtimeConfig").is_none() && bridge.get("prevResult").is_none());
        let prev = serde_json::json!({"ips": [{"address": "10.1.0.2/24"}]});
        let portmap = plugin_stdin(&l, &l.plugins[1], &rt(ports), Some(&prev));
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(portmap["snat"], true);
        assert_eq!(
            portmap["runtimeConfig"],
            serde_json::json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "127.0.0.1"}
            ]})
        );
    }

    #[tokio::test]
    async fn passes_the_environment_and_config_and_chains_results() {
        let (dir, cfg) = scripts(
            &[
                ("one", r#"env > "$(dirname "$0")/one.env"; cat > /dev/null; echo '{"cniVersion":"1.0.0","ips":[]}'"#),
                ("two", r#"cat > "$(dirname "$0")/two.$CNI_COMMAND"; echo '{"cniVersion":"1.0.0","dns":{}}'"#),
            ],
            Duration::from_secs(10),
        );
        let l = list(serde_json::json!([{"type": "one"}, {"type": "two"}]));
        let result = add(&cfg, &l, &rt(vec![])).await.unwrap();
        assert_eq!(result, serde_json::json!({"cniVersion": "1.0.0", "dns": {}}));
        let env = std::fs::read_to_string(dir.path().join("one.env")).unwrap();
        let cni_path = format!("CNI_PATH={}/missing:{}", dir.path().display(), dir.path().display());
        for want in
            ["CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=/x/ns", "CNI_IFNAME=eth0", "CNI_ARGS=", &cni_path]
        {
            assert!(env.lines().any(|l| l == want), "{want} not in {env}");
        }
        assert!(env.lines().any(|l| l.starts_with("PATH=")));
        let stdin: Value = serde_json::from_slice(&std::fs::read(dir.path().join("two.ADD")).unwrap()).unwrap();
        assert_eq!(stdin["prevResult"], serde_json::json!({"cniVersion": "1.0.0", "ips": []}));
        let cached = serde_json::json!({"cached": true});
        del(&cfg, &l, &rt(vec![]), Some(&cached)).await.unwrap();
        let stdin: Value = serde_json::from_slice(&std::fs::read(dir.path().join("two.DEL")).unwrap()).unwrap();
        assert_eq!(stdin["prevResult"], cached);
    }

    #[tokio::test]
    async fn reports_missing_failing_and_hanging_plugins() {
        let (dir, cfg) = scripts(
            &[
                ("fail", r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"no luck","details":"really"}'; exit 1"#),
                ("stderr", "echo 'it broke' >&2; exit 2"),
                ("slow", "sleep 30"),
            ],
            Duration::from_secs(1),
        );
        let e = add(&cfg, &list(serde_json::json!([{"type": "nosuch"}])), &rt(vec![])).await.unwrap_err();
        let dirs = format!("{}/missing:{}", dir.path().display(), dir.path().display());
        assert!(matches!(&e, Error::PluginNotFound { plugin, dirs: d } if plugin == "nosuch" && *d == dirs), "{e}");
        let e = add(&cfg, &list(serde_json::json!([{"type": "fail"}])), &rt(vec![])).await.unwrap_err();
        assert!(
            matches!(&e, Error::PluginFailed { plugin, command: "ADD", message }
            if plugin == "fail" && message == "no luck (really; code 7)"),
            "{e}"
        );
        let e = del(&cfg, &list(serde_json::json!([{"type": "stderr"}])), &rt(vec![]), None).await.unwrap_err();
        assert!(matches!(&e, Error::PluginFailed { command: "DEL", message, .. } if message == "it broke"), "{e}");
        let started = Instant::now();
        let e = check(&cfg, &list(serde_json::json!([{"type": "slow"}])), &rt(vec![]), None).await.unwrap_err();
        assert!(matches!(&e, Error::PluginTimeout { plugin, command: "CHECK", secs: 1 } if plugin == "slow"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
