//! Bunting's gRPC surface as Rust types: flagd's evaluation (v1, v2) and sync (v1) protocols,
//! which Bunting serves unchanged so stock OpenFeature flagd providers work against it, and
//! Bunting's own API (`bunting.v1`). Modules mirror the protobuf packages.
//!
//! The .proto files live in `proto/proto/`; `build.rs` generates prost messages and tonic clients
//! and servers from them. [`json`] converts between `google.protobuf.Struct` and JSON, which every
//! layer above needs because the engine speaks JSON and the protocols speak Struct.

pub mod codec;
pub mod json;

/// flagd's protocols (package `flagd.*`).
pub mod flagd {
    /// flagd's RPC evaluation protocol (package `flagd.evaluation.*`).
    pub mod evaluation {
        /// `flagd.evaluation.v1`: spoken by open-feature-flagd (Rust) 0.3 and older providers.
        pub mod v1 {
            tonic::include_proto!("flagd.evaluation.v1");
        }

        /// `flagd.evaluation.v2`: as v1, with optional `value` and `variant`; spoken by current
        /// Python and JavaScript providers.
        pub mod v2 {
            tonic::include_proto!("flagd.evaluation.v2");
        }
    }

    /// flagd's sync protocol for in-process providers (package `flagd.sync.*`).
    pub mod sync {
        /// `flagd.sync.v1`: `FlagSyncService`.
        pub mod v1 {
            tonic::include_proto!("flagd.sync.v1");
        }
    }
}

/// Bunting's own API (package `bunting.*`).
pub mod bunting {
    /// `bunting.v1`: the `Evaluation` (bulk evaluation) and `Admin` services.
    pub mod v1 {
        tonic::include_proto!("bunting.v1");
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of every .proto in this crate (and the well-known
/// types they import), for gRPC server reflection (e.g. `tonic-reflection`'s
/// `register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bunting_descriptor.bin"));
