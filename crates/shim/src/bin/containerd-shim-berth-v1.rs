//! `containerd-shim-berth-v1`: the name containerd looks for on PATH for
//! the runtime `io.containerd.berth.v1` (SPEC B23). It runs the
//! `berth-shim` beside it with the same arguments; berth-shim tells
//! containerd's calls from berthd's by their flags.

use std::os::unix::process::CommandExt;

fn main() {
    let shim = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("berth-shim"),
        Err(e) => {
            eprintln!("containerd-shim-berth-v1: cannot find own executable: {e}");
            std::process::exit(1);
        }
    };
    let err = std::process::Command::new(&shim).args(std::env::args_os().skip(1)).exec();
    eprintln!("containerd-shim-berth-v1: exec {}: {err}", shim.display());
    std::process::exit(1);
}
