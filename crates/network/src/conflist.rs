//! CNI network configuration lists (`.conflist`, spec 1.0.0 and 0.4.0),
//! parsed and checked before any plugin runs. A single-plugin `.conf` is
//! wrapped into a list of one, as libcni does. Each plugin's object is kept
//! verbatim so that `cni.rs` can inject `name`, `cniVersion`, `prevResult`
//! and `runtimeConfig` into exactly what the administrator wrote.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Error, Result};

/// Larger files are refused: a config list is a few hundred bytes.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The CNI spec versions whose config and result formats berth speaks.
pub(crate) const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "0.4.0"];

/// A validated network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConfList {
    pub name: String,
    pub cni_version: String,
    /// Plugin objects in order, each with a bare-file-name `type`.
    pub plugins: Vec<Value>,
    /// `disableCheck`: CHECK is a no-op for this network.
    pub disable_check: bool,
}

impl ConfList {
    /// Reads and parses the file at `path` (at most `MAX_CONFIG_BYTES`).
    pub fn load(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(bad(path, format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        Self::from_bytes(&bytes, path)
    }

    /// Parses a config list (or a single-plugin config); `path` only names
    /// the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(path, format!("not valid JSON: {e}")))?;
        Self::from_value(value, path)
    }

    /// Validates an already parsed config list or single-plugin config.
    pub fn from_value(value: Value, path: &Path) -> Result<Self> {
        let Value::Object(mut top) = value else {
            return Err(bad(path, "not a JSON object".into()));
        };
        let name = string_field(&top, "name", path)?;
        validate_name(&name).map_err(|reason| bad(path, reason))?;
        let cni_version = string_field(&top, "cniVersion", path)?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(bad(
                path,
                format!("cniVersion {cni_version:?} is not supported (use {})", SUPPORTED_VERSIONS.join(" or ")),
            ));
        }
        let disable_check = match top.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad(path, "disableCheck must be true or false".into())),
        };
        let plugins = match top.remove("plugins") {
            Some(Value::Array(plugins)) => plugins,
            Some(_) => return Err(bad(path, "plugins must be an array".into())),
            // A single-plugin `.conf`: the whole object is the plugin.
            None if top.contains_key("type") => vec![Value::Object(top)],
            None => return Err(bad(path, "neither plugins nor type is given".into())),
        };
        if plugins.is_empty() {
            return Err(bad(path, "plugins is empty".into()));
        }
        for (i, plugin) in plugins.iter().enumerate() {
            let Value::Object(fields) = plugin else {
                return Err(bad(path, format!("plugins[{i}] is not a JSON object")));
            };
            let ty = fields.get("type").and_then(Value::as_str).unwrap_or_default();
            validate_type(ty).map_err(|reason| bad(path, format!("plugins[{i}]: {reason}")))?;
        }
        Ok(ConfList { name, cni_version, plugins, disable_check })
    }

    /// The list as JSON, the form kept in attachment caches; `from_value`
    /// reads it back.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
        })
    }
}

/// The `type` of a plugin object of a validated list: its binary's name.
pub(crate) fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn bad(path: &Path, reason: String) -> Error {
    Error::BadConfig { path: PathBuf::from(path), reason }
}

fn string_field(top: &Map<String, Value>, key: &str, path: &Path) -> Result<String> {
    match top.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(bad(path, format!("{key} is missing"))),
        Some(_) => Err(bad(path, format!("{key} must be a string"))),
    }
}

/// CNI network names: `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`.
fn validate_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) && name.len() <= 255 {
        Ok(())
    } else {
        Err(format!("name {:?} is not a valid network name", name.chars().take(64).collect::<String>()))
    }
}

/// A plugin type names a file in a plugin directory, nothing else.
fn validate_type(ty: &str) -> std::result::Result<(), String> {
    if ty.is_empty() {
        return Err("type is missing".into());
    }
    if ty.contains('/') || ty.contains('\0') || ty == "." || ty == ".." || ty.len() > 255 {
        return Err(format!("type {:?} is not a plugin file name", ty.chars().take(64).collect::<String>()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ConfList> {
        ConfList::from_bytes(json.as_bytes(), Path::new("/etc/cni/net.d/x.conflist"))
    }

    fn reason(json: &str) -> String {
        match parse(json) {
            Err(Error::BadConfig { path, reason }) => {
                assert_eq!(path, Path::new("/etc/cni/net.d/x.conflist"));
                reason
            }
            other => panic!("expected BadConfig, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_list_and_keeps_plugins_verbatim() {
        let list = parse(
            r#"{"cniVersion":"1.0.0","name":"web","disableCheck":true,"plugins":[
                {"type":"bridge","bridge":"br9","ipam":{"type":"host-local","ranges":[[{"subnet":"10.9.0.0/24"}]]}},
                {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        assert_eq!((list.name.as_str(), list.cni_version.as_str(), list.disable_check), ("web", "1.0.0", true));
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(plugin_type(&list.plugins[0]), "bridge");
        assert_eq!(list.plugins[0]["ipam"]["ranges"][0][0]["subnet"], "10.9.0.0/24");
        assert_eq!(list.plugins[1]["capabilities"]["portMappings"], true);
        let again = ConfList::from_value(list.to_value(), Path::new("cache")).unwrap();
        assert_eq!(again, list);
    }

    #[test]
    fn wraps_a_single_plugin_conf() {
        let list = parse(r#"{"cniVersion":"0.4.0","name":"one","type":"bridge","bridge":"b1"}"#).unwrap();
        assert_eq!((list.name.as_str(), list.cni_version.as_str(), list.disable_check), ("one", "0.4.0", false));
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0]["bridge"], "b1");
    }

    #[test]
    fn rejects_malformed_lists() {
        assert!(reason("{").contains("not valid JSON"));
        assert!(reason("[]").contains("not a JSON object"));
        assert!(reason(r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#).contains("name is missing"));
        assert!(reason(r#"{"cniVersion":"1.0.0","name":"a b","plugins":[{"type":"x"}]}"#).contains("network name"));
        assert!(reason(r#"{"name":"n","plugins":[{"type":"x"}]}"#).contains("cniVersion is missing"));
        assert!(reason(r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}"#).contains("not supported"));
        assert!(reason(r#"{"cniVersion":"1.0.0","name":"n"}"#).contains("neither plugins nor type"));
        assert!(reason(r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#).contains("empty"));
        assert!(reason(r#"{"cniVersion":"1.0.0","name":"n","plugins":{}}"#).contains("must be an array"));
        assert!(reason(r#"{"cniVersion":"1.0.0","name":"n","plugins":[1]}"#).contains("plugins[0] is not"));
        assert!(reason(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"},{}]}"#).contains("plugins[1]"));
        for ty in ["../bridge", "/usr/bin/id", "..", "a/b", ""] {
            let json = format!(r#"{{"cniVersion":"1.0.0","name":"n","plugins":[{{"type":"{ty}"}}]}}"#);
            assert!(reason(&json).contains("plugins[0]"), "{ty}");
        }
        assert!(
            reason(r#"{"cniVersion":"1.0.0","name":"n","disableCheck":"yes","plugins":[{"type":"x"}]}"#)
                .contains("disableCheck")
        );
    }

    #[test]
    fn load_caps_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.conflist");
        std::fs::write(&big, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        match ConfList::load(&big) {
            Err(Error::BadConfig { reason, .. }) => assert!(reason.contains("larger than")),
            other => panic!("expected BadConfig, got {other:?}"),
        }
        let ok = dir.path().join("ok.conflist");
        std::fs::write(&ok, r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"loopback"}]}"#).unwrap();
        assert_eq!(ConfList::load(&ok).unwrap().name, "n");
        assert!(matches!(ConfList::load(&dir.path().join("none")), Err(Error::Io { .. })));
    }
}
