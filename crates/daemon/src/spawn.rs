//! Starting a berth-shim without copying berthd's descriptor table
//! (issue 14). A fork copies the whole table and the exec then closes
//! every entry of the copy; berthd holds a few descriptors per container
//! (pidfds, OOM eventfds, `memory.oom_control`), so with 1,000 containers
//! each spawn went through about 5,000 of them.
//!
//! Here the child shares berthd's memory and table until its exec
//! (`CLONE_VM | CLONE_VFORK | CLONE_FILES`, as posix_spawn shares the
//! memory). Its first step trades the shared table for an empty one of its
//! own (`close_range(0, ~0, CLOSE_RANGE_UNSHARE)`, which copies nothing),
//! so no descriptor of berthd's reaches the shim, whether or not it is
//! close-on-exec. It then opens exactly what a shim gets: /dev/null as
//! stdin and stdout, the log as stderr, and its listening socket as
//! [`LISTEN_FD`]. It starts its own session (SPEC B19), resets every
//! signal to its default action, unblocks them all and execs. The pidfd
//! comes from the clone itself (`CLONE_PIDFD`), so it names the child
//! before any pid could be reused.
//!
//! The child runs on a stack of its own in berthd's memory, while berthd's
//! other threads go on. It only makes system calls on data prepared
//! before the clone. A step that fails is reported through that data, and
//! the child exits; the caller then reaps it.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use berth_shim::LISTEN_FD;
use libc::{c_char, c_int, c_void};

/// The child's stack: it runs a few system calls and nothing else.
const STACK_BYTES: usize = 64 * 1024;

/// The backlog of the shim's socket, as std's `UnixListener::bind`.
const BACKLOG: c_int = 128;

/// One more than the highest signal number (the kernel's `_NSIG`).
const NSIG: c_int = 65;

/// A started process and its pidfd.
pub struct Spawned {
    pub pid: u32,
    pub pidfd: OwnedFd,
}

/// The steps of the child, in order; a failure names its step.
const STEPS: [&str; 10] = [
    "drop berthd's descriptors",
    "open /dev/null",
    "open /dev/null",
    "open the log",
    "create the socket",
    "bind the socket",
    "listen on the socket",
    "start a session",
    "restore the open-files limit",
    "execve",
];

/// Everything the child reads, built before the clone: it allocates
/// nothing and takes no lock.
struct Plan {
    program: CString,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    log: CString,
    addr: libc::sockaddr_un,
    addr_len: libc::socklen_t,
    /// The open-files limit berthd was started with (nofile.rs).
    nofile: Option<libc::rlimit>,
    /// The failed step (1-based; 0: none) and its errno.
    failed_step: AtomicI32,
    errno: AtomicI32,
    /// What `argv` and `envp` point into.
    _strings: Vec<CString>,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a spawn argument"))
}

impl Plan {
    fn new(cmd: &std::process::Command, log: &Path, socket: &Path) -> io::Result<Plan> {
        let program = cstring(cmd.get_program().as_bytes())?;
        let mut strings = vec![program.clone()];
        strings.extend(cmd.get_args().map(|a| cstring(a.as_bytes())).collect::<io::Result<Vec<_>>>()?);
        let argc = strings.len();
        strings.extend(environment(cmd).iter().map(|v| cstring(v.as_bytes())).collect::<io::Result<Vec<_>>>()?);
        let pointers = |s: &[CString]| s.iter().map(|c| c.as_ptr()).chain([std::ptr::null()]).collect();
        let (argv, envp) = (pointers(&strings[..argc]), pointers(&strings[argc..]));
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_bytes();
        if path.is_empty() || path.len() >= addr.sun_path.len() || path.contains(&0) {
            let msg = format!("socket path {} is empty, too long or holds a NUL byte", socket.display());
            return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        }
        for (dst, src) in addr.sun_path.iter_mut().zip(path) {
            *dst = *src as c_char;
        }
        let addr_len = (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
        Ok(Plan {
            program,
            argv,
            envp,
            log: cstring(log.as_os_str().as_bytes())?,
            addr,
            addr_len,
            nofile: crate::nofile::started_with(),
            failed_step: AtomicI32::new(0),
            errno: AtomicI32::new(0),
            _strings: strings,
        })
    }
}

/// `KEY=VALUE` for berthd's environment as `cmd` changes it.
fn environment(cmd: &std::process::Command) -> Vec<OsString> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (key, value) in cmd.get_envs() {
        vars.retain(|(k, _)| k != key);
        if let Some(value) = value {
            vars.push((key.to_os_string(), value.to_os_string()));
        }
    }
    vars.into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            OsString::from_vec(kv)
        })
        .collect()
}

/// The kernel's signal sets (64 bits on x86_64): every signal, also the
/// two glibc keeps for itself and leaves out of `sigfillset`, as its own
/// posix_spawn blocks them; and none.
const KERNEL_SIGSET_ALL: u64 = u64::MAX;
const KERNEL_SIGSET_NONE: u64 = 0;

/// Sets this thread's signal mask by the system call itself (glibc's
/// wrapper would leave its own two signals out), keeping the old one.
///
/// # Safety
/// A plain system call; blocking signals delays their delivery only.
unsafe fn set_mask(mask: &u64, old: Option<&mut u64>) {
    let old = old.map_or(std::ptr::null_mut(), |o| o as *mut u64);
    // SAFETY: rt_sigprocmask with 8-byte kernel sets the caller provides.
    unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, mask as *const u64, old, 8usize) };
}

/// The child: system calls only, on `Plan` data. Returns only to report
/// a failure (the clone's caller then reaps it).
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Plan` the parent keeps alive until this child
    // has exec'd or exited (CLONE_VFORK).
    let plan = unsafe { &*(arg as *const Plan) };
    let fail = |step: usize| -> c_int {
        // SAFETY: errno of this thread (shared with the suspended parent's).
        plan.errno.store(unsafe { *libc::__errno_location() }, Ordering::SeqCst);
        plan.failed_step.store(step as i32, Ordering::SeqCst);
        127
    };
    // SAFETY: plain system calls on descriptors this child owns and on
    // memory the parent prepared; the descriptor numbers are the lowest
    // free ones of the empty table the first call leaves.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, libc::CLOSE_RANGE_UNSHARE) != 0 {
            return fail(1);
        }
        if libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) != 0 {
            return fail(2);
        }
        if libc::dup(0) != 1 {
            return fail(3);
        }
        if libc::open(plan.log.as_ptr(), libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT, 0o666) != 2 {
            return fail(4);
        }
        if libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) != LISTEN_FD {
            return fail(5);
        }
        let addr = &plan.addr as *const libc::sockaddr_un as *const libc::sockaddr;
        if libc::bind(LISTEN_FD, addr, plan.addr_len) != 0 {
            return fail(6);
        }
        if libc::listen(LISTEN_FD, BACKLOG) != 0 {
            return fail(7);
        }
        if libc::setsid() < 0 {
            return fail(8);
        }
        if let Some(limit) = &plan.nofile
            && libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0
        {
            return fail(9);
        }
        // This child has its own copy of the signal actions (no
        // CLONE_SIGHAND): berthd's handlers must not run here, and an
        // ignored signal must not stay ignored in the shim.
        for sig in 1..NSIG {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        set_mask(&KERNEL_SIGSET_NONE, None);
        libc::execve(plan.program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
    }
    fail(10)
}

/// Starts `cmd`'s program with its arguments and berthd's environment as
/// `cmd` changes it (its stdio settings and hooks are not used): stdin
/// and stdout /dev/null, stderr appended to `log` (created if missing),
/// a new socket bound and listening at `socket` (which must not exist) as
/// [`LISTEN_FD`], in a session of its own. On error nothing is left
/// running and no socket is left at `socket`.
pub fn spawn_listening(cmd: &std::process::Command, log: &Path, socket: &Path) -> io::Result<Spawned> {
    let plan = Plan::new(cmd, log, socket)?;
    let mut stack = vec![0u128; STACK_BYTES / 16];
    // SAFETY: one past the end of `stack`, 16-byte aligned (u128 items).
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) } as *mut c_void;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::CLONE_PIDFD | libc::SIGCHLD;
    let mut pidfd: c_int = -1;
    // SAFETY: all signals are blocked in this thread while the child runs
    // on its stack in this memory (no handler of berthd's may run there);
    // `child` only reads `plan`, which outlives it (CLONE_VFORK returns
    // once it has exec'd or exited); CLONE_PIDFD stores the pidfd in
    // `pidfd`.
    let pid = unsafe {
        let mut old = 0u64;
        set_mask(&KERNEL_SIGSET_ALL, Some(&mut old));
        let arg = &plan as *const Plan as *mut c_void;
        let pid = libc::clone(child, top, flags, arg, &mut pidfd as *mut c_int);
        let err = io::Error::last_os_error();
        set_mask(&old, None);
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    drop(stack);
    // SAFETY: CLONE_PIDFD gave this new descriptor to this process alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let step = plan.failed_step.load(Ordering::SeqCst);
    if step == 0 {
        return Ok(Spawned { pid: pid as u32, pidfd });
    }
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    if step >= 7 {
        let _ = std::fs::remove_file(socket);
    }
    let errno = io::Error::from_raw_os_error(plan.errno.load(Ordering::SeqCst));
    let what = STEPS.get(step as usize - 1).copied().unwrap_or("start");
    Err(io::Error::new(errno.kind(), format!("{what}: {errno}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    fn wait_for(log: &Path, lines: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.lines().count() >= lines || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_and_reap(s: &Spawned) {
        // SAFETY: pidfd_send_signal on a pidfd this test holds.
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, s.pidfd.as_raw_fd(), libc::SIGKILL, 0usize, 0u32) };
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(s.pid as i32), None);
    }

    #[test]
    fn the_child_has_its_own_descriptors_session_and_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (log, socket) = (dir.path().join("log"), dir.path().join("s.sock"));
        // A descriptor without close-on-exec must not reach the child either.
        let leaky = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: dup of a descriptor this test owns; the copy is not CLOEXEC.
        let leaky = unsafe { OwnedFd::from_raw_fd(libc::dup(leaky.as_raw_fd())) };
        let mut cmd = std::process::Command::new("/bin/sh");
        // `exec 1>&2` for good, so the shell keeps no saved copy of a
        // descriptor while `ls` lists its table.
        let script = "exec 1>&2; ls /proc/$$/fd; echo \"$BERTH_SPAWN_TEST\"; cut -d' ' -f6 /proc/$$/stat; sleep 30";
        cmd.args(["-c", script]);
        cmd.env("BERTH_SPAWN_TEST", "set by the command");
        let s = spawn_listening(&cmd, &log, &socket).unwrap();
        let text = wait_for(&log, 6);
        let connected = std::os::unix::net::UnixStream::connect(&socket);
        kill_and_reap(&s);
        drop(leaky);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..4], ["0", "1", "2", "3"], "{text}");
        assert_eq!(lines[4], "set by the command", "{text}");
        assert_eq!(lines[5], s.pid.to_string(), "a session of its own: {text}");
        assert!(connected.is_ok(), "fd 3 listens at the socket: {connected:?}");
    }

    #[test]
    fn a_failed_exec_is_an_error_and_leaves_no_process_or_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (log, socket) = (dir.path().join("log"), dir.path().join("s.sock"));
        let cmd = std::process::Command::new(dir.path().join("missing"));
        let err = spawn_listening(&cmd, &log, &socket).err().expect("a missing program fails");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("execve"), "{err}");
        assert!(!socket.exists(), "the socket is removed");
        // Reaped: this thread has no child left, not even a zombie.
        let children = std::fs::read_to_string("/proc/thread-self/children").unwrap();
        assert_eq!(children.trim(), "", "left behind: {children}");
    }

    #[test]
    fn a_bad_socket_path_is_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("s".repeat(200));
        let cmd = std::process::Command::new("/bin/true");
        let err = spawn_listening(&cmd, &dir.path().join("log"), &long).err().expect("too long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(!dir.path().join("log").exists(), "nothing ran");
    }

    #[test]
    fn an_existing_socket_path_fails_at_bind_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        std::fs::write(&socket, b"someone else's").unwrap();
        let cmd = std::process::Command::new("/bin/true");
        let err = spawn_listening(&cmd, &dir.path().join("log"), &socket).err().expect("in use");
        assert!(err.to_string().contains("bind the socket"), "{err}");
        assert_eq!(std::fs::read(&socket).unwrap(), b"someone else's");
    }
}
