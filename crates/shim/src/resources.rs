//! Live resource limits for a third-party shim's Update. containerd's
//! runc-v2 shim json-decodes `UpdateTaskRequest.resources` straight into the
//! OCI runtime spec's `LinuxResources` (pkg/process/init.go `update`) and
//! hands it to `runc update`, so berth's `Limits` travel in that shape.
//! berth's own shim takes both: `Limits` as JSON (`LIMITS_TYPE_URL`,
//! berthd) and `LinuxResources` (containerd's clients).

use berth_cgroups::Limits;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

/// The type URL containerd's Go `typeurl` registers for the runtime spec's
/// `LinuxResources`.
pub const LINUX_RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// `limits` as the `Any` containerd's shims expect in Update. Only the
/// limits that are set appear, so runc leaves the others as they are.
pub fn resources_any(limits: &Limits) -> Result<Any, String> {
    let res = limits.to_oci().map_err(|e| format!("build LinuxResources: {e}"))?;
    let value = serde_json::to_vec(&res).map_err(|e| format!("encode LinuxResources: {e}"))?;
    Ok(Any { type_url: LINUX_RESOURCES_TYPE_URL.to_string(), value, ..Default::default() })
}

/// The limits in an Update's `Any`: berth's JSON or the OCI
/// `LinuxResources` containerd sends (any type URL naming it).
pub fn limits_from_any(any: &Any) -> Result<Limits, String> {
    if any.type_url == crate::LIMITS_TYPE_URL {
        return serde_json::from_slice(&any.value).map_err(|e| format!("resources: {e}"));
    }
    if any.type_url.rsplit('/').next() == LINUX_RESOURCES_TYPE_URL.rsplit('/').next() {
        let r = serde_json::from_slice(&any.value).map_err(|e| format!("LinuxResources: {e}"))?;
        return Ok(Limits::from_oci(&r));
    }
    Err(format!(
        "resources of type {:?}: expected {} or {LINUX_RESOURCES_TYPE_URL}",
        any.type_url,
        crate::LIMITS_TYPE_URL
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn every_limit() -> Limits {
        Limits {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0-1".into()),
            pids: Some(100),
        }
    }

    fn json_of(l: &Limits) -> Value {
        let any = resources_any(l).expect("encode");
        assert_eq!(any.type_url, LINUX_RESOURCES_TYPE_URL);
        serde_json::from_slice(&any.value).expect("json")
    }

    #[test]
    fn every_limit_uses_the_oci_field_names() {
        let l = every_limit();
        let want = json!({
            "memory": {"limit": 64 << 20, "swap": -1},
            "cpu": {"shares": 512, "quota": 50_000, "period": 100_000, "cpus": "0-1"},
            "pids": {"limit": 100},
        });
        assert_eq!(json_of(&l), want);
    }

    #[test]
    fn updates_decode_from_either_format() {
        let l = every_limit();
        assert_eq!(limits_from_any(&resources_any(&l).unwrap()).unwrap(), l);
        let berth = Any {
            type_url: crate::LIMITS_TYPE_URL.into(),
            value: serde_json::to_vec(&l).unwrap(),
            ..Default::default()
        };
        assert_eq!(limits_from_any(&berth).unwrap(), l);
        // What containerd's Go client sends for `--memory-limit` only.
        let go = Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: br#"{"memory":{"limit":8388608},"cpu":{}}"#.to_vec(),
            ..Default::default()
        };
        assert_eq!(limits_from_any(&go).unwrap(), Limits { memory: Some(8 << 20), ..Default::default() });
        let other = Any { type_url: "x/Other".into(), value: b"{}".to_vec(), ..Default::default() };
        assert!(limits_from_any(&other).unwrap_err().contains("x/Other"));
        let garbage = Any { type_url: LINUX_RESOURCES_TYPE_URL.into(), value: b"{".to_vec(), ..Default::default() };
        assert!(limits_from_any(&garbage).is_err());
    }

    #[test]
    fn unset_limits_are_left_out() {
        assert_eq!(json_of(&Limits::default()), json!({}));
        let l = Limits { cpu_quota: Some(20_000), ..Default::default() };
        assert_eq!(json_of(&l), json!({"cpu": {"quota": 20_000}}));
        let l = Limits { memory: Some(8 << 20), ..Default::default() };
        assert_eq!(json_of(&l), json!({"memory": {"limit": 8 << 20}}));
    }
}
