//! ocimirror: a pull-through caching mirror for OCI registries. See ARCHITECTURE.md for the
//! parts and the flow of a pull.

// A request must never panic the process on a value it did not expect: say what is wrong
// (`expect` with the invariant, or an error) instead of `unwrap()`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod assemble;
pub mod auth;
pub mod cache;
pub mod client_tls;
pub mod cluster;
pub mod config;
pub mod error;
pub mod expiry;
pub mod http;
pub mod import;
pub mod layout;
pub mod metrics;
pub mod oci;
pub mod ops;
pub mod percore;
pub mod registry;
pub mod server;
pub mod status;
pub mod storage;
pub mod upstream;
pub mod util;
pub mod verify;
pub mod watch;
