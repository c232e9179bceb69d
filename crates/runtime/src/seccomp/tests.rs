//! The kept programs, and that a container's init loads the kept program
//! of its profile rather than compiling the profile itself.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use berth_cgroups::Hierarchies;
use libcontainer::oci_spec::runtime::{RootBuilder, Spec};
use libcontainer::seccomp::initialize_seccomp_compiled;

use super::*;
use crate::{Runtime, Stdio};

/// Everything allowed but the syscalls `denied` (EPERM).
fn denying(denied: &[&str]) -> LinuxSeccomp {
    serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM }],
    }))
    .unwrap()
}

/// What a container's mkdir calls.
const MKDIR: &[&str] = &["mkdir", "mkdirat"];

fn kept_file(dir: &Path, profile: &LinuxSeccomp) -> std::path::PathBuf {
    kept_path(dir, &identity().unwrap(), &serde_json::to_vec(profile).unwrap())
}

/// Keeps `program` as the program of `profile`, sealed as this binary
/// seals its own.
fn keep_as(dir: &Path, profile: &LinuxSeccomp, program: &[u8]) {
    let json = serde_json::to_vec(profile).unwrap();
    let path = kept_file(dir, profile);
    keep(dir, &path, &seal(&identity().unwrap(), &json, program), program).unwrap();
}

#[test]
fn a_profile_is_compiled_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let profile = denying(&["sethostname"]);
    let first = compiled(Some(dir.path()), &profile).unwrap().unwrap();
    let file = kept_file(dir.path(), &profile);
    let inode = std::fs::metadata(&file).unwrap().ino();
    let again = compiled(Some(dir.path()), &profile).unwrap().unwrap();
    assert_eq!(first.program(), again.program());
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode, "read, not written again");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    // Another profile has a program of its own.
    let other = compiled(Some(dir.path()), &denying(&["uname"])).unwrap().unwrap();
    assert_ne!(other.program(), first.program());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// Another build of the shim (an old one after an upgrade) keeps its
/// program in a file of its own: this build neither reads nor replaces it.
#[test]
fn each_build_of_the_shim_keeps_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let profile = denying(&["sethostname"]);
    let json = serde_json::to_vec(&profile).unwrap();
    let other_build = [identity().unwrap(), b"another build".to_vec()].concat();
    let theirs = kept_path(dir.path(), &other_build, &json);
    assert_ne!(theirs, kept_file(dir.path(), &profile));
    let program = CompiledSeccomp::compile(&profile).unwrap().unwrap();
    let sealed = [&seal(&other_build, &json, program.program())[..], program.program()].concat();
    std::fs::write(&theirs, &sealed).unwrap();
    compiled(Some(dir.path()), &profile).unwrap().unwrap();
    assert_eq!(std::fs::read(&theirs).unwrap(), sealed, "the other build's file is left as it was");
    assert!(kept_file(dir.path(), &profile).exists(), "this build kept its own");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// Old builds' and old profiles' programs do not pile up: past
/// MAX_FILES, the ones written longest ago go.
#[test]
fn the_directory_keeps_at_most_max_files_programs() {
    let dir = tempfile::tempdir().unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let stale = |i: usize| dir.path().join(format!("{i:064x}"));
    for i in 0..MAX_FILES + 10 {
        let f = std::fs::File::create(stale(i)).unwrap();
        f.set_modified(old + std::time::Duration::from_secs(i as u64)).unwrap();
    }
    std::fs::write(dir.path().join(".in-flight.tmp"), b"x").unwrap();
    let profile = denying(&["sethostname"]);
    compiled(Some(dir.path()), &profile).unwrap().unwrap();
    assert!(kept_file(dir.path(), &profile).exists(), "the new program stays");
    for i in 0..=10 {
        assert!(!stale(i).exists(), "the oldest programs went ({i})");
    }
    for i in 11..MAX_FILES + 10 {
        assert!(stale(i).exists(), "the newer programs stay ({i})");
    }
    assert!(dir.path().join(".in-flight.tmp").exists(), "a temporary file is not a program");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), MAX_FILES + 1);
}

#[test]
fn a_kept_program_that_does_not_match_is_compiled_again() {
    let dir = tempfile::tempdir().unwrap();
    let profile = denying(&["sethostname"]);
    let right = CompiledSeccomp::compile(&profile).unwrap().unwrap();
    let file = kept_file(dir.path(), &profile);
    compiled(Some(dir.path()), &profile).unwrap();
    let whole = std::fs::read(&file).unwrap();
    let mut flipped = whole.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let other = CompiledSeccomp::compile(&denying(&["uname"])).unwrap().unwrap();
    let unsealed = [&whole[..32], other.program()].concat();
    for bad in [&whole[..whole.len() - 8], &flipped[..], &unsealed[..], b"", b"not a program"] {
        std::fs::write(&file, bad).unwrap();
        let got = compiled(Some(dir.path()), &profile).unwrap().unwrap();
        assert_eq!(got.program(), right.program(), "compiled again, not taken from a bad file");
        assert_eq!(std::fs::read(&file).unwrap(), whole, "and the file is replaced");
    }
}

/// Whatever sits at a kept file's path that is no regular file of a
/// program's size is not read (a FIFO would block the create): the
/// profile is compiled, and nothing is kept over it.
#[test]
fn a_link_a_fifo_or_a_huge_file_in_the_way_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let profile = denying(&["sethostname"]);
    let file = kept_file(dir.path(), &profile);
    let good = CompiledSeccomp::compile(&profile).unwrap().unwrap();
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert_eq!(compiled(Some(dir.path()), &profile).unwrap().unwrap().program(), good.program());
    std::fs::remove_file(&file).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    compiled(Some(dir.path()), &profile).unwrap();
    std::fs::rename(&file, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
    assert_eq!(compiled(Some(dir.path()), &profile).unwrap().unwrap().program(), good.program());
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, vec![0u8; 64 * 1024]).unwrap();
    assert_eq!(compiled(Some(dir.path()), &profile).unwrap().unwrap().program(), good.program());
}

/// A kept program that others could have written is not taken, however
/// well sealed (the seal is no signature): not from a file others may
/// write, in a directory others may write, or owned by another user.
#[test]
fn a_program_others_could_have_written_is_not_taken() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let profile = denying(&["sethostname"]);
    let file = kept_file(dir.path(), &profile);
    let denies_mkdir = CompiledSeccomp::compile(&denying(MKDIR)).unwrap().unwrap().program().to_vec();
    let taken = |what: &str| {
        let got = compiled(Some(dir.path()), &profile).unwrap().unwrap();
        assert_ne!(got.program(), &denies_mkdir[..], "{what}: taken");
    };
    keep_as(dir.path(), &profile, &denies_mkdir);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o622)).unwrap();
    taken("a file others may write");
    keep_as(dir.path(), &profile, &denies_mkdir);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    taken("in a directory others may write");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    keep_as(dir.path(), &profile, &denies_mkdir);
    std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
    taken("owned by another user");
    // Kept by this user, sealed: taken (the check above is not vacuous).
    keep_as(dir.path(), &profile, &denies_mkdir);
    assert_eq!(compiled(Some(dir.path()), &profile).unwrap().unwrap().program(), &denies_mkdir[..]);
}

#[test]
fn without_a_directory_or_for_a_notify_profile_nothing_is_kept() {
    let profile = denying(&["sethostname"]);
    assert!(compiled(None, &profile).unwrap().is_some(), "compiled, not kept");
    let dir = tempfile::tempdir().unwrap();
    let notify: LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": "/nonexistent",
        "syscalls": [{ "names": ["mkdir"], "action": "SCMP_ACT_NOTIFY" }],
    }))
    .unwrap();
    assert!(compiled(Some(dir.path()), &notify).unwrap().is_none(), "libcontainer loads it (and its listener)");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn what_cannot_be_a_program_is_refused() {
    let profile = denying(&["uname"]);
    for bytes in [0, 7, 9, 8 * 4097] {
        assert!(CompiledSeccomp::from_parts(profile.clone(), vec![0; bytes]).is_err(), "{bytes} bytes");
    }
}

/// Runs `f` in a forked child (single-threaded, as the shim's runtime
/// helpers are) and returns what it returns.
fn in_fork(f: impl FnOnce() -> String) -> String {
    let (rx, tx) = nix::unistd::pipe().unwrap();
    // SAFETY: the child only runs `f` and leaves with _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            drop(rx);
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or_else(|_| "the child panicked".to_string());
            let _ = std::io::Write::write_all(&mut std::fs::File::from(tx), out.as_bytes());
            // SAFETY: leave without running the test harness's destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(tx);
            let mut out = String::new();
            std::fs::File::from(rx).read_to_string(&mut out).unwrap();
            let _ = nix::sys::wait::waitpid(child, None);
            out
        }
    }
}

/// What `uname` gets after `initialize_seccomp_compiled` of `profile` with
/// `compiled`: "ok" or the error.
fn uname_under(profile: LinuxSeccomp, compiled: CompiledSeccomp) -> String {
    in_fork(move || {
        nix::sys::prctl::set_no_new_privs().unwrap();
        if let Err(e) = initialize_seccomp_compiled(&profile, Some(&compiled)) {
            return format!("load failed: {e}");
        }
        nix::sys::utsname::uname().map_or_else(|e| e.to_string(), |_| "ok".to_string())
    })
}

#[test]
fn a_compiled_program_is_loaded_only_for_its_own_profile() {
    let quiet = denying(&["sethostname"]);
    // The program of a profile denying uname, labelled as `quiet`'s.
    let program = CompiledSeccomp::compile(&denying(&["uname"])).unwrap().unwrap().program().to_vec();
    let labelled = CompiledSeccomp::from_parts(quiet.clone(), program).unwrap();
    assert!(uname_under(quiet, labelled.clone()).contains("EPERM"), "the given program was loaded");
    // For another profile, that profile is compiled and loaded instead.
    assert_eq!(uname_under(denying(&["setdomainname"]), labelled), "ok");
}

/// Creates and starts a busybox container running `mkdir -p /made` with
/// `profile`, its programs kept in `cache`; returns its exit and output.
fn run_mkdir(dir: &Path, cache: &Path, profile: &LinuxSeccomp) -> String {
    let rootfs = berth_testing::busybox_rootfs(dir);
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let cgroup = format!("/berth-test-seccomp-{}", std::process::id());
    let mut spec = Spec::default();
    spec.set_root(Some(RootBuilder::default().path(rootfs).readonly(false).build().unwrap()));
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(["mkdir", "-p", "/made"].map(String::from).to_vec()));
    spec.set_process(Some(process));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_cgroups_path(Some(cgroup.clone().into())).set_seccomp(Some(profile.clone()));
    spec.set_linux(Some(linux));
    spec.save(bundle.join("config.json")).unwrap();
    let (root, cache) = (dir.join("state"), cache.to_path_buf());
    let out = in_fork(move || {
        // The init leaves its parent (libcontainer's intermediate process):
        // this child reaps it.
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let (rx, tx): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let stdio =
            Stdio { stdin: None, stdout: Some(tx.try_clone().unwrap()), stderr: Some(tx), console_socket: None };
        let rt = super::super::embedded::Embedded::new(&root, Some(&cache));
        let pid = match rt.create("c", &bundle, stdio).and_then(|pid| rt.start("c").map(|()| pid)) {
            Ok(pid) => pid,
            Err(e) => return format!("failed: {e}"),
        };
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        let mut output = String::new();
        let _ = std::fs::File::from(rx).read_to_string(&mut output);
        let _ = rt.delete("c", true);
        format!("{status:?} {output}")
    });
    let _ = Hierarchies::detect().map(|h| h.remove_tree(&cgroup));
    out
}

#[test]
fn a_container_init_loads_the_kept_program_of_its_profile() {
    let profile = denying(&["sethostname"]);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = run_mkdir(dir.path(), &cache, &profile);
    assert!(out.starts_with("Ok(Exited(") && out.trim_end().ends_with(", 0))"), "mkdir runs: {out}");
    assert!(kept_file(&cache, &profile).exists(), "the create kept the profile's program");
    // The kept program of `profile` replaced by one that denies mkdir:
    // mkdir fails in the container only if its init loaded that program.
    let program = CompiledSeccomp::compile(&denying(MKDIR)).unwrap().unwrap().program().to_vec();
    keep_as(&cache, &profile, &program);
    let out = run_mkdir(dir.path(), &cache, &profile);
    assert!(out.contains("Operation not permitted") && out.contains(", 1))"), "mkdir denied: {out}");
}
