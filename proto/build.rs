// Compiles the hand-written subset of the Milvus API. protoc comes from a vendored
// binary so that a fresh machine needs nothing installed. The server side is generated too:
// the worker's contract tests serve a stand-in Milvus with it (no Milvus 3.0 runs here), and
// for seven calls it adds little to the build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().build_server(true).compile_protos(
        &["proto/common.proto", "proto/schema.proto", "proto/milvus.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
