//! berthd's open-files limit. berthd holds a few descriptors per
//! container (its init's and shim's pidfds, OOM eventfds,
//! `memory.oom_control`): about 5,000 with 1,000 containers. The soft
//! limit a service manager or a login shell gives by default (1,024:
//! systemd's `LimitNOFILE=1024:524288`) stopped it at about 200. So, as
//! every Go program (containerd among them) does, berthd raises its soft
//! limit to its hard limit at start. What it starts gets the limit berthd
//! was started with back (a shim, at its spawn; containerd's shims, before
//! their exec), so a container's own limit is what it was before: its
//! spec's, or that one.

use std::io;
use std::sync::OnceLock;

/// The limit berthd was started with, once [`raise`] has run.
static STARTED_WITH: OnceLock<libc::rlimit> = OnceLock::new();

/// Raises the soft open-files limit to the hard one; returns the new soft
/// limit. Remembers the old one for [`started_with`].
pub fn raise() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = STARTED_WITH.set(limit);
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_max)
}

/// The limit berthd was started with, if it raised its own.
pub fn started_with() -> Option<libc::rlimit> {
    STARTED_WITH.get().copied().filter(|l| l.rlim_cur < l.rlim_max)
}

/// Gives `cmd`'s process the limit berthd was started with, before its exec.
pub fn restore_in(cmd: &mut tokio::process::Command) {
    if let Some(limit) = started_with() {
        // SAFETY: the closure runs in the forked child before exec and
        // makes one async-signal-safe system call on a copied value.
        unsafe {
            cmd.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            });
        }
    }
}
