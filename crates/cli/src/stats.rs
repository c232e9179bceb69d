//! `berth stats`: a live table like `docker stats`, or the full structure
//! of SPEC B12 as JSON.

use std::io::Write;
use std::time::{Duration, Instant};

use berth_api::v1 as pb;
use serde_json::json;

use crate::client::{Client, Failure};

const REFRESH: Duration = Duration::from_secs(1);
/// Gap between the two samples of `--no-stream` (CPU % needs two).
const SAMPLE_GAP: Duration = Duration::from_millis(250);

/// One sample of every container asked for, following Stats' pages.
async fn sample(c: &mut Client, ids: &[String]) -> Result<Vec<pb::ContainerStats>, Failure> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let req =
            pb::StatsRequest { namespace: c.namespace.clone(), ids: ids.to_vec(), page_token, ..Default::default() };
        let page = c.containers.stats(req.clone()).await?.into_inner();
        page_token = crate::client::next_page(&req.page_token, page.next_page_token, page.stats.len())?;
        out.extend(page.stats);
        if page_token.is_empty() {
            return Ok(out);
        }
    }
}

fn json_of(s: &pb::ContainerStats) -> serde_json::Value {
    let cpu = s.cpu.clone().unwrap_or_default();
    let m = s.memory.unwrap_or_default();
    let p = s.pids.unwrap_or_default();
    json!({
        "namespace": s.namespace, "id": s.id, "timestamp_ns": s.timestamp_ns,
        "cpu": {"usage_total": cpu.usage_total, "usage_user": cpu.usage_user, "usage_kernel": cpu.usage_kernel,
                "per_cpu": cpu.per_cpu, "throttling": {"periods": cpu.throttling_periods,
                "throttled_periods": cpu.throttled_periods, "throttled_time": cpu.throttled_time}},
        "memory": {"usage": m.usage, "limit": m.limit, "max_usage": m.max_usage, "cache": m.cache, "rss": m.rss,
                   "swap": m.swap_usage, "swap_limit": m.swap_limit, "fail_count": m.fail_count, "oom_kills": m.oom_kills},
        "pids": {"current": p.current, "limit": p.limit},
        "blkio": s.blkio.iter().map(|b| json!({"major": b.major, "minor": b.minor, "op": b.op, "bytes": b.bytes})).collect::<Vec<_>>(),
        "hugetlb": s.hugetlb.iter().map(|h| json!({"page_size": h.page_size, "usage": h.usage, "max_usage": h.max_usage, "fail_count": h.fail_count})).collect::<Vec<_>>(),
    })
}

/// Limits near u64::MAX mean "none".
fn limit(l: u64) -> String {
    if l == 0 || l >= 1 << 62 { "-".to_string() } else { crate::output::bytes(l) }
}

fn table(now: &[pb::ContainerStats], before: &[pb::ContainerStats]) -> String {
    let mut out = format!(
        "{:<20} {:>7} {:>22} {:>7} {:>6} {:>20}\n",
        "ID", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS", "BLOCK I/O (R / W)"
    );
    for s in now {
        let cpu = s.cpu.clone().unwrap_or_default();
        let m = s.memory.unwrap_or_default();
        let pct = before.iter().find(|b| b.id == s.id).map(|b| {
            let du = cpu.usage_total.saturating_sub(b.cpu.clone().unwrap_or_default().usage_total) as f64;
            let dt = s.timestamp_ns.saturating_sub(b.timestamp_ns).max(1) as f64;
            100.0 * du / dt
        });
        let mem_pct = if m.limit > 0 && m.limit < 1 << 62 {
            format!("{:.1}", 100.0 * m.usage as f64 / m.limit as f64)
        } else {
            "-".into()
        };
        let io = |op: &str| s.blkio.iter().filter(|b| b.op.eq_ignore_ascii_case(op)).map(|b| b.bytes).sum::<u64>();
        let pids = s.pids.unwrap_or_default();
        out.push_str(&format!(
            "{:<20} {:>7} {:>22} {:>7} {:>6} {:>20}\n",
            s.id,
            pct.map(|p| format!("{p:.1}")).unwrap_or_else(|| "-".into()),
            format!("{} / {}", crate::output::bytes(m.usage), limit(m.limit)),
            mem_pct,
            pids.current,
            format!("{} / {}", crate::output::bytes(io("read")), crate::output::bytes(io("write"))),
        ));
    }
    out
}

pub async fn run(c: &mut Client, ids: Vec<String>, no_stream: bool, json: bool) -> Result<i32, Failure> {
    if json {
        let v: Vec<_> = sample(c, &ids).await?.iter().map(json_of).collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(0);
    }
    let mut before = sample(c, &ids).await?;
    if no_stream {
        tokio::time::sleep(SAMPLE_GAP).await;
        print!("{}", table(&sample(c, &ids).await?, &before));
        return Ok(0);
    }
    let mut tick = Instant::now();
    loop {
        tick += REFRESH;
        tokio::time::sleep_until(tick.into()).await;
        let now = sample(c, &ids).await?;
        let mut o = std::io::stdout();
        // Clear the screen and redraw, like `docker stats`.
        if write!(o, "\x1b[2J\x1b[H{}", table(&now, &before)).and_then(|_| o.flush()).is_err() {
            return Ok(0);
        }
        before = now;
    }
}
