//! Generates the tandem.loader.v1 code with a vendored protoc: no system protoc needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| format!("vendored protoc is not available for this platform: {e}"))?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/tandem/loader/v1/loader.proto",
            "proto/tandem/loader/v1/capture.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
