//! The init of a pod's shared PID namespace (`--pid-init`, Kubernetes'
//! `shareProcessNamespace`). A PID namespace dies with its first process,
//! so a bind mount cannot hold one the way it holds a network or IPC
//! namespace: something must be PID 1 there, outlive every container of
//! the pod and reap the orphans re-parented to it. containerd has the pause
//! container do that and CRI-O keeps its infra container for this one
//! case; berth clones its sandbox shim into the new namespace instead, so
//! there is no image, no exec and no extra binary: a copy-on-write child
//! that blocks every signal and reaps on SIGCHLD.
//!
//! It dies with the shim (PR_SET_PDEATHSIG), and when it dies the kernel
//! kills every process left in the namespace. Container inits stay the
//! shim's children (the runtime forks them from outside the namespace), so
//! the shim still reaps them and records their exits.

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// Stack of the cloned child: it runs the small loop below and nothing else.
const STACK: usize = 64 * 1024;

/// Starts the namespace's init; returns its pid (as the shim sees it).
/// Call while the shim is single-threaded (before its runtime starts).
pub fn spawn() -> Result<u32, String> {
    let mut stack = vec![0u8; STACK];
    // SAFETY: the shim has a single thread here; the child runs `init` on
    // its own copy of memory (no CLONE_VM) and never returns into ours.
    let pid = unsafe { nix::sched::clone(Box::new(init), &mut stack, CloneFlags::CLONE_NEWPID, Some(libc::SIGCHLD)) }
        .map_err(|e| format!("start the pod's PID namespace init: {e}"))?;
    Ok(pid.as_raw() as u32)
}

/// What the pod's containers see as PID 1's command line, instead of the
/// shim's (which names host paths).
const NAME: &[u8] = b"berth-pod-init";

/// Overwrites the process's argument area (inherited from the shim) with
/// `name` and NULs, as setproctitle(3) does. Best effort.
fn show_as(name: &[u8]) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name, which is in parentheses; arg_start and
    // arg_end are fields 48 and 49 (the 46th and 47th after it).
    let Some((_, rest)) = stat.rsplit_once(')') else { return };
    let fields: Vec<u64> = rest.split_whitespace().skip(45).take(2).filter_map(|f| f.parse().ok()).collect();
    let [start, end] = fields[..] else { return };
    let len = end.saturating_sub(start) as usize;
    if len <= name.len() {
        return;
    }
    // SAFETY: [arg_start, arg_end) is this process's own argument strings,
    // mapped and writable (the stack), and nothing reads them any more.
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, len);
        area.fill(0);
        area[..name.len()].copy_from_slice(name);
    }
}

/// PID 1 of the pod: reaps whatever the kernel re-parents to it.
fn init() -> isize {
    // A shim that died in the few instructions between clone and this line
    // would leave the init behind (in the shim's process group, with no
    // container to hold); nothing else can.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = nix::sys::prctl::set_name(c"berth-pod-init");
    show_as(NAME);
    // Every signal blocked: SIGCHLD is taken with sigwait, and the others
    // (which PID 1 ignores anyway unless handled) stay pending. SIGKILL
    // from the shim's namespace still ends it.
    let all = SigSet::all();
    let _ = all.thread_block();
    let chld = SigSet::from(Signal::SIGCHLD);
    loop {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        let _ = chld.wait();
    }
}
