//! `berth network create|ls|inspect|rm`: CNI networks (the Networks
//! service). berth's own are bridges it made; an administrator's come from
//! berthd's --cni-conf-dir and are listed but never changed.

use berth_api::v1 as pb;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, Failure};
use crate::output;

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a bridge network with its own subnet (host-local addresses,
    /// IP masquerade, published ports).
    Create {
        /// IPv4 CIDR (default: the first free /24 from 10.90.0.0 upward).
        #[arg(long)]
        subnet: Option<String>,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a network (as JSON): bridge, subnet, plugins, containers.
    Inspect { name: String },
    /// Ask a container's network plugins whether its attachment is intact
    /// (CNI CHECK): interface, addresses, routes, rules.
    Check { container: String },
    /// Remove networks berth made (and their bridges); refused while a
    /// container, running or stopped, is attached.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn network_json(n: &pb::Network) -> serde_json::Value {
    json!({
        "name": n.name,
        "bridge": n.bridge,
        "subnet": n.subnet,
        "gateway": n.gateway,
        "plugins": n.plugins,
        "path": n.path,
        "managed": n.managed,
        "cni_version": n.cni_version,
        "containers": n.containers,
    })
}

fn nref(name: String) -> pb::NetworkRef {
    pb::NetworkRef { name }
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_string() }
}

pub async fn run(c: &mut Client, cmd: NetworkCommand) -> Result<i32, Failure> {
    match cmd {
        NetworkCommand::Create { subnet, name } => {
            let req = pb::NetworkCreateRequest { name, subnet: subnet.unwrap_or_default() };
            let n = c.networks.create(req).await?.into_inner();
            println!("{}", n.name);
        }
        NetworkCommand::Ls { json } => {
            let list = c.networks.list(pb::NetworkListRequest {}).await?.into_inner().networks;
            if json {
                println!("{}", serde_json::Value::Array(list.iter().map(network_json).collect()));
                return Ok(0);
            }
            let header = ["NAME", "BRIDGE", "SUBNET", "PLUGINS", "SOURCE", "CONTAINERS"];
            let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
            for n in &list {
                let source = if n.managed { "berth".to_string() } else { n.path.clone() };
                let users = n.containers.len().to_string();
                rows.push(vec![n.name.clone(), dash(&n.bridge), dash(&n.subnet), n.plugins.join(","), source, users]);
            }
            print!("{}", output::render(rows));
        }
        NetworkCommand::Inspect { name } => {
            let n = c.networks.get(nref(name)).await?.into_inner();
            println!("{}", network_json(&n));
        }
        NetworkCommand::Check { container } => {
            c.networks.check(crate::commands::cref(c, &container)).await?;
            println!("{container}: network ok");
        }
        NetworkCommand::Rm { names } => {
            return crate::client::remove_each(names, async |name| c.networks.remove(nref(name)).await.map(drop)).await;
        }
    }
    Ok(0)
}
