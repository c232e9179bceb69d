//! What a create costs the kernel more the more containers run, measured
//! with no runtime at all: the floor under `--scale`'s sequential `run -d`.
//! perf at 1,100 running containers found two such steps in the
//! container's init, which every runtime's create takes (runc's too):
//! - the mount of sysfs in the container's new network namespace: the
//!   kernel makes a superblock per network namespace, and looks through
//!   every one it has for a match first;
//! - pivot_root: the kernel moves the root of every thread on the host
//!   whose root was the old one, and looks at every thread to find them.
//!
//! A probe (this binary, re-run with [`PROBE_ARG`]) takes those steps in
//! namespaces of its own and reports how long each took; [`measure`] runs
//! it a number of times and keeps the medians. The probe's mounts live in
//! its own mount namespace and go with it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::measure::median;

/// The argument that makes this binary the probe: `PROBE_ARG DIR`.
pub const PROBE_ARG: &str = "--create-floor-probe";

/// The medians of the probe's steps.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// unshare of a mount and a network namespace.
    pub unshare: Duration,
    /// The mount of sysfs in the new network namespace.
    pub sysfs: Duration,
    pub pivot_root: Duration,
}

impl Floor {
    pub fn total(&self) -> Duration {
        self.unshare + self.sysfs + self.pivot_root
    }
}

/// Runs the probe `rounds` times with `dir` (made here) as its scratch
/// directory; `None` if a run failed.
pub fn measure(dir: &Path, rounds: usize) -> Option<Floor> {
    std::fs::create_dir_all(dir).ok()?;
    let exe = std::env::current_exe().ok()?;
    let mut steps: [Vec<Duration>; 3] = Default::default();
    for _ in 0..rounds {
        let out = Command::new(&exe).arg(PROBE_ARG).arg(dir).stderr(Stdio::inherit()).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let micros: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        if !out.status.success() || micros.len() != 3 {
            eprintln!("create floor: the probe failed ({}): {text}", out.status);
            return None;
        }
        for (all, us) in steps.iter_mut().zip(micros) {
            all.push(Duration::from_micros(us));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    let [a, b, c] = &mut steps;
    Some(Floor { unshare: median(a)?, sysfs: median(b)?, pivot_root: median(c)? })
}

/// The probe's body: prints the microseconds each step took, on one line.
pub fn probe(dir: &Path) -> ! {
    match steps(dir) {
        Ok(t) => {
            println!("{} {} {}", t[0].as_micros(), t[1].as_micros(), t[2].as_micros());
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("create floor probe: {e}");
            std::process::exit(1)
        }
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Fails with the OS error of a libc call that returned -1.
fn check(what: &str, rc: libc::c_long) -> io::Result<()> {
    if rc == -1 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn steps(dir: &Path) -> io::Result<[Duration; 3]> {
    let timed = |what: &str, f: &mut dyn FnMut() -> libc::c_long| -> io::Result<Duration> {
        let t = Instant::now();
        let rc = f();
        let took = t.elapsed();
        check(what, rc).map(|()| took)
    };
    // SAFETY: plain syscalls on valid, NUL-terminated paths; this process
    // is single-threaded (a fresh exec) and does nothing after but exit.
    unsafe {
        let unshare = timed("unshare", &mut || libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET).into())?;
        let (root, none) = (c"/", std::ptr::null());
        let private = libc::mount(none, root.as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null());
        check("make / private", private.into())?;
        let new_root = c_path(dir)?;
        check(
            "mount tmpfs",
            libc::mount(c"tmpfs".as_ptr(), new_root.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()).into(),
        )?;
        for sub in ["sys", "old"] {
            std::fs::create_dir(dir.join(sub))?;
        }
        let sys = c_path(&dir.join("sys"))?;
        let sysfs = timed("mount sysfs", &mut || {
            libc::mount(c"sysfs".as_ptr(), sys.as_ptr(), c"sysfs".as_ptr(), 0, std::ptr::null()).into()
        })?;
        check("chdir", libc::chdir(new_root.as_ptr()).into())?;
        let pivot = timed("pivot_root", &mut || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"old".as_ptr()))?;
        Ok([unshare, sysfs, pivot])
    }
}
