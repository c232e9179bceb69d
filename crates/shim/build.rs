include!("../build_layout.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build_layout.rs");
    // Link the shim as a fixed-address executable: no load-time relocation
    // of its data, so far fewer private dirty pages per shim (one shim runs
    // per container). Not for the static builds (crt-static), which choose
    // their own (scripts/build-static.sh): -no-pie would turn a static-pie
    // into an executable asking for a dynamic loader it does not have.
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    link_layout();
}
