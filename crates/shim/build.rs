fn main() {
    // Link the shim as a fixed-address executable: no load-time relocation
    // of its data, so far fewer private dirty pages per shim (one shim runs
    // per container).
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
