//! IP masquerade of berth's own networks: one nat rule per network
//! (`-s SUBNET ! -d SUBNET -j MASQUERADE`, as docker keeps one per bridge)
//! rather than the bridge plugin's `ipMasq`, which adds a chain and rules
//! for every container on ADD and removes them on DEL — about half of
//! each call's time. The rule is ensured on attach (checked once per
//! network per berthd, so a reboot's empty table is refilled) and removed
//! with the network. Nothing of it belongs to one container, so there is
//! nothing per container to leak.

use std::time::Duration;

use crate::{Error, Networks, Result};

/// The rule's match and target, after the chain.
fn rule(name: &str, subnet: &str) -> Vec<String> {
    let comment = format!("berth network {name}");
    ["-s", subnet, "!", "-d", subnet, "-m", "comment", "--comment", &comment, "-j", "MASQUERADE"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `iptables -w -t nat OP POSTROUTING RULE`: whether it succeeded; an
/// iptables that cannot run or hangs is an error.
async fn nat(op: &str, rule: &[String], timeout: Duration) -> Result<bool> {
    let mut cmd = tokio::process::Command::new("iptables");
    cmd.args(["-w", "-t", "nat", op, "POSTROUTING"]).args(rule).kill_on_drop(true);
    let failed = |e: String| Error::FailedPrecondition(format!("iptables (IP masquerade of berth's networks): {e}"));
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => Ok(out.status.success()),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!("did not finish within {} s", timeout.as_secs()))),
    }
}

impl Networks {
    /// Makes sure the masquerade rule of berth's network `name` is there.
    pub(crate) async fn ensure_masquerade(&self, name: &str, subnets: &[String]) -> Result<()> {
        for subnet in subnets {
            let key = (name.to_string(), subnet.clone());
            if self.masqueraded.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
                continue;
            }
            let rule = rule(name, subnet);
            let timeout = self.cfg.plugin_timeout;
            if !nat("-C", &rule, timeout).await? && !nat("-A", &rule, timeout).await? {
                return Err(Error::FailedPrecondition(format!(
                    "iptables could not add the masquerade rule of {subnet}"
                )));
            }
            self.masqueraded.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
        }
        Ok(())
    }

    /// Removes the masquerade rules of berth's network `name` (every copy).
    pub(crate) async fn remove_masquerade(&self, name: &str, subnets: &[String]) -> Result<()> {
        for subnet in subnets {
            let rule = rule(name, subnet);
            while nat("-D", &rule, self.cfg.plugin_timeout).await? {}
            self.masqueraded.lock().unwrap_or_else(|p| p.into_inner()).remove(&(name.to_string(), subnet.clone()));
        }
        Ok(())
    }
}
