//! Fill leases: which replica of a fleet fetches an uncached blob from the upstream. One replica
//! holds the lease for a digest and renews it while its fill runs; the others wait for the blob
//! to appear in the shared storage. A holder that dies stops renewing, its lease expires, and a
//! waiting replica takes over. Without a shared Redis every replica is its own holder, which is
//! always correct (storage commits are atomic), only less frugal.

use std::time::Duration;

use async_trait::async_trait;

use crate::oci::Digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// This replica fills; the token proves ownership for renew and release.
    Acquired(String),
    /// Another replica is filling.
    HeldElsewhere,
    /// The lease store cannot say: fill locally rather than wait on nothing.
    Unavailable,
}

#[async_trait]
pub trait FillLeases: Send + Sync + 'static {
    async fn try_acquire(&self, digest: &Digest, ttl: Duration) -> LeaseOutcome;
    /// Extend a lease this replica holds; false when it was lost (expired and taken).
    async fn renew(&self, digest: &Digest, token: &str, ttl: Duration) -> bool;
    async fn release(&self, digest: &Digest, token: &str);
}

/// Every replica fills for itself (single replica, or no shared Redis).
pub struct LocalLeases;

#[async_trait]
impl FillLeases for LocalLeases {
    async fn try_acquire(&self, _: &Digest, _: Duration) -> LeaseOutcome {
        LeaseOutcome::Acquired(String::new())
    }

    async fn renew(&self, _: &Digest, _: &str, _: Duration) -> bool {
        true
    }

    async fn release(&self, _: &Digest, _: &str) {}
}
