fn main() {
    // Link the shim as a fixed-address executable: no load-time relocation
    // of its data, so far fewer private dirty pages per shim (one shim runs
    // per container). Not for the VM guest's static build (crt-static),
    // which links as static-pie: -no-pie would leave it asking for a
    // dynamic loader the guest does not have.
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
