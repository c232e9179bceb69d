//! Exit statuses as recorded by shims and reported to callers.

use serde::{Deserialize, Serialize};

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it):
/// the unit of every time berth records.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The code reported when a shim died without recording an exit (SPEC B19).
pub const UNKNOWN_EXIT_CODE: u32 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code; a death by signal N is 128+N.
    pub code: u32,
    /// Nanoseconds since the Unix epoch.
    pub exited_at_ns: u64,
}

impl ExitStatus {
    /// "Unknown exit" (SPEC B19): the process ended but nobody recorded how.
    pub fn unknown(exited_at_ns: u64) -> Self {
        ExitStatus { code: UNKNOWN_EXIT_CODE, exited_at_ns }
    }

    /// Encodes a raw wait status the way shells and containerd do.
    pub fn from_wait(exited_code: Option<i32>, signal: Option<i32>, exited_at_ns: u64) -> Self {
        let code = match (exited_code, signal) {
            (Some(c), _) => c as u32,
            (None, Some(s)) => 128 + s as u32,
            (None, None) => return Self::unknown(exited_at_ns),
        };
        ExitStatus { code, exited_at_ns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_becomes_128_plus_n() {
        assert_eq!(ExitStatus::from_wait(None, Some(9), 1).code, 137);
        assert_eq!(ExitStatus::from_wait(Some(3), None, 1).code, 3);
    }
}
