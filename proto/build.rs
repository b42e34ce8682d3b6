//! Generates the prost messages and tonic clients and servers for every .proto under `proto/`.
//!
//! No machine this project builds on has a system `protoc`, so the compiler comes from
//! `protoc-bin-vendored` and is handed to prost-build through `Config::protoc_executable` rather
//! than through the `PROTOC` environment variable: setting a variable in the build script's own
//! process would need `unsafe` (`std::env::set_var`), which the workspace forbids.

use std::error::Error;
use std::path::PathBuf;

/// The .proto files, relative to `proto/` (which is also the import root).
const PROTOS: &[&str] = &[
    "flagd/evaluation/v1/evaluation.proto",
    "flagd/evaluation/v2/evaluation.proto",
    "flagd/sync/v1/sync.proto",
    "bunting/v1/bunting.proto",
    "bunting/v1/cluster.proto",
    "bunting/v1/experiments.proto",
    "bunting/v1/rollouts.proto",
    "bunting/v1/tokens.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let protos: Vec<PathBuf> = PROTOS
        .iter()
        .map(|p| PathBuf::from("proto").join(p))
        .collect();
    // The vendored include directory supplies google/protobuf/*.proto (Struct, Timestamp); their
    // Rust types come from prost-types, which prost-build maps them to by default.
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Undecodable requests are the caller's error (INVALID_ARGUMENT), not INTERNAL.
        .codec_path("crate::codec::InvalidArgumentCodec")
        // Serialized descriptors of every file, for gRPC server reflection.
        .file_descriptor_set_path(out_dir.join("bunting_descriptor.bin"))
        .compile_with_config(config, &protos, &includes)?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
