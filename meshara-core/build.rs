//! Compiles the wire schema in `proto/` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/meshara/v1/identity.proto",
        "proto/meshara/v1/messaging.proto",
        "proto/meshara/v1/routing.proto",
        "proto/meshara/v1/update.proto",
        "proto/meshara/v1/envelope.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    prost_build::Config::new()
        .out_dir(&out)
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
