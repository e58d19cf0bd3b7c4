//! Expiry and garbage collection: what the cache may forget, and forgetting it without breaking a
//! pull. Replicas record when content was last pulled ([`access`]); one replica at a time takes a
//! snapshot of storage ([`inventory`]), decides from it what to delete ([`policy`], a pure
//! function of the snapshot, the policy and the time) and carries that out ([`runner`]).

pub mod access;
pub mod config;
pub mod inventory;
pub mod policy;
pub mod runner;

use std::time::Duration;

pub use access::AccessLog;
pub use runner::{Collector, PassError, Report};

/// When content is forgotten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryPolicy {
    /// Forget what nobody pulled for this long (None: never by age).
    pub max_age: Option<Duration>,
    /// Keep the stored bytes under this, least recently pulled first (None: no cap).
    pub max_size: Option<u64>,
    /// How often the fleet runs a pass (zero: only `ocimirror gc`).
    pub interval: Duration,
    /// Nothing pulled more recently than this is deleted, whatever the other limits say: it
    /// covers pulls in progress and access records not yet written.
    pub min_idle: Duration,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        ExpiryPolicy {
            max_age: None,
            max_size: None,
            interval: Duration::from_secs(3600),
            min_idle: Duration::from_secs(600),
        }
    }
}

impl ExpiryPolicy {
    /// How often a replica writes its batch of access records.
    pub fn flush_interval(&self) -> Duration {
        (self.min_idle / 8).clamp(Duration::from_millis(50), Duration::from_secs(10))
    }

    /// A record younger than this is not rewritten: bounds writes for hot content. Half of
    /// `min_idle`, so a pull is on record well before anything could be deleted under it.
    pub fn rewrite_after(&self) -> Duration {
        self.min_idle / 2
    }

    /// How long a pass waits before each check of its choice, so that every replica's latest
    /// access records are in storage by then (three flushes, with room for slow writes).
    pub fn settle_time(&self) -> Duration {
        self.flush_interval() * 3 + Duration::from_millis(100)
    }
}
