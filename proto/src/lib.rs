//! Vitrine's contract: the generated gRPC code (`pb`), and what counts as valid
//! input (`validate`, `filter`). Both the router and the shards depend on this
//! crate so that a request is judged by the same rules wherever it lands.
#![forbid(unsafe_code)]

pub mod filter;
pub mod rpc;
pub mod timeout;
pub mod validate;

/// Generated protobuf and gRPC code for package `vitrine.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("vitrine.v1");

    /// Encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vitrine_descriptor");

    /// Method names per service (`methods::VITRINE`, `methods::SHARD`),
    /// generated from the .proto files; request metrics label RPCs with them.
    pub mod methods {
        include!(concat!(env!("OUT_DIR"), "/vitrine_methods.rs"));
    }
}

pub use filter::Filter;
pub use validate::{InvalidInput, Limits};
