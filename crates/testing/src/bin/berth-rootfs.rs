//! Builds the busybox test root filesystem in DIR (for the demo and the
//! benchmarks) and prints its path.

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: berth-rootfs DIR");
        std::process::exit(2);
    };
    let root = berth_testing::busybox_rootfs(std::path::Path::new(&dir));
    println!("{}", root.display());
}
