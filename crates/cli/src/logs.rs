//! `berth logs`: a container's (or an exec's) output, from a time or its
//! last lines, with timestamps, following it while it runs.

use berth_api::v1 as pb;

use crate::client::{Client, Failure};

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Keep streaming until the container exits.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only output written since TIME: RFC 3339 (2026-12-03T10:00:00Z),
    /// Unix seconds (1764756000.5), or a duration ago (90s, 10m, 1h30m).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only output written until TIME (the same forms); ends a follow there.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only the last N lines, or all.
    #[arg(long, value_name = "N", default_value = "all")]
    pub tail: String,
    /// Start each line with the time it was written (RFC 3339, ns).
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// An exec's output instead of the container's.
    #[arg(long, default_value = "")]
    pub exec: String,
    pub id: String,
}

pub async fn run(c: &mut Client, a: LogsArgs) -> Result<i32, Failure> {
    let now = berth_model::now_ns();
    let time = |flag: &str, s: &Option<String>| {
        s.as_deref().map(|s| parse_time(s, now).map_err(|e| Failure::new(format!("--{flag}: {e}")))).transpose()
    };
    let tail = match a.tail.as_str() {
        "all" => None,
        n => Some(n.parse().map_err(|_| Failure::new(format!("--tail: {n:?} is not a number of lines or all")))?),
    };
    let req = pb::LogsRequest {
        namespace: c.namespace.clone(),
        id: a.id,
        follow: a.follow,
        exec_id: a.exec,
        from_end: false,
        since_ns: time("since", &a.since)?,
        until_ns: time("until", &a.until)?,
        tail,
        timestamps: a.timestamps,
    };
    let stream = c.containers.logs(req).await?.into_inner();
    crate::commands::copy_logs(stream).await?;
    Ok(0)
}

/// A time as ns since the epoch: RFC 3339, Unix seconds, or a duration
/// before `now_ns`.
fn parse_time(s: &str, now_ns: u64) -> Result<u64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t
            .timestamp_nanos_opt()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| format!("{s} is before 1970"));
    }
    if let Some(secs) = seconds(s) {
        return Ok(secs);
    }
    let ago = duration_ns(s).ok_or_else(|| {
        format!("{s:?} is not an RFC 3339 time, Unix seconds, or a duration such as 90s, 10m or 1h30m")
    })?;
    Ok(now_ns.saturating_sub(ago))
}

/// `SECONDS[.FRACTION]` as ns.
fn seconds(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ns: u64 = format!("{frac:0<9}").parse().ok()?;
    whole.parse::<u64>().ok()?.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// `1h30m`, `90s`, `250ms`, `1.5h` as ns.
fn duration_ns(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|i| *i > 0)?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * unit;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total < u64::MAX as f64).then_some(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks: unique short flags across global and local
        // options, among others.
        <crate::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn times_in_each_form() {
        let now = 1_764_756_000_000_000_000;
        assert_eq!(parse_time("2025-12-03T10:00:00Z", now), Ok(now));
        assert_eq!(parse_time("2025-12-03T11:00:00.5+01:00", now), Ok(now + 500_000_000));
        assert_eq!(parse_time("1764756000", now), Ok(now));
        assert_eq!(parse_time("1764756000.25", now), Ok(now + 250_000_000));
        assert_eq!(parse_time("90s", now), Ok(now - 90_000_000_000));
        assert_eq!(parse_time("1h30m", now), Ok(now - 5_400_000_000_000));
        assert_eq!(parse_time("250ms", now), Ok(now - 250_000_000));
        for bad in ["", "yesterday", "10x", "1.2.3", "-5m", "m", "1e400s"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }
}
