//! Fetching and recognising manifests: OCI image indexes and Docker
//! manifest lists, OCI and Docker schema-2 image manifests; and the one
//! mapping of registry-client errors to `ImageError`.

use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_spec::image::{ImageIndex, ImageManifest};

use super::verify::{Hasher, check_bytes};
use super::{BlobInfo, BlobKind};
use crate::ImageError;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// A manifest as the registry served it, recognised.
pub(crate) struct Fetched {
    pub(crate) blob: BlobInfo,
    pub(crate) bytes: Vec<u8>,
    pub(crate) parsed: Parsed,
}

pub(crate) enum Parsed {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

/// Fetches the manifest `reference` names. With `expected` (an index
/// entry) the bytes must match its digest and size; otherwise the digest
/// is computed from the bytes (and checked against a `@digest` reference).
pub(crate) async fn fetch(
    client: &oci_client::Client,
    reference: &Reference,
    auth: &oci_client::secrets::RegistryAuth,
    expected: Option<&BlobInfo>,
) -> Result<Fetched, ImageError> {
    let (body, _) = client
        .pull_manifest_raw(reference, auth, ACCEPTED)
        .await
        .map_err(|e| registry_error(&format!("manifest {reference}"), e))?;
    let bytes = body.to_vec();
    let (media_type, parsed) = parse(&bytes)?;
    let blob = match expected {
        Some(entry) => {
            check_bytes(entry, &bytes)?;
            BlobInfo { media_type, ..entry.clone() }
        }
        None => {
            let wanted = reference.digest().unwrap_or("sha256:");
            let mut hasher = Hasher::for_digest(wanted)?;
            hasher.update(&bytes);
            let digest = hasher.digest();
            if let Some(wanted) = reference.digest()
                && wanted != digest
            {
                return Err(ImageError::DigestMismatch { expected: wanted.to_string(), actual: digest });
            }
            BlobInfo { digest, size: bytes.len() as u64, media_type, kind: BlobKind::Manifest }
        }
    };
    let kind = match parsed {
        Parsed::Index(_) => BlobKind::Index,
        Parsed::Manifest(_) => BlobKind::Manifest,
    };
    Ok(Fetched { blob: BlobInfo { kind, ..blob }, bytes, parsed })
}

/// Recognises `bytes` as an index or an image manifest, by `mediaType`
/// when present and by shape otherwise; anything else (schema 1,
/// artifacts) is refused.
pub(crate) fn parse(bytes: &[u8]) -> Result<(String, Parsed), ImageError> {
    let invalid = |e: &dyn std::fmt::Display| ImageError::InvalidArgument(format!("malformed manifest: {e}"));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| invalid(&e))?;
    let schema = value.get("schemaVersion").and_then(|v| v.as_u64());
    if schema != Some(2) {
        return Err(ImageError::FailedPrecondition(format!(
            "unsupported manifest schema version {}",
            schema.map_or("(none)".to_string(), |v| v.to_string())
        )));
    }
    let media_type = match value.get("mediaType").and_then(|v| v.as_str()) {
        Some(m) => m.to_string(),
        None if value.get("manifests").is_some() => OCI_INDEX.to_string(),
        None if value.get("config").is_some() => OCI_MANIFEST.to_string(),
        None => return Err(invalid(&"neither an index nor an image manifest")),
    };
    let parsed = match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => Parsed::Index(Box::new(serde_json::from_value(value).map_err(|e| invalid(&e))?)),
        OCI_MANIFEST | DOCKER_MANIFEST => {
            Parsed::Manifest(Box::new(serde_json::from_value(value).map_err(|e| invalid(&e))?))
        }
        other => {
            return Err(ImageError::FailedPrecondition(format!("unsupported manifest media type {other}")));
        }
    };
    Ok((media_type, parsed))
}

/// The one mapping of registry-client errors: refusals of credentials are
/// `Unauthorized`, unknown names and blobs `NotFound`, content that does
/// not match its digest `DigestMismatch`, the rest `Registry`.
pub(crate) fn registry_error(what: &str, error: OciDistributionError) -> ImageError {
    use OciDistributionError as E;
    match error {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
            ImageError::Unauthorized(format!("{what}: {error}"))
        }
        E::RegistryError { ref envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let any = |wanted: &[OciErrorCode]| codes.iter().any(|c| wanted.contains(c));
            if any(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                ImageError::Unauthorized(format!("{what}: {error}"))
            } else if any(&[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::BlobUnknown,
                OciErrorCode::NotFound,
            ]) {
                ImageError::NotFound(what.to_string())
            } else {
                ImageError::Registry(format!("{what}: {error}"))
            }
        }
        E::ServerError { code: 401 | 403, .. } => ImageError::Unauthorized(format!("{what}: {error}")),
        E::ServerError { code: 404, .. } => ImageError::NotFound(what.to_string()),
        E::DigestError(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
            ImageError::DigestMismatch { expected, actual }
        }
        other => ImageError::Registry(format!("{what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_each_manifest_kind() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let desc = serde_json::json!({"mediaType": "x", "digest": digest, "size": 1});
        let manifest = |media: Option<&str>| {
            let mut v = serde_json::json!({"schemaVersion": 2, "config": desc, "layers": [desc]});
            if let Some(m) = media {
                v["mediaType"] = serde_json::json!(m);
            }
            serde_json::to_vec(&v).expect("json")
        };
        let index = |media: &str| {
            let v = serde_json::json!({"schemaVersion": 2, "mediaType": media, "manifests": [desc]});
            serde_json::to_vec(&v).expect("json")
        };
        for (bytes, want, is_index) in [
            (manifest(Some(DOCKER_MANIFEST)), DOCKER_MANIFEST, false),
            (manifest(Some(OCI_MANIFEST)), OCI_MANIFEST, false),
            (manifest(None), OCI_MANIFEST, false),
            (index(OCI_INDEX), OCI_INDEX, true),
            (index(DOCKER_LIST), DOCKER_LIST, true),
        ] {
            let (media, parsed) = parse(&bytes).expect(want);
            assert_eq!(media, want);
            assert_eq!(matches!(parsed, Parsed::Index(_)), is_index, "{want}");
        }
    }

    #[test]
    fn refuses_schema_one_and_unknown_types() {
        let v1 = br#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#;
        assert!(matches!(parse(v1), Err(ImageError::FailedPrecondition(_))));
        let artifact = br#"{"schemaVersion": 2, "mediaType": "application/x-thing", "config": {}}"#;
        assert!(matches!(parse(artifact), Err(ImageError::FailedPrecondition(_))));
        assert!(matches!(parse(b"not json"), Err(ImageError::InvalidArgument(_))));
    }
}
