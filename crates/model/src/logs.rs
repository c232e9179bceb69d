//! How berth bounds the log of a container it writes itself (SPEC B17):
//! the live file holds at most `max_size` bytes, then becomes `NAME.1`
//! (older ones move up to `NAME.2` …) and a new one starts; at most
//! `max_files` files in all, the oldest dropped.

use crate::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogRotation {
    /// Bytes per file; 0 never rotates (the log is unbounded).
    pub max_size: u64,
    /// Files kept, the live one included.
    pub max_files: u32,
}

impl LogRotation {
    /// docker's and kubelet's usual bound: 10 MiB in each of 3 files.
    pub const DEFAULT: LogRotation = LogRotation { max_size: 10 << 20, max_files: 3 };
    /// The smallest file that is rotated: one copy batch and its framing fit.
    pub const MIN_SIZE: u64 = 64 << 10;
    pub const MAX_FILES: u32 = 100;

    /// A checked bound.
    pub fn new(max_size: u64, max_files: u32) -> Result<LogRotation, ModelError> {
        let bad = |reason: String| ModelError::BadLogRotation(reason);
        if max_size != 0 && max_size < Self::MIN_SIZE {
            return Err(bad(format!("log max size {max_size} is below {} bytes (0: unbounded)", Self::MIN_SIZE)));
        }
        if !(1..=Self::MAX_FILES).contains(&max_files) {
            return Err(bad(format!("log max files {max_files} is not within 1..={}", Self::MAX_FILES)));
        }
        Ok(LogRotation { max_size, max_files })
    }

    /// The bound with either part replaced.
    pub fn with(self, max_size: Option<u64>, max_files: Option<u32>) -> Result<LogRotation, ModelError> {
        LogRotation::new(max_size.unwrap_or(self.max_size), max_files.unwrap_or(self.max_files))
    }

    /// The `n`th rotated file of the log at `path` (`n` ≥ 1).
    pub fn rotated(path: &std::path::Path, n: u32) -> std::path::PathBuf {
        let mut s = path.as_os_str().to_os_string();
        s.push(format!(".{n}"));
        s.into()
    }
}

/// Parses 512, 64k, 10m, 1g (powers of 1024, an optional trailing `b`).
pub fn parse_size(s: &str) -> Result<u64, ModelError> {
    let bad = || ModelError::BadSize(s.to_string());
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        _ => (lower, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        assert_eq!(LogRotation::new(10 << 20, 3), Ok(LogRotation::DEFAULT));
        assert!(LogRotation::new(0, 1).is_ok());
        assert!(LogRotation::new(1000, 3).is_err());
        assert!(LogRotation::new(1 << 20, 0).is_err());
        assert!(LogRotation::new(1 << 20, 101).is_err());
        let r = LogRotation::DEFAULT.with(Some(1 << 20), None).unwrap();
        assert_eq!((r.max_size, r.max_files), (1 << 20, 3));
        assert_eq!(LogRotation::rotated(std::path::Path::new("/l/c.log"), 2), std::path::Path::new("/l/c.log.2"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("1gb"), Ok(1 << 30));
        for bad in ["", "m", "-1", "1.5m", "99999999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
