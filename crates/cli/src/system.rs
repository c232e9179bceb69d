//! `berth system phases`: berthd's own figures (the System service).

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
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

pub async fn run(c: &mut Client, cmd: SystemCommand) -> Result<i32, Failure> {
    let SystemCommand::Phases { json, reset } = cmd;
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
