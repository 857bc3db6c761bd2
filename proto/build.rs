// Compiles the hand-written subset of the Milvus API. protoc comes from a vendored
// binary so that a fresh machine needs nothing installed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().build_server(false).compile_protos(
        &["proto/common.proto", "proto/schema.proto", "proto/milvus.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
