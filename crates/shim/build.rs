fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=layout.txt");
    // Link the shim as a fixed-address executable: no load-time relocation
    // of its data, so far fewer private dirty pages per shim (one shim runs
    // per container). Not for the static builds (crt-static), which choose
    // their own (scripts/build-static.sh): -no-pie would turn a static-pie
    // into an executable asking for a dynamic loader it does not have.
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    // Optimised builds lay out first the functions a running shim executes
    // (layout.txt, from scripts/shim-layout.sh): the text it touches is
    // then a few dense megabytes, not pages spread over all of it, each
    // mapped with its 64 KiB of neighbours. Names not in the binary are
    // skipped (rustc links with lld, which reads the list).
    let layout = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("layout.txt");
    if std::env::var("PROFILE").is_ok_and(|p| p == "release") && layout.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", layout.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
