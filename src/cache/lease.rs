//! Fleet leases: which replica of a fleet does a piece of work. Fill leases (one per digest) say
//! which replica fetches an uncached blob from the upstream: it renews the lease while its fill
//! runs, and the others stream the fill from it (the lease's value says where the holder can be
//! reached) or wait for the blob to appear in the shared storage. The expiry lease says
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
    /// This replica fills; the token (the lease's value) proves ownership for renew and release.
    Acquired(String),
    /// There is no fleet to coordinate with: this replica does the work, with nothing to renew
    /// or release.
    Local,
    /// Another replica is filling; the lease's value, which names where that replica can be
    /// reached when it said (see [`holder_peer`]).
    HeldElsewhere(String),
    /// The lease store cannot say: fill locally rather than wait on nothing.
    Unavailable,
}

/// A new lease value: a random token, and after a space where the holder can be reached by
/// the other replicas (its peer address), when it can.
pub fn lease_value(peer: Option<&str>) -> String {
    let token = uuid::Uuid::new_v4().to_string();
    match peer {
        Some(p) => format!("{token} {p}"),
        None => token,
    }
}

/// Where the holder of a lease with this value can be reached, if it said. A value written by
/// a replica without a peer address (or by an older version) names none.
pub fn holder_peer(value: &str) -> Option<&str> {
    value
        .split_once(' ')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Take `name` for `ttl` unless another replica holds it. `peer` is where this replica can
    /// be reached while it holds the lease (written into the lease's value).
    async fn try_acquire(&self, name: &str, ttl: Duration, peer: Option<&str>) -> LeaseOutcome;
    /// Take `name` from a holder known to be gone, only if the lease still has the value `held`
    /// (or has just expired): another replica that took it first keeps it.
    async fn take_over(
        &self,
        name: &str,
        held: &str,
        ttl: Duration,
        peer: Option<&str>,
    ) -> LeaseOutcome {
        let _ = (name, ttl, peer);
        LeaseOutcome::HeldElsewhere(held.to_owned())
    }
    /// Extend a lease this replica holds; false when it was lost (expired and taken).
    async fn renew(&self, name: &str, token: &str, ttl: Duration) -> bool;
    async fn release(&self, name: &str, token: &str);
}

/// Every replica fills for itself (single replica, or no shared Redis).
pub struct LocalLeases;

#[async_trait]
impl Leases for LocalLeases {
    async fn try_acquire(&self, _: &str, _: Duration, _: Option<&str>) -> LeaseOutcome {
        LeaseOutcome::Local
    }

    async fn renew(&self, _: &str, _: &str, _: Duration) -> bool {
        true
    }

    async fn release(&self, _: &str, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_value_names_its_holder_when_it_can_be_reached() {
        let v = lease_value(Some("http://10.0.0.5:5001"));
        assert_eq!(holder_peer(&v), Some("http://10.0.0.5:5001"));
        assert_ne!(
            v,
            lease_value(Some("http://10.0.0.5:5001")),
            "a fresh token each time"
        );
        assert_eq!(holder_peer(&lease_value(None)), None);
        // A value of an older version: a bare token.
        assert_eq!(holder_peer("0b1c8a9e-2f6d-4c3b-9a51-7e0d4f2a6b13"), None);
    }
}
