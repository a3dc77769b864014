//! Generates the tandem.loader.v1 code with a vendored protoc: no system protoc needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| format!("vendored protoc is not available for this platform: {e}"))?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    // `bytes` fields (payloads, addresses) as `bytes::Bytes`: decoding a batch slices
    // the received buffer instead of copying each payload, and the loader's fan-out
    // and resends share one copy.
    tonic_prost_build::configure().bytes(".").compile_protos(
        &[
            "proto/tandem/loader/v1/loader.proto",
            "proto/tandem/loader/v1/capture.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
