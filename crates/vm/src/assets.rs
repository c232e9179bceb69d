//! The guest's kernel and initramfs, as `make vm-assets` writes them: the
//! two files and `assets.json` with their digests. Loading checks both
//! digests and the agent's version, so a missing, altered or stale asset
//! is refused with the command that fixes it. Hashing 80 MB takes about
//! 0.3 s, at every boot: a check that passed is remembered in
//! `assets.verified` by the files' identity (device, inode, size, mtime
//! and ctime, which no write leaves unchanged), and a load whose files
//! still match it skips the hashing.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::VmError;

/// The command that builds the assets (named in every asset error).
pub const FIX: &str = "make vm-assets";
const MANIFEST: &str = "assets.json";
const VERIFIED: &str = "assets.verified";

#[derive(Debug, serde::Deserialize)]
struct Manifest {
    kernel_release: String,
    vmlinux_sha256: String,
    initramfs_sha256: String,
    agent_version: String,
}

/// Checked assets.
#[derive(Debug, Clone)]
pub struct Assets {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The guest kernel's release (`uname -r` in the guest).
    pub kernel_release: String,
}

impl Assets {
    /// Loads and checks the assets in `dir`; `version` is the berth
    /// version the guest agent must have been built from.
    pub fn load(dir: &Path, version: &str) -> Result<Self, VmError> {
        let bad = |what: String| VmError::Assets(format!("{what} in {}; run `{FIX}`", dir.display()));
        let manifest = std::fs::read(dir.join(MANIFEST)).map_err(|e| bad(format!("cannot read {MANIFEST} ({e})")))?;
        let m: Manifest =
            serde_json::from_slice(&manifest).map_err(|e| bad(format!("{MANIFEST} is not valid ({e})")))?;
        if m.agent_version != version {
            return Err(bad(format!("the guest agent is version {}, berth is {version}", m.agent_version)));
        }
        let assets =
            Assets { kernel: dir.join("vmlinux"), initramfs: dir.join("initramfs"), kernel_release: m.kernel_release };
        let files = [dir.join(MANIFEST), assets.kernel.clone(), assets.initramfs.clone()];
        let stamp = identities(&files);
        let remembered = std::fs::read_to_string(dir.join(VERIFIED)).ok();
        if stamp.is_some() && remembered == stamp {
            return Ok(assets);
        }
        for (file, want) in [(&assets.kernel, &m.vmlinux_sha256), (&assets.initramfs, &m.initramfs_sha256)] {
            let got = sha256(file).map_err(|e| bad(format!("cannot read {} ({e})", file.display())))?;
            if &got != want {
                return Err(bad(format!("{} does not match its digest", file.display())));
            }
        }
        if let Some(stamp) = stamp {
            // Best effort: a read-only directory only costs the next load
            // its hashing.
            let tmp = dir.join(format!("{VERIFIED}.{}", std::process::id()));
            if std::fs::write(&tmp, stamp).is_ok() && std::fs::rename(&tmp, dir.join(VERIFIED)).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(assets)
    }
}

/// The identity of each file, one line each; `None` if one is missing.
fn identities(files: &[std::path::PathBuf]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = String::new();
    for f in files {
        let m = std::fs::metadata(f).ok()?;
        let (mtime, ctime) = ((m.mtime(), m.mtime_nsec()), (m.ctime(), m.ctime_nsec()));
        out.push_str(&format!("{} {} {} {} {mtime:?} {ctime:?}\n", f.display(), m.dev(), m.ino(), m.size()));
    }
    Some(out)
}

fn sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hash.update(&buf[..n]),
        }
    }
    Ok(hex::encode(hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_assets(dir: &Path, kernel: &[u8], version: &str) {
        std::fs::write(dir.join("vmlinux"), kernel).unwrap();
        std::fs::write(dir.join("initramfs"), b"cpio").unwrap();
        let manifest = serde_json::json!({
            "kernel_release": "6.1.0-test",
            "vmlinux_sha256": sha256(&dir.join("vmlinux")).unwrap(),
            "initramfs_sha256": sha256(&dir.join("initramfs")).unwrap(),
            "agent_version": version,
        });
        std::fs::write(dir.join(MANIFEST), manifest.to_string()).unwrap();
    }

    #[test]
    fn loads_checked_assets() {
        let dir = tempfile::tempdir().unwrap();
        write_assets(dir.path(), b"elf", "1.0");
        let a = Assets::load(dir.path(), "1.0").unwrap();
        assert_eq!(a.kernel_release, "6.1.0-test");
        assert_eq!(a.kernel, dir.path().join("vmlinux"));
        assert!(dir.path().join(VERIFIED).is_file(), "the check is remembered");
    }

    #[test]
    fn a_remembered_check_holds_only_while_the_files_are_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        write_assets(dir.path(), b"elf", "1.0");
        Assets::load(dir.path(), "1.0").unwrap();
        // Same size, new content: its ctime (and mtime) moved on.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.path().join("vmlinux"), b"ELF").unwrap();
        let err = Assets::load(dir.path(), "1.0").unwrap_err().to_string();
        assert!(err.contains("vmlinux does not match its digest"), "{err}");
    }

    #[test]
    fn refuses_missing_altered_and_stale_assets() {
        let dir = tempfile::tempdir().unwrap();
        let err = Assets::load(dir.path(), "1.0").unwrap_err().to_string();
        assert!(err.contains("cannot read assets.json") && err.contains(FIX), "{err}");
        write_assets(dir.path(), b"elf", "0.9");
        let err = Assets::load(dir.path(), "1.0").unwrap_err().to_string();
        assert!(err.contains("version 0.9, berth is 1.0") && err.contains(FIX), "{err}");
        write_assets(dir.path(), b"elf", "1.0");
        std::fs::write(dir.path().join("vmlinux"), b"changed").unwrap();
        let err = Assets::load(dir.path(), "1.0").unwrap_err().to_string();
        assert!(err.contains("vmlinux does not match its digest"), "{err}");
        std::fs::remove_file(dir.path().join("initramfs")).unwrap();
        write_assets(dir.path(), b"elf", "1.0");
        std::fs::remove_file(dir.path().join(VERIFIED)).ok();
        std::fs::remove_file(dir.path().join("initramfs")).unwrap();
        let err = Assets::load(dir.path(), "1.0").unwrap_err().to_string();
        assert!(err.contains("cannot read") && err.contains("initramfs"), "{err}");
    }
}
