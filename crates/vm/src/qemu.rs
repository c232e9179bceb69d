//! QEMU's `microvm` machine: no PCI, no firmware, the ELF kernel booted
//! through its PVH entry, virtio-mmio devices found through ACPI. The
//! agent's channel is vhost-user vsock served by `vhost-device-vsock` (a
//! helper, as this host's kernel has no vhost-vsock); the shared directory
//! is virtio-9p, served by QEMU itself. Under TCG the guest gets the
//! host's TSC frequency and legacy timers, without which it can hang after
//! "Marking TSC unstable" (../shared/HOST-NOTES.md).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use berth_model::vm::{CMDLINE_ID, CMDLINE_LOG, CMDLINE_NET, SHARE_TAG};

use crate::{Accel, Helper, Plan, VmError, VmSpec, Vmm, on_path};

pub const QEMU: &str = "qemu-system-x86_64";
pub const VSOCK_BACKEND: &str = "vhost-device-vsock";
/// The guest's vsock CID (each VM has its own backend, so all can share it).
const GUEST_CID: u32 = 3;

pub struct Microvm;

impl Vmm for Microvm {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn plan(&self, spec: &VmSpec) -> Result<Plan, VmError> {
        let missing = |p: &str| VmError::FailedPrecondition(format!("{p} is not installed; run `make vm-assets`"));
        let qemu = on_path(QEMU).ok_or_else(|| missing(QEMU))?;
        let backend = on_path(VSOCK_BACKEND).ok_or_else(|| missing(VSOCK_BACKEND))?;
        let control = spec.state.join("vsock.ctl");
        let mut vsock = Command::new(backend);
        vsock.arg("--vm").arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            control.display(),
            spec.agent_socket().display()
        ));

        let mem = spec.memory_mib;
        let mut vmm = Command::new(qemu);
        vmm.args(["-name", &format!("berth-{}", spec.id)]);
        vmm.args(["-M", "microvm,pit=on,pic=on,rtc=on,memory-backend=mem"]);
        match spec.accel {
            Accel::Kvm => vmm.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => vmm.args(["-accel", "tcg,tb-size=16", "-cpu", "max"]),
        };
        vmm.args(["-m", &format!("{mem}M"), "-smp", &spec.cpus.to_string()]);
        vmm.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio"]);
        // No spawning, no privilege changes, no obsolete syscalls.
        vmm.args(["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]);
        vmm.args(["-object", &format!("memory-backend-memfd,id=mem,size={mem}M,share=on")]);
        vmm.args(["-chardev", &format!("socket,id=vsock,path={}", control.display())]);
        vmm.args(["-device", "vhost-user-vsock-device,chardev=vsock"]);
        let share = spec.share.to_str().filter(|s| !s.contains(',')).ok_or_else(|| {
            VmError::InvalidArgument(format!("the shared directory {} cannot be named to QEMU", spec.share.display()))
        })?;
        vmm.args(["-fsdev", &format!("local,id=share,path={share},security_model=passthrough,multidevs=remap")]);
        vmm.args(["-device", &format!("virtio-9p-device,fsdev=share,mount_tag={SHARE_TAG}")]);
        if let Some(net) = &spec.net {
            let fd = net.tap.as_raw_fd();
            if !net.mac.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                return Err(VmError::InvalidArgument(format!("{:?} is not a MAC address", net.mac)));
            }
            vmm.args(["-netdev", &format!("tap,id=net0,fd={fd}")]);
            vmm.args(["-device", &format!("virtio-net-device,netdev=net0,mac={}", net.mac)]);
            // The VMM, and no helper, inherits the tap.
            // SAFETY: fcntl on an open descriptor, in the child before exec.
            unsafe {
                vmm.pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        vmm.arg("-kernel").arg(&spec.assets.kernel).arg("-initrd").arg(&spec.assets.initramfs);
        vmm.args(["-append", &cmdline(spec)]);
        let helper = Helper { name: VSOCK_BACKEND, command: vsock, socket: control };
        Ok(Plan { helpers: vec![helper], vmm })
    }
}

fn cmdline(spec: &VmSpec) -> String {
    let mut line =
        String::from("console=ttyS0 reboot=t panic=-1 quiet 8250.nr_uarts=1 cryptomgr.notests random.trust_cpu=on");
    if spec.accel == Accel::Tcg
        && let Some(khz) = host_tsc_khz()
    {
        line.push_str(&format!(" tsc_early_khz={khz}"));
    }
    line.push_str(&format!(" {CMDLINE_ID}={}", spec.id));
    if let Some(net) = &spec.net {
        let gateway = net.gateway.as_deref().unwrap_or_default();
        line.push_str(&format!(" {CMDLINE_NET}={},{gateway},{}", net.cidr, net.mtu));
    }
    if let Some(level) = &spec.guest_log {
        line.push_str(&format!(" {CMDLINE_LOG}={level}"));
    }
    line
}

/// The host's TSC frequency, from /proc/cpuinfo's "cpu MHz".
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
}
