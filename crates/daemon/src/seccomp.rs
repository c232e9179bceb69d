//! Default seccomp profile for containers: berth's equivalent of Docker's
//! default profile (moby profiles/seccomp/default.json).
//!
//! The profile denies every syscall with `EPERM` unless a rule allows it:
//! a fixed allowlist, a few argument-filtered rules (`socket`, `personality`,
//! `clone`), per-architecture extras, and syscalls that only make sense with a
//! capability the container holds (`mount` with `CAP_SYS_ADMIN`, `ptrace` with
//! `CAP_SYS_PTRACE`, ...). Argument filters follow the runc/crun reading of
//! `SCMP_CMP_MASKED_EQ`: `value` is the mask, `valueTwo` the expected result.
//!
//! One deliberate difference, stricter than Docker: `ptrace`,
//! `process_vm_readv` and `process_vm_writev` need `CAP_SYS_PTRACE` (Docker
//! allows them on kernels >= 4.8); the profile never looks at the kernel
//! version. io_uring is refused too, as in Docker 25+ and containerd 2.0
//! (it bypasses the filter's view of what a process does). As in Docker,
//! some syscalls are never allowed, whatever the
//! capabilities: `pivot_root`, `kexec_load`, `swapon`, `userfaultfd`, ...

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};

/// Errno of the default action: "operation not permitted".
const EPERM: u32 = libc::EPERM as u32;
/// Errno for `clone3` without `CAP_SYS_ADMIN`: "not implemented", so libc
/// falls back to `clone`, whose flags the filter can inspect.
const ENOSYS: u32 = libc::ENOSYS as u32;
/// `clone` flags that create namespaces; without `CAP_SYS_ADMIN` a clone with
/// any of them is refused (0x7E020000).
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;
/// `socket(AF_VSOCK, ...)` is refused: vsock reaches the host, not the
/// container's network namespace.
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;
/// `personality` values allowed: PER_LINUX, PER_LINUX32, UNAME26,
/// PER_LINUX32|UNAME26, and 0xffffffff (query the current persona).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Syscalls a capability unlocks, in Docker's order. A name listed under two
/// capabilities (e.g. `bpf`: CAP_SYS_ADMIN or CAP_BPF) is emitted only once.
const CAPABILITY_SYSCALLS: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (Capability::SysModule, &["delete_module", "init_module", "finit_module"]),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (Capability::SysTime, &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::SysNice, &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// Builds the default seccomp profile for a container whose bounding set is
/// `caps`: Docker's allowlist plus the rules those capabilities unlock.
pub fn default_profile(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let mut rules = vec![allow(ALLOWED)];
    let not_vsock = condition(0, LinuxSeccompOperator::ScmpCmpNe, AF_VSOCK, None);
    rules.extend(allow_if(&["socket"], not_vsock));
    for persona in PERSONALITIES {
        let is_persona = condition(0, LinuxSeccompOperator::ScmpCmpEq, persona, None);
        rules.extend(allow_if(&["personality"], is_persona));
    }
    if !ARCH_ALLOWED.is_empty() {
        rules.push(allow(ARCH_ALLOWED));
    }

    let mut granted: HashSet<&str> = HashSet::new();
    for (cap, names) in CAPABILITY_SYSCALLS {
        if !caps.contains(cap) {
            continue;
        }
        let fresh: Vec<&str> = names.iter().copied().filter(|n| granted.insert(*n)).collect();
        if !fresh.is_empty() {
            rules.push(allow(&fresh));
        }
    }

    if !caps.contains(&Capability::SysAdmin) {
        // Plain fork/thread clones stay allowed; namespace-creating ones hit
        // the default EPERM.
        let no_namespaces =
            condition(CLONE_FLAGS_ARG, LinuxSeccompOperator::ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS, Some(0));
        rules.extend(allow_if(&["clone"], no_namespaces));
        // clone3 passes its flags in memory, out of the filter's reach.
        rules.push(rule(&["clone3"], LinuxSeccompAction::ScmpActErrno, Some(ENOSYS), None));
    }

    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActErrno)
        .set_default_errno_ret(Some(EPERM))
        .set_architectures(architectures())
        .set_syscalls(Some(rules));
    profile
}

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
) -> LinuxSyscall {
    let mut syscall = LinuxSyscall::default();
    syscall
        .set_names(names.iter().map(|n| (*n).to_owned()).collect())
        .set_action(action)
        .set_errno_ret(errno_ret)
        .set_args(args);
    syscall
}

fn allow(names: &[&str]) -> LinuxSyscall {
    rule(names, LinuxSeccompAction::ScmpActAllow, None, None)
}

/// An allow rule under one argument condition; no rule without its condition.
fn allow_if(names: &[&str], condition: Option<LinuxSeccompArg>) -> Option<LinuxSyscall> {
    condition.map(|c| rule(names, LinuxSeccompAction::ScmpActAllow, None, Some(vec![c])))
}

/// An argument condition. The builder cannot fail (every field has a
/// default); were it to, the allow rule is left out, which only denies more.
fn condition(index: usize, op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> Option<LinuxSeccompArg> {
    let mut builder = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    if let Some(value_two) = value_two {
        builder = builder.value_two(value_two);
    }
    builder.build().ok()
}

/// Docker's archMap: the native architecture plus the ones its kernel can
/// also run. `None` means "native only" for the runtime. One difference:
/// x32 is listed only where the kernel runs x32 programs. Most kernels do
/// not (built without it, or Debian's, which has it off unless booted with
/// `syscall.x32=y`), and each listed architecture is compiled into every
/// container's filter: x32 is about half of that work. Left out, an x32
/// syscall meets the filter's bad-architecture action (the process is
/// killed) instead of the kernel's ENOSYS: stricter, and no x32 program
/// runs on such a kernel anyway.
fn architectures() -> Option<Vec<Arch>> {
    let arches = if cfg!(target_arch = "x86_64") {
        let mut arches = vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86];
        if kernel_runs_x32() {
            arches.push(Arch::ScmpArchX32);
        }
        arches
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else if cfg!(target_arch = "s390x") {
        vec![Arch::ScmpArchS390x, Arch::ScmpArchS390]
    } else if cfg!(target_arch = "riscv64") {
        vec![Arch::ScmpArchRiscv64]
    } else {
        return None;
    };
    Some(arches)
}

/// Whether this kernel runs x32 programs: an x32 `getpid` (x86_64's
/// number with the x32 bit) answers, rather than failing with ENOSYS. Asked
/// once, in a child that does nothing else: where berthd itself runs under
/// a filter without x32, the child is the one killed, and the answer is no
/// (nothing berthd starts could make x32 calls either).
fn kernel_runs_x32() -> bool {
    static RUNS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RUNS.get_or_init(|| {
        if !cfg!(target_arch = "x86_64") {
            return false;
        }
        const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
        // SAFETY: the child makes one raw syscall and _exits, both
        // async-signal-safe, so forking a threaded process is sound.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: getpid takes no arguments; _exit ends the child.
                let answered = unsafe { libc::syscall(libc::SYS_getpid | X32_SYSCALL_BIT) } > 0;
                unsafe { libc::_exit(if answered { 0 } else { 1 }) }
            }
            -1 => false,
            child => {
                let child = nix::unistd::Pid::from_raw(child);
                matches!(nix::sys::wait::waitpid(child, None), Ok(nix::sys::wait::WaitStatus::Exited(_, 0)))
            }
        }
    })
}

/// The argument holding `clone`'s flags: s390 swaps the first two.
const CLONE_FLAGS_ARG: usize = if cfg!(target_arch = "s390x") { 1 } else { 0 };

/// Architecture-specific syscalls Docker allows on this host's architecture.
const ARCH_ALLOWED: &[&str] = if cfg!(target_arch = "x86_64") {
    &["arch_prctl", "modify_ldt"]
} else if cfg!(any(target_arch = "aarch64", target_arch = "arm")) {
    &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"]
} else if cfg!(target_arch = "s390x") {
    &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"]
} else if cfg!(target_arch = "riscv64") {
    &["riscv_flush_icache"]
} else if cfg!(target_arch = "powerpc64") {
    &["sync_file_range2", "swapcontext"]
} else {
    &[]
};

/// Syscalls allowed whatever the capabilities (Docker's first rule).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir",
    "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr",
    "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64",
    "futex", "futex_time64", "futex_waitv", "futimesat", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area",
    "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit",
    "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link",
    "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr",
    "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv",
    "msgsnd", "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep",
    "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read",
    "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack",
    "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice",
    "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname",
    "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice",
    "wait4", "waitid", "waitpid", "write", "writev",
];

#[cfg(test)]
mod tests {
    use super::*;

    const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
    const CLONE_NEWNET: u64 = libc::CLONE_NEWNET as u64;
    const SIGCHLD: u64 = libc::SIGCHLD as u64;

    fn caps(extra: &[Capability]) -> HashSet<Capability> {
        crate::confine::DEFAULT_CAPS.iter().chain(extra).copied().collect()
    }

    fn arg_matches(condition: &LinuxSeccompArg, args: &[u64; 6]) -> bool {
        let Some(&actual) = args.get(condition.index()) else {
            return false;
        };
        let value = condition.value();
        match condition.op() {
            LinuxSeccompOperator::ScmpCmpNe => actual != value,
            LinuxSeccompOperator::ScmpCmpLt => actual < value,
            LinuxSeccompOperator::ScmpCmpLe => actual <= value,
            LinuxSeccompOperator::ScmpCmpEq => actual == value,
            LinuxSeccompOperator::ScmpCmpGe => actual >= value,
            LinuxSeccompOperator::ScmpCmpGt => actual > value,
            LinuxSeccompOperator::ScmpCmpMaskedEq => actual & value == condition.value_two().unwrap_or(0),
        }
    }

    /// What the filter answers for `name(args)`: the action and errno of the
    /// first rule whose conditions all hold, else the default. First match
    /// is enough because no name carries two different actions (tested).
    fn verdict(p: &LinuxSeccomp, name: &str, args: [u64; 6]) -> (LinuxSeccompAction, Option<u32>) {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .find(|r| r.args().iter().flatten().all(|c| arg_matches(c, &args)))
            .map_or((p.default_action(), p.default_errno_ret()), |r| (r.action(), r.errno_ret()))
    }

    fn allowed(p: &LinuxSeccomp, name: &str, args: [u64; 6]) -> bool {
        verdict(p, name, args).0 == LinuxSeccompAction::ScmpActAllow
    }

    /// Allowed with any arguments: an unconditional allow rule names it.
    fn always_allowed(p: &LinuxSeccomp, name: &str) -> bool {
        p.syscalls().iter().flatten().any(|r| {
            r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none() && r.names().iter().any(|n| n == name)
        })
    }

    fn never_allowed(p: &LinuxSeccomp, name: &str) -> bool {
        !p.syscalls()
            .iter()
            .flatten()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.names().iter().any(|n| n == name))
    }

    #[test]
    fn seccomp_default_action_is_errno_eperm() {
        let p = default_profile(&caps(&[]));
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(verdict(&p, "no_such_syscall", [0; 6]), (LinuxSeccompAction::ScmpActErrno, Some(1)));
    }

    #[test]
    fn seccomp_docker_caps_deny_privileged_syscalls() {
        let p = default_profile(&caps(&[]));
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "ptrace",
            "process_vm_readv",
            "kcmp",
            "kexec_load",
            "swapon",
            "userfaultfd",
            "init_module",
            "finit_module",
            "bpf",
            "perf_event_open",
            "reboot",
            "open_by_handle_at",
            "settimeofday",
            "acct",
            "iopl",
            "syslog",
            "sethostname",
            "fsopen",
            "open_tree",
            "mbind",
            "vhangup",
        ] {
            assert!(never_allowed(&p, name), "{name} must not be allowed");
            assert_eq!(verdict(&p, name, [0; 6]).1, Some(1), "{name} must fail EPERM");
        }
    }

    #[test]
    fn seccomp_docker_caps_allow_ordinary_syscalls() {
        let p = default_profile(&caps(&[]));
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "exit_group",
            "futex",
            "mmap",
            "wait4",
            "rt_sigreturn",
            "name_to_handle_at",
            "chroot",
        ] {
            assert!(always_allowed(&p, name), "{name} must be allowed");
        }
        #[cfg(target_arch = "x86_64")]
        assert!(always_allowed(&p, "arch_prctl"));
    }

    #[test]
    fn seccomp_clone_without_sys_admin_refuses_namespace_flags() {
        let p = default_profile(&caps(&[]));
        let flags = |f: u64| {
            let mut args = [0; 6];
            args[CLONE_FLAGS_ARG] = f;
            args
        };
        assert!(!always_allowed(&p, "clone"));
        assert!(allowed(&p, "clone", flags(SIGCHLD)), "fork");
        let thread = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID;
        assert!(allowed(&p, "clone", flags(thread as u64)), "thread");
        assert!(!allowed(&p, "clone", flags(SIGCHLD | CLONE_NEWUSER)));
        assert!(!allowed(&p, "clone", flags(SIGCHLD | CLONE_NEWNET)));
        assert_eq!(CLONE_NAMESPACE_FLAGS, 0x7E02_0000);
        assert_eq!(verdict(&p, "clone3", [0; 6]), (LinuxSeccompAction::ScmpActErrno, Some(38)));
    }

    #[test]
    fn seccomp_sys_admin_unlocks_mount_unshare_and_any_clone() {
        let p = default_profile(&caps(&[Capability::SysAdmin]));
        for name in ["mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf"] {
            assert!(always_allowed(&p, name), "{name} must be allowed");
        }
        assert!(allowed(&p, "clone", [CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0, 0]));
        assert!(never_allowed(&p, "ptrace"));
        assert!(never_allowed(&p, "init_module"));
    }

    #[test]
    fn seccomp_each_capability_unlocks_its_syscalls() {
        for (cap, names) in CAPABILITY_SYSCALLS {
            let without = default_profile(&HashSet::new());
            let with = default_profile(&HashSet::from([*cap]));
            for name in *names {
                assert!(always_allowed(&with, name), "{cap:?} must allow {name}");
                if *name != "clone" && *name != "clone3" {
                    assert!(never_allowed(&without, name), "{name} needs {cap:?}");
                }
            }
        }
    }

    #[test]
    fn seccomp_socket_refuses_vsock_only() {
        let p = default_profile(&caps(&[]));
        assert!(allowed(&p, "socket", [libc::AF_INET as u64, 1, 0, 0, 0, 0]));
        assert!(allowed(&p, "socket", [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]));
        assert!(!allowed(&p, "socket", [40, 1, 0, 0, 0, 0]));
    }

    #[test]
    fn seccomp_personality_allows_docker_values_only() {
        let p = default_profile(&caps(&[]));
        for persona in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            assert!(allowed(&p, "personality", [persona, 0, 0, 0, 0, 0]));
        }
        // PER_BSD and READ_IMPLIES_EXEC stay refused.
        assert!(!allowed(&p, "personality", [0x6, 0, 0, 0, 0, 0]));
        assert!(!allowed(&p, "personality", [0x0040_0000, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn seccomp_rules_are_consistent() {
        let all: HashSet<Capability> = CAPABILITY_SYSCALLS.iter().map(|(c, _)| *c).collect();
        for set in [HashSet::new(), caps(&[]), all] {
            let p = default_profile(&set);
            let mut actions: std::collections::HashMap<&str, LinuxSeccompAction> = std::collections::HashMap::new();
            let mut unconditional = HashSet::new();
            for r in p.syscalls().iter().flatten() {
                for n in r.names() {
                    let first = *actions.entry(n).or_insert(r.action());
                    assert_eq!(first, r.action(), "{n} has two actions");
                    if r.args().is_none() {
                        assert!(unconditional.insert(n.as_str()), "{n} listed twice");
                    }
                }
            }
        }
        let table: HashSet<&str> = ALLOWED.iter().copied().collect();
        assert_eq!(table.len(), ALLOWED.len(), "duplicate in ALLOWED");
        assert_eq!(ALLOWED.len(), 346);
        for (_, names) in CAPABILITY_SYSCALLS {
            assert!(names.iter().all(|n| !table.contains(n)), "{names:?} gated yet allowed");
        }
    }

    #[test]
    fn seccomp_profile_roundtrips_through_json() -> Result<(), serde_json::Error> {
        for set in [caps(&[]), caps(&[Capability::SysAdmin, Capability::SysPtrace])] {
            let p = default_profile(&set);
            let json = serde_json::to_string(&p)?;
            assert_eq!(serde_json::from_str::<LinuxSeccomp>(&json)?, p);
            assert!(json.contains(r#""defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1"#));
        }
        let json = serde_json::to_string(&default_profile(&caps(&[])))?;
        assert!(json.contains(r#""errnoRet":38"#), "{json}");
        assert!(json.contains(r#""value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ""#));
        #[cfg(target_arch = "x86_64")]
        {
            let x32 = if kernel_runs_x32() { r#","SCMP_ARCH_X32""# } else { "" };
            assert!(json.contains(&format!(r#""architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"{x32}]"#)));
        }
        Ok(())
    }

    /// The probe agrees with the kernel's own configuration where that is
    /// readable: a kernel built without x32 never runs it (one built with it
    /// may still have it off, Debian's `syscall.x32`).
    #[test]
    fn the_x32_probe_agrees_with_the_kernel_config() {
        let Ok(out) = std::process::Command::new("zcat").arg("/proc/config.gz").output() else { return };
        let config = String::from_utf8_lossy(&out.stdout);
        let x86_64 = config.lines().any(|l| l == "CONFIG_X86_64=y");
        if x86_64 && !config.lines().any(|l| l == "CONFIG_X86_X32_ABI=y") {
            assert!(!kernel_runs_x32(), "the kernel has no x32 ABI, yet the probe says it runs x32");
        }
        // Asked twice, answered once and the same.
        assert_eq!(kernel_runs_x32(), kernel_runs_x32());
    }
}
