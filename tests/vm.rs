//! VM sandboxes (SPEC B26, docs/vm.md), from the VMM layer up: a guest
//! booted from `make vm-assets` (under TCG on hosts without usable KVM)
//! whose agent serves the shim v2 Task API over vsock; a container run in
//! it reports the guest kernel, exits with its code and writes its output
//! into the shared directory; failed boots leave no process, socket or
//! file behind. Run as root after `make vm-assets`.

use std::time::Duration;

use berth_vm::{Accel, AccelChoice, Assets, VmSpec, qemu::Microvm};
use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::r#async::transport::Socket;
use containerd_shim_protos::ttrpc::asynchronous::Client;
use containerd_shim_protos::ttrpc::context;
use tempfile::TempDir;

/// Boot under TCG takes 1.5–2.5 s here; leave room for a loaded host.
const BOOT: Duration = Duration::from_secs(60);

fn assets() -> Assets {
    Assets::load(&berth_testing::vm::assets_dir(), env!("CARGO_PKG_VERSION")).unwrap_or_else(|e| panic!("{e}"))
}

fn spec(dir: &TempDir, memory_mib: u64) -> VmSpec {
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let (accel, _note) = berth_vm::accel::resolve(AccelChoice::Auto).unwrap();
    VmSpec {
        id: "vmtest".into(),
        cpus: 1,
        memory_mib,
        share,
        state: dir.path().join("vm"),
        accel,
        assets: assets(),
        guest_log: std::env::var("BERTH_VM_GUEST_LOG").ok(),
        net: None,
    }
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// Runs `args` as container `id` in the guest to its exit: (code, output).
async fn run(vm: &berth_vm::Vm, task: &TaskClient, id: &str, args: &[&str]) -> (u32, String) {
    let share = &vm.spec.share;
    let fail = |what: &str, e: containerd_shim_protos::ttrpc::Error| -> ! {
        panic!("{what} in the guest: {e}\nconsole: {}", vm.console_tail())
    };
    let bundle = berth_testing::vm::guest_bundle(share, berth_model::vm::GUEST_SHARE, id, args);
    let out = format!("{bundle}/out.log");
    let req = api::CreateTaskRequest {
        id: id.into(),
        bundle: bundle.clone(),
        stdout: out.clone(),
        stderr: out,
        ..Default::default()
    };
    task.create(ctx(), &req).await.unwrap_or_else(|e| fail("create", e));
    let start = api::StartRequest { id: id.into(), ..Default::default() };
    task.start(ctx(), &start).await.unwrap_or_else(|e| fail("start", e));
    let wait = api::WaitRequest { id: id.into(), ..Default::default() };
    let code = task.wait(ctx(), &wait).await.unwrap_or_else(|e| fail("wait", e)).exit_status;
    let delete = api::DeleteRequest { id: id.into(), ..Default::default() };
    task.delete(ctx(), &delete).await.unwrap_or_else(|e| fail("delete", e));
    (code, std::fs::read_to_string(share.join(id).join("out.log")).unwrap_or_default())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_in_the_guest_runs_on_the_guests_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, 256);
    let release = spec.assets.kernel_release.clone();
    let mut vm = berth_vm::launch(&Microvm, &spec).expect("launch the VM");
    let pids = vm.pids();
    let stream = vm.wait_ready(BOOT).await.expect("the agent answers");
    let task = TaskClient::new(Client::new(Socket::new(stream)));

    let (code, out) = run(&vm, &task, "uname", &["uname", "-r"]).await;
    assert_eq!((code, out.trim()), (0, release.as_str()), "console: {}", vm.console_tail());
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(host.trim(), release, "the guest must run its own kernel");
    let (code, out) = run(&vm, &task, "fails", &["sh", "-c", "echo to-stderr >&2; exit 7"]).await;
    assert_eq!((code, out.as_str()), (7, "to-stderr\n"));

    // The guest shim's Shutdown powers the guest off; the VM's processes
    // exit by themselves and the state goes with the VM.
    let shutdown = api::ShutdownRequest { id: "vmtest".into(), ..Default::default() };
    let _ = task.shutdown(ctx(), &shutdown).await;
    assert!(vm.stop(Duration::from_secs(20)).await, "the guest powered off");
    assert!(pids.iter().all(|p| !alive(*p)), "VM processes left: {pids:?}");
    assert!(!spec.state.exists(), "the VM's state directory is removed");
    // Without vmx/svm (this project's CI host) `auto` must pick TCG.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    if !cpuinfo.contains(" vmx") && !cpuinfo.contains(" svm") {
        assert_eq!(spec.accel, Accel::Tcg);
    }
}

/// Boots `spec`, which must fail; checks that nothing is left and
/// returns the error.
async fn failed_boot(spec: &VmSpec) -> String {
    let mut vm = berth_vm::launch(&Microvm, spec).expect("the processes start");
    let pids = vm.pids();
    let err = vm.wait_ready(BOOT).await.unwrap_err().to_string();
    drop(vm);
    assert!(pids.iter().all(|p| !alive(*p)), "VM processes left: {pids:?}");
    assert!(!spec.state.exists(), "state left behind");
    err
}

#[tokio::test(flavor = "current_thread")]
async fn a_boot_that_fails_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A kernel that is not one: QEMU exits at once.
    let mut bad = spec(&dir, 256);
    bad.assets.kernel = dir.path().join("share");
    let err = failed_boot(&bad).await;
    assert!(err.contains("did not boot") && err.contains("qemu exited"), "{err}");

    // An initramfs that is not one: the guest kernel panics and QEMU,
    // which does not reboot it, exits.
    let mut panics = spec(&dir, 256);
    panics.assets.initramfs = dir.path().join("garbage");
    std::fs::write(&panics.assets.initramfs, vec![0x5a; 4096]).unwrap();
    let err = failed_boot(&panics).await;
    assert!(err.contains("qemu exited") && err.contains("panic"), "{err}");

    // Too little memory for the kernel and the initramfs (96 MiB panics
    // unpacking it, 64 does not start): refused before anything starts.
    let tiny = VmSpec { memory_mib: 96, ..spec(&dir, 96) };
    let err = berth_vm::launch(&Microvm, &tiny).err().expect("refused").to_string();
    assert!(err.contains("at least 128 MiB"), "{err}");
    assert!(!tiny.state.exists());
}
