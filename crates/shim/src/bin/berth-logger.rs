//! `berth-logger`: the program containerd shims run for a container's
//! stdio when berthd asks for `binary://…berth-logger?stdout=…&stderr=…`
//! (see `berth_shim::logger`). Exits 0 once everything is copied.

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    // SAFETY: a binary logger's descriptors 3-5 are containerd's to give,
    // and nothing else in this process uses them.
    if let Err(e) = unsafe { berth_shim::logger::run(&args) } {
        eprintln!("berth-logger: {e}");
        std::process::exit(1);
    }
}
