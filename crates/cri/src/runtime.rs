//! Version, Status (RuntimeReady, NetworkReady), UpdateRuntimeConfig and
//! RuntimeConfig.

use std::path::Path;

use tonic::Status;

use crate::{Backend, Cri, cri, lock};

/// CRI's API version.
const API_VERSION: &str = "v1";
/// The runtime handlers (RuntimeClass) berth serves; "" is berthd's default.
const HANDLERS: [&str; 5] = ["", "embedded", "runc", "crun", berth_model::VM_RUNTIME];

/// Whether pods can get a network: a CNI config list written by an
/// administrator, or the plugins berth's own default network is made of.
fn network_ready(cfg: &crate::Config) -> Result<(), String> {
    if cfg.network == "host" || cfg.network == "none" {
        return Ok(());
    }
    let has_conf = std::fs::read_dir(&cfg.cni_conf_dir).into_iter().flatten().flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.ends_with(".conflist") || name.ends_with(".conf") || name.ends_with(".json")
    });
    let plugin = |name: &str| cfg.cni_bin_dirs.iter().any(|d| Path::new(d).join(name).is_file());
    if has_conf || (plugin("bridge") && plugin("host-local")) {
        return Ok(());
    }
    Err(format!(
        "no CNI config list in {} and no bridge and host-local plugins in {} for berth's default network",
        cfg.cni_conf_dir.display(),
        cfg.cni_bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
    ))
}

impl<B: Backend> Cri<B> {
    pub(crate) fn version(&self) -> cri::VersionResponse {
        cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: self.cfg.runtime_version.clone(),
            runtime_api_version: API_VERSION.into(),
        }
    }

    pub(crate) fn status(&self, r: cri::StatusRequest) -> cri::StatusResponse {
        let runtime = cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        let network = match network_ready(&self.cfg) {
            Ok(()) => cri::RuntimeCondition { r#type: "NetworkReady".into(), status: true, ..Default::default() },
            Err(message) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message,
            },
        };
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            let config = serde_json::json!({
                "namespace": crate::NAMESPACE,
                "network": self.cfg.network,
                "cni_conf_dir": self.cfg.cni_conf_dir,
                "cni_bin_dirs": self.cfg.cni_bin_dirs,
                "image_dirs": self.cfg.image_dirs,
                "pod_cidr": *lock(&self.pod_cidr),
            });
            info.insert("config".to_string(), config.to_string());
        }
        let runtime_handlers = HANDLERS
            .iter()
            .map(|name| cri::RuntimeHandler {
                name: name.to_string(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            })
            .collect();
        cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions: vec![runtime, network] }),
            info,
            runtime_handlers,
            features: Some(cri::RuntimeFeatures { supplemental_groups_policy: false }),
        }
    }

    pub(crate) fn update_runtime_config(&self, r: cri::UpdateRuntimeConfigRequest) -> Result<(), Status> {
        let cidr = r.runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
        if !cidr.is_empty() {
            tracing::info!(%cidr, "kubelet's pod CIDR (berth's networks keep their own subnets)");
            *lock(&self.pod_cidr) = cidr;
        }
        Ok(())
    }

    pub(crate) fn runtime_config(&self) -> cri::RuntimeConfigResponse {
        cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_is_ready_with_a_config_list_or_the_default_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let (conf, bin) = (dir.path().join("net.d"), dir.path().join("bin"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let cfg = crate::Config {
            cni_conf_dir: conf.clone(),
            cni_bin_dirs: vec![bin.clone()],
            network: "berth".into(),
            ..Default::default()
        };
        let e = network_ready(&cfg).unwrap_err();
        assert!(e.contains("no CNI config list"), "{e}");
        std::fs::write(bin.join("bridge"), "").unwrap();
        assert!(network_ready(&cfg).is_err());
        std::fs::write(bin.join("host-local"), "").unwrap();
        assert!(network_ready(&cfg).is_ok());
        std::fs::remove_file(bin.join("bridge")).unwrap();
        std::fs::write(conf.join("10-pods.conflist"), "{}").unwrap();
        assert!(network_ready(&cfg).is_ok());
        let host = crate::Config { network: "host".into(), ..Default::default() };
        assert!(network_ready(&host).is_ok());
    }
}
