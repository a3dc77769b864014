//! Generates the test gRPC service (proto/tandem_test.proto) with a vendored protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| format!("vendored protoc is not available for this platform: {e}"))?;
    // Build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/tandem_test.proto");
    tonic_prost_build::configure().compile_protos(&["proto/tandem_test.proto"], &["proto"])?;
    Ok(())
}
