//! The init of a pod's shared PID namespace (`--pid-init`, Kubernetes'
//! `shareProcessNamespace`). A PID namespace dies with its first process,
//! so a bind mount cannot hold one the way it holds a network or IPC
//! namespace: something must be PID 1 there, outlive every container of
//! the pod and reap the orphans re-parented to it. containerd has the pause
//! container do that and CRI-O keeps its infra container for this one
//! case; berth clones its sandbox shim into the new namespace instead, so
//! there is no image, no exec and no extra binary.
//!
//! Every container of the pod sees it as PID 1 (its `/proc/1`), so it keeps
//! nothing of the host's: it is cloned into new mount, network, IPC, UTS
//! and cgroup namespaces too, pivots into an empty read-only tmpfs, closes
//! every descriptor, and becomes nobody without capabilities, new
//! privileges or a dumpable image. Then it blocks every signal and reaps
//! on SIGCHLD.
//!
//! It dies with the shim (PR_SET_PDEATHSIG, with a pipe closing the race
//! before it is set), and when it dies the kernel kills every process left
//! in the namespace; the shim then ends too ([`watch`]), so berthd finds
//! the sandbox not ready and its next container gets a new shim and
//! namespace. Container inits stay the shim's children (the runtime forks
//! them from outside the namespace), so the shim still reaps them and
//! records their exits.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Gid, Uid};
use tokio::io::unix::AsyncFd;

use crate::tasks::Shim;

/// Stack of the cloned child: it runs the small code below and nothing else.
const STACK: usize = 64 * 1024;
/// The namespaces it is cloned into: a PID namespace for the pod, and
/// empty ones of every other kind, so its /proc entries show nothing of
/// the host.
const NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWPID
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWCGROUP);
/// The user and group it runs as.
const NOBODY: u32 = 65534;
/// What the pod's containers see as PID 1's command line, instead of the
/// shim's (which names host paths).
const NAME: &[u8] = b"berth-pod-init";
/// How long the shim waits for its tasks' exits once the init has died.
const EXITS_WAIT: Duration = Duration::from_secs(2);

/// A running init: its pid, and the pipe end whose closing (the shim's
/// death) tells it, should it miss its PR_SET_PDEATHSIG.
pub struct PodInit {
    pub pid: u32,
    _alive: OwnedFd,
}

/// Starts the namespace's init. Call while the shim is single-threaded
/// (before its runtime starts).
pub fn spawn() -> Result<PodInit, String> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pod init pipe: {e}"))?;
    let (rx_fd, tx_fd) = (rx.as_raw_fd(), tx.as_raw_fd());
    let mut stack = vec![0u8; STACK];
    // SAFETY: the shim has a single thread here; the child runs `init` on
    // its own copy of memory (no CLONE_VM) and never returns into ours.
    let pid =
        unsafe { nix::sched::clone(Box::new(move || init(rx_fd, tx_fd)), &mut stack, NAMESPACES, Some(libc::SIGCHLD)) }
            .map_err(|e| format!("start the pod's PID namespace init: {e}"))?;
    drop(rx);
    Ok(PodInit { pid: pid.as_raw() as u32, _alive: tx })
}

/// PID 1 of the pod: confines itself, then reaps whatever the kernel
/// re-parents to it.
fn init(alive: RawFd, shim_end: RawFd) -> isize {
    // SAFETY: closes this process's copy of the shim's pipe end.
    unsafe { libc::close(shim_end) };
    let _ = nix::sys::prctl::set_name(c"berth-pod-init");
    show_as(NAME);
    if confine().is_err() {
        return 1;
    }
    // After the credential change, which clears it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // The shim may have died before the line above: its pipe end is closed.
    let mut poll = libc::pollfd { fd: alive, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll(2) on one descriptor of ours, without waiting.
    if unsafe { libc::poll(&mut poll, 1, 0) } != 0 {
        return 1;
    }
    // SAFETY: closes every descriptor (the shim's listener and log among
    // them): the init needs none.
    unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    // Every signal blocked: SIGCHLD is taken with sigwait, and the others
    // (which PID 1 ignores anyway unless handled) stay pending. SIGKILL
    // from the shim's namespace still ends it.
    let _ = SigSet::all().thread_block();
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

/// An empty, read-only root of its own, then nobody without privileges.
fn confine() -> nix::Result<()> {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("berth-pod-init"), "/proc", Some("tmpfs"), flags, Some("size=4k,mode=0555"))?;
    nix::unistd::chdir("/proc")?;
    nix::unistd::pivot_root(".", ".")?;
    umount2(".", MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")?;
    mount(none, "/", none, flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY, none)?;
    nix::unistd::setgroups(&[])?;
    let (gid, uid) = (Gid::from_raw(NOBODY), Uid::from_raw(NOBODY));
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)?;
    nix::sys::prctl::set_no_new_privs()?;
    nix::sys::prctl::set_dumpable(false)
}

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

/// Keeps the init out of the reaper's hands (a pid that stays ours cannot
/// be reused under berthd's pin) and, when it dies, ends the shim once
/// its tasks' exits are recorded (they die with it).
pub fn watch(init: PodInit, shim: Arc<Shim>) -> std::io::Result<()> {
    let pidfd = berth_shim::pidfd_open(init.pid)?;
    // SAFETY: the AsyncFd owns the pidfd for its whole life.
    let afd = unsafe { AsyncFd::register(pidfd) }.map_err(std::io::Error::from)?;
    let (tracked, _) = shim.processes();
    if let Ok(mut t) = tracked.lock() {
        t.insert(init.pid);
    }
    tokio::spawn(async move {
        // The whole value, pipe end included, lives as long as the watch
        // (a closure would capture only the pid).
        let init = init;
        loop {
            let Ok(mut guard) = afd.readable().await else { break };
            match waitid(Id::PIDFd(afd.get_ref().as_fd()), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
                Ok(WaitStatus::StillAlive) => guard.clear_ready(),
                _ => break,
            }
        }
        if let Ok(mut t) = tracked.lock() {
            t.remove(&init.pid);
        }
        eprintln!("berth-shim: the pod's init died, and every process of the pod with it; the shim ends");
        let deadline = Instant::now() + EXITS_WAIT;
        while shim.any_live() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shim.shutdown.notify_one();
    });
    Ok(())
}
