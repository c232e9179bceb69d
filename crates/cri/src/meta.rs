//! What CRI knows of a pod or container that berth has no field for: kept
//! as JSON in one reserved label of the berth sandbox or container, so it
//! is as durable as the record and survives berthd restarts.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::cri;

/// The label holding a pod's [`PodMeta`].
pub const POD_LABEL: &str = "io.berth.cri.pod";
/// The label holding a container's [`ContainerMeta`].
pub const CONTAINER_LABEL: &str = "io.berth.cri.container";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodMeta {
    pub metadata: cri::PodSandboxMetadata,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub runtime_handler: String,
    #[serde(default)]
    pub log_directory: String,
    #[serde(default)]
    pub hostname: String,
    /// Nameservers (and search domains, options) for its containers.
    #[serde(default)]
    pub dns: Option<cri::DnsConfig>,
    /// Namespaced kernel parameters for every container of the pod.
    #[serde(default)]
    pub sysctls: HashMap<String, String>,
    /// The namespace modes asked for (network, pid, ipc).
    #[serde(default)]
    pub namespace_options: Option<cri::NamespaceOption>,
    /// The pod's cgroup (kubelet's, cgroupfs): its containers' go below.
    #[serde(default)]
    pub cgroup_parent: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub metadata: cri::ContainerMetadata,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The image as kubelet asked for it.
    #[serde(default)]
    pub image: cri::ImageSpec,
    /// The log file (the pod's log directory joined with the container's
    /// log path), empty when kubelet gave none.
    #[serde(default)]
    pub log_path: String,
    #[serde(default)]
    pub mounts: Vec<cri::Mount>,
    /// The container's stdin ends when the first attach ends it.
    #[serde(default)]
    pub stdin_once: bool,
}

/// The reserved label of `value` (JSON).
pub fn label<T: Serialize>(key: &str, value: &T) -> Result<(String, String), Status> {
    let json = serde_json::to_string(value).map_err(|e| Status::internal(format!("encode {key}: {e}")))?;
    Ok((key.to_string(), json))
}

/// The metadata a berth object's labels carry; `None` for an object not
/// made through CRI (it is not listed).
pub fn read<T: for<'de> Deserialize<'de>>(labels: &HashMap<String, String>, key: &str) -> Option<T> {
    let json = labels.get(key)?;
    match serde_json::from_str(json) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("unreadable CRI label {key}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_a_label() {
        let meta = ContainerMeta {
            metadata: cri::ContainerMetadata { name: "web".into(), attempt: 2 },
            labels: [("app".to_string(), "x".to_string())].into(),
            annotations: [("note".to_string(), "{\"json\": true}".to_string())].into(),
            image: cri::ImageSpec { image: "busybox".into(), ..Default::default() },
            log_path: "/var/log/pods/p/web/2.log".into(),
            mounts: vec![cri::Mount { container_path: "/data".into(), host_path: "/srv".into(), ..Default::default() }],
            stdin_once: true,
        };
        let (k, v) = label(CONTAINER_LABEL, &meta).unwrap();
        let labels: HashMap<String, String> = [(k, v)].into();
        let back: ContainerMeta = read(&labels, CONTAINER_LABEL).unwrap();
        assert_eq!(back.metadata, meta.metadata);
        assert_eq!(back.labels, meta.labels);
        assert_eq!(back.annotations, meta.annotations);
        assert_eq!(back.image, meta.image);
        assert_eq!(back.log_path, meta.log_path);
        assert_eq!(back.mounts, meta.mounts);
        assert!(back.stdin_once);
        // Not made through CRI, or damaged: not CRI's.
        assert!(read::<ContainerMeta>(&HashMap::new(), CONTAINER_LABEL).is_none());
        let bad: HashMap<String, String> = [(CONTAINER_LABEL.to_string(), "{".to_string())].into();
        assert!(read::<ContainerMeta>(&bad, CONTAINER_LABEL).is_none());
    }
}
