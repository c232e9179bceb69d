fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../../api/proto/berth/v1/berth.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure().compile_protos(&[proto], &["../../api/proto"])?;
    Ok(())
}
