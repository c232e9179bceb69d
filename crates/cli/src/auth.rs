//! Registry credentials of `berth login`/`logout`: one JSON file,
//! `$HOME/.config/berth/auth.json` (mode 0600, its directory 0700),
//! `{"auths": {"REGISTRY": {"username": .., "password": ..}}}`, written
//! atomically (temp file created 0600, synced, renamed). `pull` and `run`
//! send the stored credentials of an image's registry when no `-u` is
//! given; berthd never stores them.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::client::Failure;

/// One registry's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

fn fail(what: &str, path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure::new(format!("{what} {}: {e}", path.display()))
}

/// `$HOME/.config/berth/auth.json`.
pub fn auth_file() -> Result<PathBuf, Failure> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| Failure::new("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".config/berth/auth.json"))
}

/// The registry host of an image reference, as `docker` decides it: the
/// first component when it has a dot or a port or is `localhost`, else
/// Docker Hub.
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

fn read_all(path: &Path) -> Result<BTreeMap<String, Credentials>, Failure> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(fail("read", path, e)),
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| fail("parse", path, e))?;
    let mut out = BTreeMap::new();
    if let Some(auths) = v.get("auths").and_then(Value::as_object) {
        for (registry, c) in auths {
            let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            out.insert(registry.clone(), Credentials { username: field("username"), password: field("password") });
        }
    }
    Ok(out)
}

fn write_all(path: &Path, all: &BTreeMap<String, Credentials>) -> Result<(), Failure> {
    let dir = path.parent().ok_or_else(|| Failure::new("the credentials file has no directory"))?;
    fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| fail("chmod", dir, e))?;
    let auths: serde_json::Map<String, Value> =
        all.iter().map(|(r, c)| (r.clone(), json!({"username": c.username, "password": c.password}))).collect();
    let body = serde_json::to_vec_pretty(&json!({ "auths": auths })).map_err(|e| fail("encode", path, e))?;
    let tmp = dir.join(format!(".auth.json.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail("create", &tmp, e))?;
        f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(|e| fail("chmod", &tmp, e))?;
        f.write_all(&body).and_then(|()| f.sync_all()).map_err(|e| fail("write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| fail("rename to", path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// The stored credentials for `registry`, if any.
pub fn lookup(registry: &str) -> Result<Option<Credentials>, Failure> {
    let Ok(path) = auth_file() else { return Ok(None) };
    Ok(read_all(&path)?.remove(registry))
}

fn read_password(from_stdin: bool) -> Result<String, Failure> {
    if !from_stdin {
        eprint!("Password: ");
    }
    let mut s = String::new();
    if from_stdin {
        std::io::stdin().read_to_string(&mut s).map_err(|e| Failure::new(format!("read password: {e}")))?;
    } else {
        std::io::stdin().read_line(&mut s).map_err(|e| Failure::new(format!("read password: {e}")))?;
    }
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

pub fn login(user: Option<String>, password_stdin: bool, registry: String) -> Result<i32, Failure> {
    if registry.is_empty() || registry.contains('/') || registry.chars().any(char::is_whitespace) {
        return Err(Failure::new(format!("invalid registry {registry:?}: give a host[:port]")));
    }
    let username = match user {
        Some(u) => u,
        None if password_stdin => return Err(Failure::new("--password-stdin needs --username")),
        None => {
            eprint!("Username: ");
            let mut s = String::new();
            std::io::stdin().read_line(&mut s).map_err(|e| Failure::new(format!("read username: {e}")))?;
            s.trim().to_string()
        }
    };
    if username.is_empty() {
        return Err(Failure::new("an empty username"));
    }
    let password = read_password(password_stdin)?;
    let path = auth_file()?;
    let mut all = read_all(&path)?;
    all.insert(registry.clone(), Credentials { username, password });
    write_all(&path, &all)?;
    println!("credentials for {registry} stored in {}", path.display());
    Ok(0)
}

pub fn logout(registry: String) -> Result<i32, Failure> {
    let path = auth_file()?;
    let mut all = read_all(&path)?;
    if all.remove(&registry).is_none() {
        return Err(Failure::new(format!("not logged in to {registry}")));
    }
    write_all(&path, &all)?;
    println!("removed the credentials for {registry}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_of_references() {
        assert_eq!(registry_of("127.0.0.1:5000/test:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("ghcr.io/a/b"), "ghcr.io");
        assert_eq!(registry_of("localhost/a"), "localhost");
    }

    #[test]
    fn credentials_are_written_0600_and_read_back() {
        let dir = std::env::temp_dir().join(format!("berth-auth-test-{}", std::process::id()));
        let path = dir.join("berth/auth.json");
        let mut all = BTreeMap::new();
        all.insert("r:5000".to_string(), Credentials { username: "u".into(), password: "p w".into() });
        write_all(&path, &all).map_err(|f| f.message).expect("write");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(dir.join("berth")).expect("stat").permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(read_all(&path).map_err(|f| f.message).expect("read"), all);
        let _ = fs::remove_dir_all(&dir);
    }
}
