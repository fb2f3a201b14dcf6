//! Transport security shared by the Vitrine binaries.
//!
//! - [`tls`]: server and client TLS configurations from PEM files (rustls),
//!   mutual TLS between router and shards.
//! - [`keys`]: API keys with `read` and `write` scopes, from a file that is
//!   re-read when it changes and from the environment; only digests are
//!   kept.
//! - [`auth`]: the tower layer that enforces keys per gRPC method, given a
//!   server's policy.
//! - [`health`]: a plaintext health-check port for probes that cannot speak
//!   TLS.
//!
//! docs/OPERATIONS.md (Security) is the operator's view of all this.
#![forbid(unsafe_code)]

pub mod auth;
pub mod health;
pub mod keys;
pub mod tls;

pub use auth::{Access, AuthLayer, Policy};
pub use health::HealthPort;
pub use keys::{ApiKeys, Scope};
