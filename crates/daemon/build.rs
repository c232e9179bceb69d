include!("../build_layout.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build_layout.rs");
    link_layout();
}
