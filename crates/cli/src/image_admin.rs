//! Image administration verbs: `image import|export|inspect|prune` and
//! `tag`. Archive paths are made absolute here: berthd reads and writes
//! the file itself.

use std::path::{Path, PathBuf};

use berth_api::v1 as pb;
use serde_json::json;

use crate::client::{Client, Failure};
use crate::images::human_size;
use crate::output;

#[derive(clap::Subcommand)]
pub enum ImageCmd {
    /// Import an image archive (OCI layout or docker save tar).
    Import {
        /// os/arch[/variant] to unpack from a multi-platform image.
        #[arg(long, default_value = "")]
        platform: String,
        file: PathBuf,
    },
    /// Export images as an OCI layout tar: REF... FILE.
    Export {
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
    },
    /// Show an image's digests, layers and config.
    Inspect {
        #[arg(long)]
        json: bool,
        reference: String,
    },
    /// Free content and snapshots no image, container or pull uses.
    Prune {
        #[arg(long)]
        json: bool,
    },
}

fn absolute(p: &Path) -> Result<String, Failure> {
    let abs = std::path::absolute(p).map_err(|e| Failure::new(format!("{}: {e}", p.display())))?;
    abs.to_str().map(str::to_string).ok_or_else(|| Failure::new(format!("{} is not UTF-8", p.display())))
}

pub async fn run(c: &mut Client, cmd: ImageCmd) -> Result<i32, Failure> {
    match cmd {
        ImageCmd::Import { platform, file } => import(c, &file, platform).await,
        ImageCmd::Export { mut args } => {
            let file = args.pop().unwrap_or_default();
            export(c, args, Path::new(&file)).await
        }
        ImageCmd::Inspect { json, reference } => inspect(c, reference, json).await,
        ImageCmd::Prune { json } => prune(c, json).await,
    }
}

async fn import(c: &mut Client, file: &Path, platform: String) -> Result<i32, Failure> {
    let req = pb::ImageImportRequest { path: absolute(file)?, platform };
    let images = c.images.import(req).await?.into_inner().images;
    for i in images {
        let line = if i.name.is_empty() {
            format!("imported {} (unnamed)", i.digest)
        } else {
            format!("imported {} ({})", i.name, i.digest)
        };
        println!("{}", output::escape(&line));
    }
    Ok(0)
}

async fn export(c: &mut Client, references: Vec<String>, file: &Path) -> Result<i32, Failure> {
    let req = pb::ImageExportRequest { references, path: absolute(file)? };
    let e = c.images.export(req).await?.into_inner();
    println!("exported {} blobs ({}) to {}", e.blobs, human_size(e.bytes), output::escape(&file.display().to_string()));
    Ok(0)
}

pub async fn tag(c: &mut Client, source: String, target: String) -> Result<i32, Failure> {
    let i = c.images.tag(pb::ImageTagRequest { source, target }).await?.into_inner();
    println!("{}", output::escape(&i.name));
    Ok(0)
}

/// One line of what a collection freed.
pub fn freed_line(f: &pb::ImagePruneResponse) -> String {
    format!(
        "freed {} blobs ({}), {} snapshots ({})",
        f.blobs_removed,
        human_size(f.blob_bytes),
        f.snapshots_removed,
        human_size(f.snapshot_bytes)
    )
}

fn freed_json(f: &pb::ImagePruneResponse) -> serde_json::Value {
    json!({"blobs_removed": f.blobs_removed, "blob_bytes": f.blob_bytes,
           "snapshots_removed": f.snapshots_removed, "snapshot_bytes": f.snapshot_bytes})
}

async fn prune(c: &mut Client, json_out: bool) -> Result<i32, Failure> {
    let f = c.images.prune(pb::ImagePruneRequest {}).await?.into_inner();
    if json_out {
        println!("{}", freed_json(&f));
    } else {
        println!("{}", freed_line(&f));
    }
    Ok(0)
}

async fn inspect(c: &mut Client, reference: String, json_out: bool) -> Result<i32, Failure> {
    let i = c.images.inspect(pb::ImageRef { reference }).await?.into_inner();
    let image = i.image.clone().unwrap_or_default();
    if json_out {
        let layers: Vec<_> = i
            .layers
            .iter()
            .map(|l| json!({"digest": l.digest, "diff_id": l.diff_id, "size": l.size, "media_type": l.media_type}))
            .collect();
        let v = json!({
            "name": image.name, "digest": image.digest, "manifest_digest": image.manifest_digest,
            "config_digest": image.config_digest, "chain_id": image.chain_id, "size": image.size,
            "created": image.created, "platform": i.platform, "layers": layers,
            "config": {"entrypoint": i.entrypoint, "cmd": i.cmd, "env": i.env, "working_dir": i.working_dir,
                       "user": i.user, "stop_signal": i.stop_signal},
        });
        println!("{v}");
        return Ok(0);
    }
    let mut rows: Vec<Vec<String>> = vec![
        vec!["Name:".into(), image.name.clone()],
        vec!["Digest:".into(), image.digest.clone()],
        vec!["Manifest:".into(), image.manifest_digest.clone()],
        vec!["Config:".into(), image.config_digest.clone()],
        vec!["Size:".into(), human_size(image.size)],
        vec!["Created:".into(), image.created.clone()],
        vec!["Platform:".into(), i.platform.clone()],
        vec!["Entrypoint:".into(), format!("{:?}", i.entrypoint)],
        vec!["Cmd:".into(), format!("{:?}", i.cmd)],
        vec!["WorkingDir:".into(), i.working_dir.clone()],
        vec!["User:".into(), i.user.clone()],
    ];
    for e in &i.env {
        rows.push(vec!["Env:".into(), e.clone()]);
    }
    for l in &i.layers {
        rows.push(vec!["Layer:".into(), format!("{} {} (diff {})", l.digest, human_size(l.size), l.diff_id)]);
    }
    print!("{}", output::render(rows));
    Ok(0)
}
