use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    // A vendored protoc, so a build needs no system install.
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Tensor payloads stay `bytes::Bytes` so the emulator can forward them without copying.
    config.bytes(["."]);
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Reflection (grpcurl with no .proto at hand) needs the encoded descriptors.
        .file_descriptor_set_path(out_dir.join("splitinfer_v1_descriptor.bin"))
        .compile_with_config(config, &["proto/splitinfer/v1/splitinfer.proto"], &["proto"])?;
    Ok(())
}
