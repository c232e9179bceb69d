//! Which accelerator a VM runs with (`--vm-accel auto|kvm|tcg`). `/dev/kvm`
//! opening is not enough: a nested software hypervisor (this project's
//! CI host) offers one that cannot run stock guest kernels. `auto` picks
//! KVM only when the CPU shows hardware virtualisation (vmx/svm) and
//! `/dev/kvm` opens; otherwise it runs under QEMU's TCG emulation and says
//! why.

use crate::VmError;

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = VmError;

    fn from_str(s: &str) -> Result<Self, VmError> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(VmError::InvalidArgument(format!("unknown VM accelerator {other:?} (auto, kvm or tcg)"))),
        }
    }
}

/// What a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator for `choice`, and a one-line note when `auto` fell
/// back to TCG.
pub fn resolve(choice: AccelChoice) -> Result<(Accel, Option<String>), VmError> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map(drop);
    decide(choice, hardware_virt(&cpuinfo), kvm.map_err(|e| e.to_string()))
}

fn decide(choice: AccelChoice, hw: bool, kvm: Result<(), String>) -> Result<(Accel, Option<String>), VmError> {
    let why_not = match (&kvm, hw) {
        (Err(e), _) => Some(format!("/dev/kvm cannot be opened ({e})")),
        (Ok(()), false) => Some("the CPU shows no vmx/svm, so /dev/kvm cannot run stock guest kernels".to_string()),
        (Ok(()), true) => None,
    };
    match (choice, why_not) {
        (AccelChoice::Tcg, _) => Ok((Accel::Tcg, None)),
        (_, None) => Ok((Accel::Kvm, None)),
        (AccelChoice::Kvm, Some(why)) => Err(VmError::FailedPrecondition(format!("KVM was asked for, but {why}"))),
        (AccelChoice::Auto, Some(why)) => Ok((Accel::Tcg, Some(format!("using TCG emulation: {why}")))),
    }
}

fn hardware_virt(cpuinfo: &str) -> bool {
    cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_uses_kvm_only_with_hardware_virtualisation() {
        assert_eq!(decide(AccelChoice::Auto, true, Ok(())).unwrap(), (Accel::Kvm, None));
        let (accel, note) = decide(AccelChoice::Auto, false, Ok(())).unwrap();
        assert_eq!(accel, Accel::Tcg);
        assert!(note.unwrap().contains("no vmx/svm"));
        let (accel, note) = decide(AccelChoice::Auto, true, Err("No such file".into())).unwrap();
        assert_eq!(accel, Accel::Tcg);
        assert!(note.unwrap().contains("/dev/kvm cannot be opened"));
    }

    #[test]
    fn kvm_asked_for_fails_clearly_and_tcg_always_works() {
        let err = decide(AccelChoice::Kvm, false, Ok(())).unwrap_err().to_string();
        assert!(err.contains("KVM was asked for"), "{err}");
        assert_eq!(decide(AccelChoice::Tcg, true, Ok(())).unwrap(), (Accel::Tcg, None));
        assert!("vmware".parse::<AccelChoice>().is_err());
        assert!(hardware_virt("flags\t: fpu vmx sse\n") && !hardware_virt("flags\t: fpu sse\n"));
    }
}
