fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=node.proto");
    tonic_prost_build::configure().compile_protos(&["node.proto"], &["."])?;
    Ok(())
}
