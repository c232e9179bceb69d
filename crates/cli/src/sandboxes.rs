//! `berth sandbox create|ls|inspect|stop|rm`: sandboxes (pods) whose containers
//! share one shim and a network namespace (the Sandboxes service).

use berth_api::v1 as pb;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, Failure};
use crate::output;

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and print its id; `berth run --sandbox ID` places
    /// containers in it.
    Create {
        /// Its id (default: a random one).
        #[arg(long)]
        name: Option<String>,
        /// The runtime of all its containers: embedded, runc or crun.
        #[arg(long)]
        runtime: Option<String>,
        /// A label KEY=VALUE (repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        /// Its network: a network name (default berthd's), none or host.
        #[arg(long)]
        network: Option<String>,
        /// Publish a port: [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp] (repeatable).
        #[arg(short = 'p', long = "publish")]
        publish: Vec<String>,
        /// Whose PID namespace its containers are in: container (default:
        /// each its own), pod (one they share) or host.
        #[arg(long)]
        pid: Option<String>,
        /// Whose IPC namespace: pod (default: one they share), container
        /// or host.
        #[arg(long)]
        ipc: Option<String>,
        /// Run its containers in one VM, on the guest's kernel (the
        /// runtime `vm`; docs/vm.md).
        #[arg(long, conflicts_with = "runtime")]
        vm: bool,
        /// With --vm: the VM's vCPUs [default: 1].
        #[arg(long, requires = "vm")]
        cpus: Option<u32>,
        /// With --vm: the VM's memory, e.g. 512m [default: 256m; at least 128m].
        #[arg(long, requires = "vm")]
        memory: Option<String>,
    },
    /// List the sandboxes of the namespace (-n).
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a sandbox (as JSON): state, shim, network, containers.
    Inspect { id: String },
    /// Stop a sandbox: its containers (stop signal, then SIGKILL after
    /// --time seconds), its shim and network; the records stay.
    Stop {
        /// Seconds each container gets to exit before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u32,
        id: String,
    },
    /// Remove sandboxes; refused while one holds containers.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn sandbox_json(s: &pb::Sandbox) -> serde_json::Value {
    json!({
        "namespace": s.namespace,
        "id": s.id,
        "state": s.state,
        "runtime": s.runtime,
        "labels": s.labels,
        "created_at_ns": s.created_at_ns,
        "shim_pid": s.shim_pid,
        "network": s.network.as_ref().map(output::attachment_json),
        "containers": s.containers,
        "pid": s.pid,
        "ipc": s.ipc,
        "vm": s.vm.as_ref().map(output::vm_json),
    })
}

fn sref(c: &Client, id: String) -> pb::SandboxRef {
    pb::SandboxRef { namespace: c.namespace.clone(), id }
}

pub async fn run(c: &mut Client, cmd: SandboxCommand) -> Result<i32, Failure> {
    match cmd {
        SandboxCommand::Create { name, runtime, labels, network, publish, pid, ipc, vm, cpus, memory } => {
            let labels = crate::commands::parse_labels(labels)?;
            let memory = match memory.as_deref().map(crate::limits::parse_size).transpose()? {
                Some(m) if m <= 0 => return Err(Failure::new(format!("invalid --memory {m}"))),
                m => m.unwrap_or(0) as u64,
            };
            let req = pb::SandboxCreateRequest {
                namespace: c.namespace.clone(),
                id: name.unwrap_or_default(),
                runtime: if vm { berth_model::VM_RUNTIME.into() } else { runtime.unwrap_or_default() },
                labels,
                network: network.unwrap_or_default(),
                publish,
                pid: pid.unwrap_or_default(),
                ipc: ipc.unwrap_or_default(),
                cpus: cpus.unwrap_or(0),
                memory,
            };
            let s = c.sandboxes.create(req).await?.into_inner();
            println!("{}", s.id);
        }
        SandboxCommand::Ls { json } => {
            let req = pb::SandboxListRequest { namespace: c.namespace.clone() };
            let list = c.sandboxes.list(req).await?.into_inner().sandboxes;
            if json {
                println!("{}", serde_json::Value::Array(list.iter().map(sandbox_json).collect()));
                return Ok(0);
            }
            let header = ["ID", "STATE", "RUNTIME", "SHIM", "IP", "CONTAINERS", "CREATED"];
            let mut rows = vec![header.iter().map(ToString::to_string).collect::<Vec<_>>()];
            for s in &list {
                let ip = s.network.as_ref().and_then(|n| n.ips.first().cloned()).unwrap_or_else(|| "-".into());
                rows.push(vec![
                    output::escape(&s.id).into_owned(),
                    s.state.clone(),
                    s.runtime.clone(),
                    s.shim_pid.to_string(),
                    ip,
                    s.containers.len().to_string(),
                    output::age(s.created_at_ns),
                ]);
            }
            print!("{}", output::render(rows));
        }
        SandboxCommand::Inspect { id } => {
            let s = c.sandboxes.get(sref(c, id)).await?.into_inner();
            println!("{}", sandbox_json(&s));
        }
        SandboxCommand::Stop { time, id } => {
            let req = pb::SandboxStopRequest { namespace: c.namespace.clone(), id, timeout_s: time };
            let s = c.sandboxes.stop(req).await?.into_inner();
            println!("{}", s.id);
        }
        SandboxCommand::Rm { ids } => {
            let namespace = c.namespace.clone();
            let remove = async |id| {
                let r = pb::SandboxRef { namespace: namespace.clone(), id };
                c.sandboxes.remove(r).await.map(drop)
            };
            return crate::client::remove_each(ids, remove).await;
        }
    }
    Ok(0)
}
