//! Generated code for the Google APIs Perch speaks: `google.cloud.iot.v1` (DeviceManager),
//! `google.pubsub.v1`, `google.iam.v1` and `google.rpc`, with prost messages, tonic clients and
//! servers, and pbjson serde impls that follow the proto3 JSON mapping (camelCase out, camelCase
//! and snake_case in, int64 as strings, enums by name or number).
//!
//! Owns nothing but generated code. The protos are vendored under `proto/` from the npm package
//! `google-proto-files` 6.0.1 (Apache-2.0, see `proto/LICENSE`), so the build needs no network.
#![allow(
    clippy::all,
    missing_docs,
    unreachable_pub,
    missing_debug_implementations
)]

pub mod timestamp;

macro_rules! generated {
    ($file:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $file, ".rs"));
    };
    ($file:literal, json) => {
        include!(concat!(env!("OUT_DIR"), "/", $file, ".rs"));
        include!(concat!(env!("OUT_DIR"), "/", $file, ".serde.rs"));
    };
}

pub mod google {
    pub mod api {
        generated!("google.api");
    }
    pub mod cloud {
        pub mod iot {
            pub mod v1 {
                generated!("google.cloud.iot.v1", json);
            }
        }
    }
    pub mod pubsub {
        pub mod v1 {
            generated!("google.pubsub.v1", json);
        }
    }
    pub mod iam {
        pub mod v1 {
            generated!("google.iam.v1", json);
        }
    }
    pub mod rpc {
        generated!("google.rpc", json);
    }
    pub mod r#type {
        generated!("google.r#type", json);
    }
}

/// The encoded `FileDescriptorSet` of every vendored proto (for gRPC reflection and tools).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

pub use google::cloud::iot::v1 as iot;
pub use google::pubsub::v1 as pubsub;
