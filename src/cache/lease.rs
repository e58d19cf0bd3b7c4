//! Fleet leases: which replica of a fleet does a piece of work. Fill leases (one per digest) say
//! which replica fetches an uncached blob from the upstream: it renews the lease while its fill
//! runs, and the others wait for the blob to appear in the shared storage. The expiry lease says
//! which replica runs a garbage-collection pass. A holder that dies stops renewing, its lease
//! expires, and another replica takes over. Without a shared Redis every replica is its own
//! holder, which is always correct (storage commits are atomic, deletions idempotent), only less
//! frugal.

use std::time::Duration;

use async_trait::async_trait;

use crate::oci::Digest;

/// The lease name for filling `digest`.
pub fn fill_lease(digest: &Digest) -> String {
    format!("fill:{digest}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// This replica fills; the token proves ownership for renew and release.
    Acquired(String),
    /// There is no fleet to coordinate with: this replica does the work, with nothing to renew
    /// or release.
    Local,
    /// Another replica is filling.
    HeldElsewhere,
    /// The lease store cannot say: fill locally rather than wait on nothing.
    Unavailable,
}

#[async_trait]
pub trait Leases: Send + Sync + 'static {
    async fn try_acquire(&self, name: &str, ttl: Duration) -> LeaseOutcome;
    /// Extend a lease this replica holds; false when it was lost (expired and taken).
    async fn renew(&self, name: &str, token: &str, ttl: Duration) -> bool;
    async fn release(&self, name: &str, token: &str);
}

/// Every replica fills for itself (single replica, or no shared Redis).
pub struct LocalLeases;

#[async_trait]
impl Leases for LocalLeases {
    async fn try_acquire(&self, _: &str, _: Duration) -> LeaseOutcome {
        LeaseOutcome::Local
    }

    async fn renew(&self, _: &str, _: &str, _: Duration) -> bool {
        true
    }

    async fn release(&self, _: &str, _: &str) {}
}
