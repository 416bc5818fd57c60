//! Compiles the vendored googleapis protos with protox (pure Rust, no system `protoc`), then
//! generates prost messages, tonic services and pbjson (proto3 JSON) serde impls from one
//! descriptor set, so gRPC and REST share exactly the same types.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "google/cloud/iot/v1/device_manager.proto",
    "google/pubsub/v1/pubsub.proto",
    "google/iam/v1/iam_policy.proto",
    "google/rpc/status.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
];

/// Packages we emit JSON impls for; well-known types come from `pbjson-types`.
const JSON_PACKAGES: &[&str] = &[
    ".google.cloud.iot.v1",
    ".google.pubsub.v1",
    ".google.iam.v1",
    ".google.rpc",
    ".google.type",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile(PROTOS, [&root])?;
    let descriptor_path = out.join("descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // pbjson-types prints `+00:00`; proto3 JSON (and SPEC.md §2.1) wants `Z`.
        .extern_path(".google.protobuf.Timestamp", "crate::timestamp::Timestamp")
        .compile_fds(fds.clone())?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .ignore_unknown_fields()
        .build(JSON_PACKAGES)?;
    Ok(())
}
