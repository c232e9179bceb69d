//! Restart policies (SPEC B21): which exits bring a container back, and how
//! long to wait first — exponential backoff from 100 ms, doubling, capped
//! at 10 s, reset once a run has lasted 10 s.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

pub const BACKOFF_START: Duration = Duration::from_millis(100);
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A run at least this long resets the backoff.
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    No,
    /// Restart after every exit, but never after a user stop.
    Always,
    /// Restart after a non-zero exit, at most `max` times (0: no limit).
    OnFailure { max: u32 },
    /// The same as `always` in berth, where a user stop is final even
    /// across berthd restarts (SPEC B21); accepted for Docker users.
    UnlessStopped,
}

impl RestartPolicy {
    /// Whether an exit with `code` after `restarts` earlier restarts brings
    /// the container back. A container the user stopped never comes back.
    pub fn wants_restart(self, code: u32, restarts: u32, stopped_by_user: bool) -> bool {
        if stopped_by_user {
            return false;
        }
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max } => code != 0 && (max == 0 || restarts < max),
        }
    }
}

/// The delay before the next restart, given how many restarts in a row
/// came before it without a run of [`BACKOFF_RESET`].
pub fn backoff(streak: u32) -> Duration {
    BACKOFF_START.saturating_mul(1u32.checked_shl(streak.min(31)).unwrap_or(u32::MAX)).min(BACKOFF_CAP)
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::OnFailure { max: 0 } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max } => write!(f, "on-failure:{max}"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

impl FromStr for RestartPolicy {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::BadRestartPolicy(s.to_string());
        match s {
            "" | "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure { max: 0 }),
            _ => {
                let max = s.strip_prefix("on-failure:").ok_or_else(bad)?;
                max.parse::<u32>().ok().filter(|m| *m > 0).map(|max| RestartPolicy::OnFailure { max }).ok_or_else(bad)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RestartPolicy::*;

    #[test]
    fn parses_and_prints() {
        for s in ["no", "always", "on-failure", "on-failure:3", "unless-stopped"] {
            assert_eq!(s.parse::<RestartPolicy>().unwrap().to_string(), s);
        }
        for bad in ["sometimes", "on-failure:", "on-failure:0", "on-failure:-1", "on-failure:x", "always:2"] {
            let e = bad.parse::<RestartPolicy>().unwrap_err();
            assert_eq!(e.code(), crate::Code::InvalidArgument, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn decides_restarts() {
        assert!(!No.wants_restart(1, 0, false));
        assert!(Always.wants_restart(0, 100, false));
        assert!(!Always.wants_restart(1, 0, true), "a user stop is final");
        assert!(!UnlessStopped.wants_restart(1, 0, true));
        assert!(UnlessStopped.wants_restart(0, 0, false));
        assert!(!OnFailure { max: 0 }.wants_restart(0, 0, false), "success is not a failure");
        assert!(OnFailure { max: 0 }.wants_restart(1, 1000, false));
        assert!(OnFailure { max: 2 }.wants_restart(3, 1, false));
        assert!(!OnFailure { max: 2 }.wants_restart(3, 2, false), "at most max restarts");
    }

    #[test]
    fn backoff_doubles_from_100ms_to_a_10s_cap() {
        let ms: Vec<u128> = (0..9).map(|s| backoff(s).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }
}
