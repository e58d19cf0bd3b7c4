//! ocimirror: a pull-through caching mirror for OCI registries. See ARCHITECTURE.md for the
//! parts and the flow of a pull.

pub mod assemble;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod expiry;
pub mod http;
pub mod import;
pub mod layout;
pub mod metrics;
pub mod oci;
pub mod ops;
pub mod registry;
pub mod server;
pub mod status;
pub mod storage;
pub mod upstream;
pub mod util;
pub mod verify;
pub mod watch;
