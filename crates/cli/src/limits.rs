//! Resource limit flags shared by `run`, `create` and `update`.

use berth_api::v1 as pb;

use crate::client::Failure;

#[derive(clap::Args, Clone, Default)]
pub struct LimitArgs {
    /// Memory limit, e.g. 64m, 1g (bytes without a suffix).
    #[arg(long)]
    pub memory: Option<String>,
    /// Memory plus swap limit; -1 for unlimited swap.
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Number of CPUs (may be fractional), as a CFS quota.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Relative CPU weight.
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    /// CPUs the container may use, e.g. 0-1,3.
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Maximum number of processes; -1 for unlimited.
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
}

/// CFS period used for `--cpus`.
const CPU_PERIOD: u64 = 100_000;

/// Parses 512, 64k, 64m, 2g (powers of 1024); -1 stays -1.
pub fn parse_size(s: &str) -> Result<i64, Failure> {
    if s == "-1" {
        return Ok(-1);
    }
    let n = berth_model::parse_size(s).map_err(|e| Failure::new(e.to_string()))?;
    i64::try_from(n).map_err(|_| Failure::new(format!("size {s:?} is too large")))
}

impl LimitArgs {
    pub fn to_pb(&self) -> Result<pb::ResourceLimits, Failure> {
        let (cpu_quota, cpu_period) = match self.cpus {
            Some(c) if c.is_finite() && c > 0.0 && c <= 4096.0 => {
                (Some((c * CPU_PERIOD as f64) as i64), Some(CPU_PERIOD))
            }
            Some(c) => return Err(Failure::new(format!("invalid --cpus {c}"))),
            None => (None, None),
        };
        Ok(pb::ResourceLimits {
            memory: self.memory.as_deref().map(parse_size).transpose()?,
            memory_swap: self.memory_swap.as_deref().map(parse_size).transpose()?,
            cpu_shares: self.cpu_shares,
            cpu_quota,
            cpu_period,
            cpuset_cpus: self.cpuset_cpus.clone(),
            pids: self.pids_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").ok(), Some(512));
        assert_eq!(parse_size("64m").ok(), Some(64 << 20));
        assert_eq!(parse_size("1G").ok(), Some(1 << 30));
        assert_eq!(parse_size("-1").ok(), Some(-1));
        assert!(parse_size("-5").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn cpus_become_a_quota() {
        let l = LimitArgs { cpus: Some(0.5), ..Default::default() }.to_pb().ok().unwrap();
        assert_eq!((l.cpu_quota, l.cpu_period), (Some(50_000), Some(100_000)));
        assert!(LimitArgs { cpus: Some(-1.0), ..Default::default() }.to_pb().is_err());
    }
}
