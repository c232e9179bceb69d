//! `berth volume create|ls|inspect|rm`: named volumes kept by berthd
//! (the Volumes service).

use berth_api::v1 as pb;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, Failure};
use crate::output;

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a named volume (run/create also create one on first use).
    Create { name: String },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a volume (as JSON): mount point, creation time, users.
    Inspect { name: String },
    /// Remove volumes and their data; refused while a container, running
    /// or stopped, uses one.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn volume_json(v: &pb::Volume) -> serde_json::Value {
    json!({"name": v.name, "mountpoint": v.mountpoint, "created_at_ns": v.created_at_ns, "used_by": v.used_by})
}

fn vref(name: String) -> pb::VolumeRef {
    pb::VolumeRef { name }
}

pub async fn run(c: &mut Client, cmd: VolumeCommand) -> Result<i32, Failure> {
    match cmd {
        VolumeCommand::Create { name } => {
            let v = c.volumes.create(vref(name)).await?.into_inner();
            println!("{}", v.name);
        }
        VolumeCommand::Ls { json: true } => {
            let list = c.volumes.list(pb::VolumeListRequest {}).await?.into_inner().volumes;
            println!("{}", serde_json::Value::Array(list.iter().map(volume_json).collect()));
        }
        VolumeCommand::Ls { json: false } => {
            let list = c.volumes.list(pb::VolumeListRequest {}).await?.into_inner().volumes;
            let mut rows = vec![vec!["NAME".to_string(), "CREATED".to_string(), "USED BY".to_string()]];
            for v in &list {
                let users = if v.used_by.is_empty() { "-".to_string() } else { v.used_by.join(",") };
                rows.push(vec![v.name.clone(), output::age(v.created_at_ns), users]);
            }
            print!("{}", output::render(rows));
        }
        VolumeCommand::Inspect { name } => {
            let v = c.volumes.get(vref(name)).await?.into_inner();
            println!("{}", volume_json(&v));
        }
        VolumeCommand::Rm { names } => {
            return crate::client::remove_each(names, async |name| c.volumes.remove(vref(name)).await.map(drop)).await;
        }
    }
    Ok(0)
}
