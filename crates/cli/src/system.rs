//! `berth system phases|info|df` and `berth version`: berthd's own figures,
//! what it runs with and the space it takes (the System service).

use berth_api::v1 as pb;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, Failure};
use crate::output;

#[derive(Subcommand)]
pub enum SystemCommand {
    /// How long each phase of create, start, exit and delete took in
    /// berthd (median, 90th percentile, max over the last 1024 of each).
    Phases {
        #[arg(long)]
        json: bool,
        /// Forget the recorded durations after showing them.
        #[arg(long)]
        reset: bool,
    },
    /// Versions, runtimes found, the cgroup layout, CRIU, paths and counts.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Disk space berthd's directories take, by kind.
    Df {
        #[arg(long)]
        json: bool,
    },
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

pub async fn run(c: &mut Client, cmd: SystemCommand) -> Result<i32, Failure> {
    match cmd {
        SystemCommand::Phases { json, reset } => phases(c, json, reset).await,
        SystemCommand::Info { json } => info(c, json).await,
        SystemCommand::Df { json } => df(c, json).await,
    }
}

async fn phases(c: &mut Client, json: bool, reset: bool) -> Result<i32, Failure> {
    let phases = c.system.phases(pb::PhasesRequest { reset }).await?.into_inner().phases;
    if json {
        let v: Vec<_> = phases
            .iter()
            .map(|p| {
                json!({"phase": p.name, "count": p.count, "median_us": p.median_us, "p90_us": p.p90_us, "max_us": p.max_us})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(0);
    }
    let mut rows = vec![["PHASE", "COUNT", "MEDIAN", "P90", "MAX"].iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for p in &phases {
        rows.push(vec![p.name.clone(), p.count.to_string(), ms(p.median_us), ms(p.p90_us), ms(p.max_us)]);
    }
    print!("{}", output::render(rows));
    Ok(0)
}

fn info_json(i: &pb::SystemInfo) -> serde_json::Value {
    let runtimes: Vec<_> = i
        .runtimes
        .iter()
        .map(|r| json!({"name": r.name, "path": r.path, "version": r.version, "available": r.available}))
        .collect();
    json!({
        "version": i.version, "kernel": i.kernel, "root": i.root, "state": i.state, "socket": i.socket,
        "default_runtime": i.default_runtime, "runtimes": runtimes,
        "cgroup": {"version": i.cgroup_version, "driver": i.cgroup_driver, "parent": i.cgroup_parent,
                   "controllers": i.cgroup_controllers},
        "criu": {"path": i.criu_path, "version": i.criu_version},
        "containers": {"total": i.containers, "running": i.running, "paused": i.paused, "stopped": i.stopped},
        "sandboxes": i.sandboxes, "images": i.images, "volumes": i.volumes, "networks": i.networks,
        "root_free_bytes": i.root_free_bytes,
    })
}

async fn info(c: &mut Client, json: bool) -> Result<i32, Failure> {
    let i = c.system.info(pb::InfoRequest {}).await?.into_inner();
    if json {
        println!("{}", info_json(&i));
        return Ok(0);
    }
    println!("berthd:          {} (kernel {})", i.version, i.kernel);
    println!("root:            {} ({} free)", i.root, output::bytes(i.root_free_bytes));
    println!("state:           {}", i.state);
    println!("socket:          {}", i.socket);
    println!("default runtime: {}", i.default_runtime);
    for r in &i.runtimes {
        let mark = if r.available { "yes" } else { "no " };
        println!("  runtime {mark} {:<24} {}", r.name, r.version);
    }
    println!(
        "cgroups:         {} ({}), parent {}, controllers {}",
        i.cgroup_version,
        i.cgroup_driver,
        i.cgroup_parent,
        i.cgroup_controllers.join(",")
    );
    println!("criu:            {} ({})", i.criu_path, i.criu_version);
    println!("containers:      {} ({} running, {} paused, {} stopped)", i.containers, i.running, i.paused, i.stopped);
    println!("sandboxes {}, images {}, volumes {}, networks {}", i.sandboxes, i.images, i.volumes, i.networks);
    Ok(0)
}

async fn df(c: &mut Client, json: bool) -> Result<i32, Failure> {
    let entries = c.system.df(pb::DfRequest {}).await?.into_inner().entries;
    if json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| json!({"kind": e.kind, "path": e.path, "bytes": e.bytes, "inodes": e.inodes}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(0);
    }
    let mut rows = vec![["KIND", "SIZE", "FILES", "PATH"].iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for e in &entries {
        rows.push(vec![e.kind.clone(), output::bytes(e.bytes), e.inodes.to_string(), e.path.clone()]);
    }
    print!("{}", output::render(rows));
    Ok(0)
}

/// `berth version`: this client's and berthd's versions.
pub async fn version(c: &mut Client, json: bool) -> Result<i32, Failure> {
    let server = c.system.version(pb::VersionRequest {}).await?.into_inner().version;
    let client = env!("CARGO_PKG_VERSION");
    if json {
        println!("{}", json!({"client": client, "server": server}));
    } else {
        println!("client: berth {client}\nserver: berthd {server}");
    }
    Ok(0)
}
