// Shared by the build scripts of berth's long-lived binaries (berthd,
// berth-shim) through `include!`.

/// Optimised builds lay out first the functions the crate's binaries
/// execute in a typical life (the crate's layout.txt, from
/// scripts/layout.sh): the text a process touches is then a few dense
/// megabytes, not pages spread over all of it, each mapped with its 64 KiB
/// of neighbours. Names not in the binary are skipped (rustc links with
/// lld, which reads the list).
fn link_layout() {
    println!("cargo:rerun-if-changed=layout.txt");
    let layout = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("layout.txt");
    if std::env::var("PROFILE").is_ok_and(|p| p == "release") && layout.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", layout.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
