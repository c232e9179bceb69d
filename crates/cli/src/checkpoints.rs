//! `berth checkpoint [ls|rm|export]` and `berth restore`: CRIU checkpoints
//! kept by berthd (the Checkpoints service). Archive paths are on berthd's
//! host; relative ones are made absolute here.

use std::path::{Path, PathBuf};

use berth_api::v1 as pb;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{Client, Failure};
use crate::output;

#[derive(Args)]
pub struct CheckpointArgs {
    /// Keep the container running (default: it stops).
    #[arg(long)]
    leave_running: bool,
    /// Checkpoint established TCP connections (restored with them).
    #[arg(long)]
    tcp_established: bool,
    /// Allow a shell job (a process attached to a terminal session).
    #[arg(long)]
    shell_job: bool,
    /// Allow external unix sockets.
    #[arg(long)]
    ext_unix_sk: bool,
    /// The checkpoint's name (default: checkpoint-<unix time>).
    #[arg(long)]
    name: Option<String>,
    /// The container.
    #[arg(required = true)]
    id: Option<String>,
}

#[derive(Subcommand)]
pub enum CheckpointCommand {
    /// List a container's checkpoints.
    #[command(alias = "list")]
    Ls {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a checkpoint.
    #[command(alias = "remove")]
    Rm { id: String, name: String },
    /// Write a checkpoint as a tar archive (a new file on berthd's host).
    Export { id: String, name: String, file: PathBuf },
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The new container's id (default: the checkpointed one's).
    #[arg(long)]
    name: Option<String>,
    /// An archive made by `checkpoint export` (on berthd's host).
    #[arg(long, conflicts_with = "checkpoint")]
    from: Option<PathBuf>,
    /// A checkpoint of container ID on this daemon.
    #[arg(long, requires = "id")]
    checkpoint: Option<String>,
    /// The checkpointed container (with --checkpoint).
    id: Option<String>,
}

fn absolute(path: &Path) -> Result<String, Failure> {
    let abs = std::path::absolute(path).map_err(|e| Failure::new(format!("bad path {}: {e}", path.display())))?;
    Ok(abs.to_string_lossy().into_owned())
}

fn info_json(i: &pb::CheckpointInfo) -> serde_json::Value {
    json!({
        "namespace": i.namespace, "id": i.id, "name": i.name, "created_at_ns": i.created_at_ns,
        "runtime": i.runtime, "image": i.image, "leave_running": i.leave_running,
        "tcp_established": i.tcp_established, "size": i.size, "duration_us": i.duration_us,
    })
}

pub async fn run(c: &mut Client, cmd: Option<CheckpointCommand>, a: CheckpointArgs) -> Result<i32, Failure> {
    let namespace = c.namespace.clone();
    match cmd {
        None => {
            let req = pb::CheckpointRequest {
                namespace,
                id: a.id.unwrap_or_default(),
                name: a.name.unwrap_or_default(),
                leave_running: a.leave_running,
                tcp_established: a.tcp_established,
                shell_job: a.shell_job,
                ext_unix_sk: a.ext_unix_sk,
            };
            let info = c.checkpoints.create(req).await?.into_inner();
            println!("{}", info.name);
        }
        Some(CheckpointCommand::Ls { id, json }) => {
            let list = c.checkpoints.list(pb::ContainerRef { namespace, id }).await?.into_inner().checkpoints;
            if json {
                println!("{}", serde_json::Value::Array(list.iter().map(info_json).collect()));
                return Ok(0);
            }
            let mut rows = vec![["NAME", "CREATED", "SIZE", "TOOK", "RUNNING"].map(String::from).to_vec()];
            for i in &list {
                rows.push(vec![
                    output::escape(&i.name).into_owned(),
                    output::age(i.created_at_ns),
                    format!("{:.1} MB", i.size as f64 / 1e6),
                    format!("{} ms", i.duration_us / 1000),
                    if i.leave_running { "left running".into() } else { "stopped".into() },
                ]);
            }
            print!("{}", output::render(rows));
        }
        Some(CheckpointCommand::Rm { id, name }) => {
            c.checkpoints.remove(pb::CheckpointRef { namespace, id, name: name.clone() }).await?;
            println!("{name}");
        }
        Some(CheckpointCommand::Export { id, name, file }) => {
            let path = absolute(&file)?;
            c.checkpoints.export(pb::CheckpointExportRequest { namespace, id, name, path: path.clone() }).await?;
            println!("{path}");
        }
    }
    Ok(0)
}

pub async fn restore(c: &mut Client, a: RestoreArgs) -> Result<i32, Failure> {
    let archive = a.from.as_deref().map(absolute).transpose()?.unwrap_or_default();
    if archive.is_empty() && a.checkpoint.is_none() {
        return Err(Failure::new("restore needs --from FILE.tar or --checkpoint NAME ID"));
    }
    let req = pb::RestoreRequest {
        namespace: c.namespace.clone(),
        id: a.name.unwrap_or_default(),
        container: a.id.unwrap_or_default(),
        name: a.checkpoint.unwrap_or_default(),
        archive,
    };
    let container = c.checkpoints.restore(req).await?.into_inner();
    println!("{}", container.id);
    Ok(0)
}
