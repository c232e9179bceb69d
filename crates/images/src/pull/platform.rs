//! Target platforms (`os/arch[/variant]`) and their selection from an OCI
//! image index or a Docker manifest list.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageIndex};

use crate::ImageError;

/// The platform an image is pulled for; `linux/amd64` unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform { os: "linux".into(), architecture: "amd64".into(), variant: None }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = ImageError;

    /// Parses `os/arch[/variant]`, normalising the usual aliases
    /// (`x86_64` → `amd64`, `aarch64` → `arm64`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ImageError::InvalidArgument(format!("invalid platform {s:?}: want os/arch[/variant]"));
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(invalid());
        }
        let architecture = match parts[1].to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            other => other.to_string(),
        };
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture,
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl Platform {
    /// Whether an index entry's platform satisfies this one. Without a
    /// requested variant any variant matches; `arm64` treats a missing
    /// variant and `v8` as the same.
    fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if os != self.os || architecture != self.architecture {
            return false;
        }
        let Some(want) = self.variant.as_deref() else {
            return true;
        };
        match variant {
            Some(have) => have == want,
            None => self.architecture == "arm64" && want == "v8",
        }
    }

    /// The index entry to pull for this platform: the first match, an exact
    /// variant match preferred. Entries without a platform are never chosen.
    pub(crate) fn select<'a>(&self, index: &'a ImageIndex) -> Result<&'a Descriptor, ImageError> {
        let mut candidates = index.manifests().iter().filter_map(|entry| {
            let p = entry.platform().as_ref()?;
            let (os, arch) = (p.os().to_string(), p.architecture().to_string());
            let variant = p.variant().as_deref();
            self.matches(&os, &arch, variant).then_some((entry, variant))
        });
        let first = candidates.next();
        let exact = first.into_iter().chain(candidates).find(|(_, variant)| *variant == self.variant.as_deref());
        exact
            .or(first)
            .map(|(entry, _)| entry)
            .ok_or_else(|| ImageError::NotFound(format!("a manifest for platform {self} in the image index")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut platform = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    platform["variant"] = serde_json::json!(v);
                }
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{}", format!("{i}").repeat(64)),
                    "size": 1,
                    "platform": platform,
                })
            })
            .collect();
        let json = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        serde_json::from_value(json).expect("test index parses")
    }

    #[test]
    fn parses_and_normalises() {
        let p: Platform = "linux/x86_64".parse().expect("parses");
        assert_eq!(p, Platform::default());
        let p: Platform = "linux/arm/v7".parse().expect("parses");
        assert_eq!(p.to_string(), "linux/arm/v7");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64", "../x"] {
            let err = bad.parse::<Platform>().expect_err(bad);
            assert!(matches!(err, ImageError::InvalidArgument(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn selects_by_os_arch_and_variant() {
        let idx = index(&[
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "amd64", None),
            ("linux", "arm64", None),
        ]);
        let pick = |s: &str| {
            let p: Platform = s.parse().expect("parses");
            p.select(&idx).map(|d| d.digest().to_string())
        };
        let digest = |i: usize| format!("sha256:{}", format!("{i}").repeat(64));
        assert_eq!(pick("linux/amd64").expect("amd64"), digest(2));
        assert_eq!(pick("linux/arm/v7").expect("arm v7"), digest(1));
        assert_eq!(pick("linux/arm").expect("arm"), digest(0));
        assert_eq!(pick("linux/arm64/v8").expect("arm64 v8"), digest(3));
        let err = pick("linux/s390x").expect_err("no s390x");
        assert!(matches!(err, ImageError::NotFound(_)), "{err}");
        let err = pick("windows/amd64").expect_err("no windows");
        assert!(matches!(err, ImageError::NotFound(_)), "{err}");
    }
}
