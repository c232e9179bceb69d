//! OOM notification for one container (SPEC B15): on cgroup v1 an eventfd
//! registered through `cgroup.event_control` for `memory.oom_control`; on
//! v2 an inotify watch on `memory.events`, whose `oom_kill` counter is
//! compared with the last value seen.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::Hierarchies;

/// A watch on one container's memory cgroup.
pub struct OomWatch {
    /// eventfd (v1) or inotify (v2) descriptor.
    fd: File,
    /// v1 `memory.oom_control` (kept open: closing it would unregister the
    /// eventfd) or v2 `memory.events`: either holds the `oom_kill` counter.
    counter: PathBuf,
    _control: Option<File>,
    last: u64,
}

fn oom_kills(events: &Path) -> u64 {
    kills_in(&fs::read_to_string(events).unwrap_or_default())
}

/// The `oom_kill` count of memory.oom_control or memory.events text.
fn kills_in(text: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// [`oom_kills`] of a file already open (one open fewer per container
/// when berthd starts watching all of them).
fn oom_kills_of(file: &File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 512];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    kills_in(&String::from_utf8_lossy(&buf[..n]))
}

/// How many OOM kills the kernel counted in the container's memory cgroup
/// so far (0 if it has none, or is gone).
pub fn oom_kills_in(h: &Hierarchies, cgroup: &str) -> u64 {
    h.memory_dirs(cgroup)
        .iter()
        .flat_map(|d| [d.join("memory.oom_control"), d.join("memory.events")])
        .find(|f| f.is_file())
        .map_or(0, |f| oom_kills(&f))
}

fn owned(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl OomWatch {
    /// Starts watching the container's memory cgroup.
    pub fn new(h: &Hierarchies, cgroup: &str) -> io::Result<OomWatch> {
        // Files are opened, not looked up first: one open per container
        // where it is (berthd watches every container when it starts).
        for dir in h.memory_dirs(cgroup) {
            let control = dir.join("memory.oom_control");
            match File::open(&control) {
                Ok(file) => {
                    // SAFETY: plain syscall; the result is checked by `owned`.
                    let efd = owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
                    let register = format!("{} {}", efd.as_raw_fd(), file.as_raw_fd());
                    fs::write(dir.join("cgroup.event_control"), register)?;
                    let last = oom_kills_of(&file);
                    return Ok(OomWatch { fd: File::from(efd), counter: control, _control: Some(file), last });
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                Err(_) => {}
            }
            let events = dir.join("memory.events");
            let path = std::ffi::CString::new(events.as_os_str().as_encoded_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // SAFETY: plain syscalls; results are checked by `owned`.
            let ino = owned(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
            // SAFETY: valid inotify fd and NUL-terminated path.
            if unsafe { libc::inotify_add_watch(ino.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::NotFound {
                    continue;
                }
                return Err(e);
            }
            let last = oom_kills(&events);
            return Ok(OomWatch { fd: File::from(ino), counter: events, _control: None, last });
        }
        Err(io::Error::new(io::ErrorKind::NotFound, format!("no memory cgroup for {cgroup}")))
    }

    /// Drains the descriptor after it became readable and returns how many
    /// OOM kills happened since the last call, from the kernel's counter
    /// (so a v1 notification for the cgroup's removal counts as none).
    /// An error means the cgroup is gone.
    pub fn read(&mut self) -> io::Result<u64> {
        let mut buf = [0u8; 4096];
        loop {
            match self.fd.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if !self.counter.exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "memory cgroup removed"));
        }
        let now = oom_kills(&self.counter);
        let new = now.saturating_sub(self.last);
        self.last = now;
        Ok(new)
    }
}

/// The descriptor that becomes readable on news.
impl AsRawFd for OomWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for OomWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
