//! berth: a profile's filter compiled to its BPF program ahead of a
//! container's init, which then loads the program instead of compiling the
//! profile. Building libseccomp's rules and program for a default
//! (docker-like) profile is most of an init's CPU time; a caller that
//! creates many containers compiles each profile once and keeps the
//! program.
//!
//! The program is libseccomp's own (`seccomp_export_bpf` of the filter that
//! `initialize_seccomp` builds), and it is loaded with the flags
//! `seccomp_load` would use, so a container filtered either way is filtered
//! the same. The init uses a compiled program only when it was compiled
//! from the very profile the init is given. A profile with
//! `SCMP_ACT_NOTIFY` is never compiled: its listener comes from
//! libseccomp's load.

use std::io::{Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::io;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompFilterFlag};

use super::{Result, SeccompError, filter_context, initialize_seccomp, is_notify};

/// Bytes of one BPF instruction (`struct sock_filter`).
const INSTRUCTION: usize = std::mem::size_of::<libc::sock_filter>();
/// The kernel's bound on a classic BPF program (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

/// A profile and the BPF program libseccomp compiled from it.
#[derive(Clone, Debug)]
pub struct CompiledSeccomp {
    profile: LinuxSeccomp,
    program: Vec<u8>,
}

impl CompiledSeccomp {
    /// Compiles `seccomp` as `initialize_seccomp` does; `None` for a
    /// profile with `SCMP_ACT_NOTIFY`.
    pub fn compile(seccomp: &LinuxSeccomp) -> Result<Option<Self>> {
        if is_notify(seccomp) {
            return Ok(None);
        }
        let ctx = filter_context(seccomp)?;
        // libseccomp 2.5 exports only to a descriptor.
        // SAFETY: memfd_create takes a NUL-terminated name and flags.
        let fd = unsafe { libc::memfd_create(c"seccomp-program".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(SeccompError::ReadProgram {
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        ctx.export_bpf(&file)
            .map_err(|source| SeccompError::ExportProgram { source })?;
        let mut program = Vec::new();
        file.rewind()
            .and_then(|_| file.read_to_end(&mut program))
            .map_err(|source| SeccompError::ReadProgram { source })?;
        Self::from_parts(seccomp.clone(), program).map(Some)
    }

    /// A program that [`CompiledSeccomp::compile`] made from `profile`
    /// earlier (e.g. kept by the caller): the caller vouches that it is.
    /// Refuses what cannot be such a program.
    pub fn from_parts(profile: LinuxSeccomp, program: Vec<u8>) -> Result<Self> {
        if is_notify(&profile) {
            return Err(SeccompError::BadProgram(
                "a profile with SCMP_ACT_NOTIFY is not compiled".into(),
            ));
        }
        let instructions = program.len() / INSTRUCTION;
        if program.len() % INSTRUCTION != 0 || instructions == 0 || instructions > MAX_INSTRUCTIONS
        {
            return Err(SeccompError::BadProgram(format!(
                "{} bytes is not 1 to {MAX_INSTRUCTIONS} instructions",
                program.len()
            )));
        }
        Ok(CompiledSeccomp { profile, program })
    }

    pub fn profile(&self) -> &LinuxSeccomp {
        &self.profile
    }

    pub fn program(&self) -> &[u8] {
        &self.program
    }

    /// Loads the program into the calling thread, as `seccomp_load` of
    /// libseccomp 2.5 does for a filter without a listener (the caller
    /// needs CAP_SYS_ADMIN or no_new_privs, as there).
    pub fn load(&self) -> Result<()> {
        let mut flags: libc::c_ulong = 0;
        let tsync = self
            .profile
            .flags()
            .iter()
            .flatten()
            .any(|f| *f == LinuxSeccompFilterFlag::SeccompFilterFlagTsync);
        for flag in self.profile.flags().iter().flatten() {
            flags |= match flag {
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                    libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
                }
                // libseccomp sets it only with a listener.
                LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
            };
        }
        let program = libc::sock_fprog {
            len: (self.program.len() / INSTRUCTION) as libc::c_ushort,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the kernel copies `len` instructions from `filter`, which
        // `from_parts` checked are there; it does not keep the pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &program as *const libc::sock_fprog,
            )
        };
        match rc {
            0 => Ok(()),
            // With TSYNC, the id of a thread that could not be synced.
            r if r > 0 && tsync => Err(SeccompError::LoadProgram {
                source: std::io::Error::from_raw_os_error(libc::ESRCH),
            }),
            _ => Err(SeccompError::LoadProgram {
                source: std::io::Error::last_os_error(),
            }),
        }
    }
}

/// What a container's init does with its profile: loads `compiled` when
/// it was compiled from this very profile, else compiles and loads the
/// profile itself (`initialize_seccomp`).
pub fn initialize_seccomp_compiled(
    seccomp: &LinuxSeccomp,
    compiled: Option<&CompiledSeccomp>,
) -> Result<Option<io::RawFd>> {
    match compiled {
        Some(c) if c.profile == *seccomp => c.load().map(|()| None),
        _ => initialize_seccomp(seccomp),
    }
}
