//! Namespaced kernel parameters of a container (`linux.sysctl`, written
//! by the runtime inside the container's namespaces): only those a
//! namespace of the container holds — IPC (`kernel.msg*`, `kernel.sem`,
//! `kernel.shm*`, `fs.mqueue.*`) and network (`net.*`, only in a network
//! namespace of the container's or its sandbox's own) — as Docker and
//! Kubernetes allow.

use std::collections::BTreeMap;

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

const IPC: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Checks `sysctls` for a container whose network mode is `network`.
fn check(sysctls: &BTreeMap<String, String>, network: &str) -> Result<()> {
    for (key, value) in sysctls {
        crate::spec::no_nul("a sysctl", key)?;
        crate::spec::no_nul("a sysctl", value)?;
        let valid_key = !key.is_empty() && key.split('.').all(|p| !p.is_empty() && !p.contains('/'));
        if !valid_key || value.is_empty() || value.contains('\n') {
            return Err(invalid(format!("sysctl {key:?}={value:?} is not NAME=VALUE")));
        }
        if key.starts_with("net.") {
            if network == "host" || network.starts_with("container:") {
                return Err(invalid(format!(
                    "sysctl {key} would change a network namespace that is not the container's own ({network})"
                )));
            }
        } else if !IPC.contains(&key.as_str()) && !key.starts_with("fs.mqueue.") {
            return Err(invalid(format!(
                "sysctl {key} is not namespaced (allowed: net.*, fs.mqueue.*, kernel.msg*, kernel.sem, kernel.shm*)"
            )));
        }
    }
    Ok(())
}

/// Checks `sysctls` (see [`check`]; a bundle takes none: its config.json
/// is used as written) and adds them to the spec's `linux.sysctl`.
pub fn apply(spec: &mut Spec, sysctls: &BTreeMap<String, String>, bundle: bool, network: &str) -> Result<()> {
    if sysctls.is_empty() {
        return Ok(());
    }
    if bundle {
        return Err(invalid("sysctls are refused for a bundle (its config.json is used as written)".into()));
    }
    check(sysctls, network)?;
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut all = linux.sysctl().clone().unwrap_or_default();
    all.extend(sysctls.iter().map(|(k, v)| (k.clone(), v.clone())));
    linux.set_sysctl(Some(all));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_namespaced_sysctls_pass() {
        let ok = map(&[
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "20"),
        ]);
        check(&ok, "berth").unwrap();
        for bad in [
            map(&[("kernel.hostname", "x")]),
            map(&[("vm.swappiness", "1")]),
            map(&[("net..x", "1")]),
            map(&[("net.ipv4.x/../y", "1")]),
            map(&[("net.ipv4.ip_forward", "")]),
            map(&[("net.ipv4.ip_forward", "1\n2")]),
        ] {
            assert!(check(&bad, "berth").is_err(), "{bad:?}");
        }
        let e = check(&map(&[("net.ipv4.ip_forward", "1")]), "host").unwrap_err();
        assert!(e.to_string().contains("host"), "{e}");
        assert!(check(&map(&[("net.ipv4.ip_forward", "1")]), "container:web").is_err());
        check(&map(&[("kernel.shm_rmid_forced", "1")]), "host").unwrap();
    }

    #[test]
    fn sysctls_join_the_spec() {
        let mut spec = Spec::default();
        apply(&mut spec, &map(&[("net.core.somaxconn", "1024")]), false, "berth").unwrap();
        let got = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(got.get("net.core.somaxconn").map(String::as_str), Some("1024"));
        assert!(apply(&mut spec, &map(&[("net.core.somaxconn", "1")]), true, "berth").is_err(), "not for a bundle");
        assert!(apply(&mut spec, &map(&[("vm.swappiness", "1")]), false, "berth").is_err());
    }
}
