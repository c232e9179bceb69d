//! The ImageService over berth's image store: an image's CRI id is its
//! config digest, its repo tags the berth names pointing at it.

use std::collections::HashMap;

use base64::Engine;
use berth_api::v1 as pb;
use futures_util::StreamExt;
use pb::images_server::Images;
use tonic::Status;

use crate::{Backend, Cri, cri, invalid, ns_i64, req};

/// `registry/repository` of a berth image name (`…:tag` or `…@digest`).
fn repository(name: &str) -> &str {
    if let Some((repo, _)) = name.split_once('@') {
        return repo;
    }
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// Whether a reference names a registry on this host (plain HTTP, as
/// Docker treats 127.0.0.0/8 by default).
fn loopback_registry(reference: &str) -> bool {
    let Some((first, _)) = reference.split_once('/') else { return false };
    let host = match first.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => first.split(':').next().unwrap_or(first),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Basic credentials of CRI's auth config (`auth` is base64 `user:pass`).
fn credentials(auth: Option<&cri::AuthConfig>) -> Result<(String, String), Status> {
    let Some(a) = auth else { return Ok(Default::default()) };
    if !a.identity_token.is_empty() || !a.registry_token.is_empty() {
        return Err(Status::unimplemented("berth pulls with basic credentials or anonymous tokens only"));
    }
    if a.auth.is_empty() {
        return Ok((a.username.clone(), a.password.clone()));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(a.auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| invalid("auth.auth is not base64 of user:password"))?;
    let (user, pass) = decoded.split_once(':').ok_or_else(|| invalid("auth.auth is not base64 of user:password"))?;
    Ok((user.to_string(), pass.to_string()))
}

/// The CRI image of the berth names sharing one config digest.
fn cri_image(names: &[&pb::Image], user: &str) -> cri::Image {
    let first = names[0];
    let mut repo_digests: Vec<String> =
        names.iter().map(|i| format!("{}@{}", repository(&i.name), i.manifest_digest)).collect();
    repo_digests.dedup();
    let name = user.split(':').next().unwrap_or_default();
    let (uid, username) = match name.parse::<i64>() {
        Ok(value) => (Some(cri::Int64Value { value }), String::new()),
        Err(_) => (None, name.to_string()),
    };
    cri::Image {
        id: first.config_digest.clone(),
        repo_tags: names.iter().map(|i| i.name.clone()).collect(),
        repo_digests,
        size: first.size,
        uid,
        username,
        spec: Some(cri::ImageSpec { image: first.config_digest.clone(), ..Default::default() }),
        pinned: false,
    }
}

impl<B: Backend> Cri<B> {
    async fn all_images(&self) -> Result<Vec<pb::Image>, Status> {
        Ok(Images::list(&*self.b, req(pb::ImageListRequest {})).await?.into_inner().images)
    }

    /// Berth image names → CRI image ids.
    pub(crate) async fn image_refs(&self) -> Result<HashMap<String, String>, Status> {
        Ok(self.all_images().await?.into_iter().map(|i| (i.name, i.config_digest)).collect())
    }

    /// The image a CRI reference names: a berth name, an image id (config
    /// digest, with or without `sha256:`, as PullImage returned it) or a
    /// repo digest. `None` if none is present.
    pub(crate) async fn resolve_image(&self, reference: &str) -> Result<Option<pb::Image>, Status> {
        if reference.is_empty() {
            return Err(invalid("an image reference is required"));
        }
        match Images::get(&*self.b, req(pb::ImageRef { reference: reference.to_string() })).await {
            Ok(i) => return Ok(Some(i.into_inner())),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {}
            Err(s) => return Err(s),
        }
        let id = if reference.contains(':') { reference.to_string() } else { format!("sha256:{reference}") };
        Ok(self
            .all_images()
            .await?
            .into_iter()
            .find(|i| i.config_digest == id || format!("{}@{}", repository(&i.name), i.manifest_digest) == reference))
    }

    /// Every berth name of the image `reference` resolves to, and its user.
    async fn image_group(&self, reference: &str) -> Result<Option<(Vec<pb::Image>, String)>, Status> {
        let Some(image) = self.resolve_image(reference).await? else { return Ok(None) };
        let group: Vec<pb::Image> =
            self.all_images().await?.into_iter().filter(|i| i.config_digest == image.config_digest).collect();
        let inspect = Images::inspect(&*self.b, req(pb::ImageRef { reference: image.name.clone() })).await?;
        Ok(Some((group, inspect.into_inner().user)))
    }

    pub(crate) async fn list_images(&self, r: cri::ListImagesRequest) -> Result<cri::ListImagesResponse, Status> {
        let wanted = r.filter.and_then(|f| f.image).map(|s| s.image).unwrap_or_default();
        let all = self.all_images().await?;
        let mut ids: Vec<&str> = Vec::new();
        for i in &all {
            if !ids.contains(&i.config_digest.as_str()) {
                ids.push(&i.config_digest);
            }
        }
        let mut images = Vec::new();
        for id in ids {
            let group: Vec<&pb::Image> = all.iter().filter(|i| i.config_digest == id).collect();
            if !wanted.is_empty() && !group.iter().any(|i| i.name == wanted || i.config_digest == wanted) {
                continue;
            }
            let inspect = Images::inspect(&*self.b, req(pb::ImageRef { reference: group[0].name.clone() })).await?;
            images.push(cri_image(&group, &inspect.into_inner().user));
        }
        Ok(cri::ListImagesResponse { images })
    }

    pub(crate) async fn image_status(&self, r: cri::ImageStatusRequest) -> Result<cri::ImageStatusResponse, Status> {
        let reference = r.image.map(|s| s.image).unwrap_or_default();
        let Some((group, user)) = self.image_group(&reference).await? else {
            return Ok(cri::ImageStatusResponse::default());
        };
        let refs: Vec<&pb::Image> = group.iter().collect();
        let mut info = HashMap::new();
        if r.verbose {
            let first = refs[0];
            let verbose = serde_json::json!({
                "names": refs.iter().map(|i| &i.name).collect::<Vec<_>>(),
                "manifest_digest": first.manifest_digest,
                "config_digest": first.config_digest,
                "chain_id": first.chain_id,
                "diff_ids": first.diff_ids,
                "created": first.created,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(cri::ImageStatusResponse { image: Some(cri_image(&refs, &user)), info })
    }

    pub(crate) async fn pull_image(&self, r: cri::PullImageRequest) -> Result<cri::PullImageResponse, Status> {
        let reference = r.image.map(|s| s.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(invalid("image.image is required"));
        }
        let (username, password) = credentials(r.auth.as_ref())?;
        let pull = pb::PullRequest {
            insecure: loopback_registry(&reference),
            reference,
            platform: String::new(),
            username,
            password,
        };
        let mut progress = std::pin::pin!(Images::pull(&*self.b, req(pull)).await?.into_inner());
        while let Some(event) = progress.next().await {
            if let Some(image) = event?.image {
                return Ok(cri::PullImageResponse { image_ref: image.config_digest });
            }
        }
        Err(Status::internal("the pull ended without an image"))
    }

    /// Removes every name of the image (the content goes once no container
    /// needs it); an image already gone is fine.
    pub(crate) async fn remove_image(&self, r: cri::RemoveImageRequest) -> Result<(), Status> {
        let reference = r.image.map(|s| s.image).unwrap_or_default();
        let Some((group, _)) = self.image_group(&reference).await? else { return Ok(()) };
        for image in group {
            let remove = pb::ImageRemoveRequest { reference: image.name, force: true };
            crate::gone_ok(Images::remove(&*self.b, req(remove)).await.map(drop))?;
        }
        Ok(())
    }

    /// Bytes and inodes under berthd's image storage: content, snapshots.
    pub(crate) fn image_fs_info(&self) -> cri::ImageFsInfoResponse {
        let timestamp = ns_i64(berth_model::now_ns());
        let image_filesystems = self
            .cfg
            .image_dirs
            .iter()
            .map(|dir| {
                let (bytes, inodes) = usage(dir);
                cri::FilesystemUsage {
                    timestamp,
                    fs_id: Some(cri::FilesystemIdentifier { mountpoint: dir.to_string_lossy().into_owned() }),
                    used_bytes: Some(cri::UInt64Value { value: bytes }),
                    inodes_used: Some(cri::UInt64Value { value: inodes }),
                }
            })
            .collect();
        cri::ImageFsInfoResponse { image_filesystems, container_filesystems: Vec::new() }
    }
}

/// Bytes (allocated blocks) and inodes of a tree, hard links counted once.
fn usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&path) else { continue };
        if !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        bytes += md.blocks() * 512;
        inodes += 1;
        if md.is_dir() {
            stack.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_and_loopback_registries() {
        assert_eq!(repository("docker.io/library/busybox:1.36"), "docker.io/library/busybox");
        assert_eq!(repository("127.0.0.1:5000/app:v1"), "127.0.0.1:5000/app");
        assert_eq!(repository("127.0.0.1:5000/app"), "127.0.0.1:5000/app");
        assert_eq!(repository("reg/app@sha256:ab"), "reg/app");
        assert!(loopback_registry("127.0.0.1:5000/app:v1"));
        assert!(loopback_registry("localhost:5000/app"));
        assert!(loopback_registry("[::1]:5000/app"));
        assert!(!loopback_registry("registry.example:5000/app"));
        assert!(!loopback_registry("busybox"));
    }

    #[test]
    fn credentials_come_from_either_form() {
        let a = |user: &str, pass: &str, auth: &str| cri::AuthConfig {
            username: user.into(),
            password: pass.into(),
            auth: auth.into(),
            ..Default::default()
        };
        assert_eq!(credentials(None).unwrap(), (String::new(), String::new()));
        assert_eq!(credentials(Some(&a("u", "p", ""))).unwrap(), ("u".into(), "p".into()));
        // base64("user:pa:ss")
        assert_eq!(credentials(Some(&a("", "", "dXNlcjpwYTpzcw=="))).unwrap(), ("user".into(), "pa:ss".into()));
        assert_eq!(credentials(Some(&a("", "", "!!"))).unwrap_err().code(), tonic::Code::InvalidArgument);
        let token = cri::AuthConfig { identity_token: "t".into(), ..Default::default() };
        assert_eq!(credentials(Some(&token)).unwrap_err().code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn usage_counts_blocks_and_inodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("d/b")).unwrap();
        let (bytes, inodes) = usage(dir.path());
        // The directory, its subdirectory and one file (linked twice).
        assert_eq!(inodes, 3);
        assert!(bytes >= 10_000, "{bytes}");
    }
}
