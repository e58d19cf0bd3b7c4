//! One expiry pass, and the schedule that runs passes in one replica of the fleet at a time.
//!
//! A pass holds the fleet's `expiry` lease, takes a snapshot, plans, then waits long enough for
//! every replica's latest access records to reach storage and checks each victim's record again:
//! content pulled since the snapshot is spared, with everything it references. Deletion goes
//! tags, revisions, data, layer links, in that order, so a reader never resolves a tag to a
//! manifest that is gone. A reader that loses the race (it found the data an instant before it
//! went) is answered by fetching again from the upstream, never with an error.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cache::lease::{LeaseOutcome, Leases};
use crate::layout;
use crate::oci::Digest;
use crate::storage::{Storage, StorageError};
use crate::util::unix_secs;

use super::ExpiryPolicy;
use super::access::AccessLog;
use super::inventory::{self, Inventory};
use super::policy::{self, Plan, Reason};

/// The fleet-wide lease a pass holds.
pub const LEASE: &str = "expiry";
const LEASE_TTL: Duration = Duration::from_secs(60);
/// Deletions in flight.
const DELETE_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("another replica is running an expiry pass")]
    Busy,
    #[error("the expiry lease was lost; the pass stopped")]
    LeaseLost,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a pass found and did (or, in a dry run, would do).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub blobs: usize,
    pub manifests: usize,
    pub repositories: usize,
    pub stored_bytes: u64,
    pub removed_manifests: usize,
    pub removed_blobs: usize,
    pub removed_bytes: u64,
    pub removed_by_age: usize,
    pub removed_by_size: usize,
    pub removed_links: usize,
    pub removed_records: usize,
    pub removed_temp_files: usize,
    /// Chosen, then pulled again before deletion.
    pub spared: usize,
    pub kept_bytes: u64,
    /// Digests removed (or to be removed), for `--dry-run`.
    pub removed: Vec<String>,
    pub errors: usize,
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub struct Collector {
    storage: Arc<dyn Storage>,
    leases: Arc<dyn Leases>,
    access: Option<Arc<AccessLog>>,
    policy: ExpiryPolicy,
    clock: Clock,
    settle: Duration,
}

impl Collector {
    pub fn new(storage: Arc<dyn Storage>, leases: Arc<dyn Leases>, policy: ExpiryPolicy) -> Self {
        Collector {
            storage,
            leases,
            access: None,
            settle: policy.settle_time(),
            policy,
            clock: Arc::new(SystemTime::now),
        }
    }

    /// The access log of this process: flushed before a pass, and consulted for pulls whose
    /// records are not written yet.
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Self {
        self.access = Some(log);
        self
    }

    /// Decide with another clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How long to wait between choosing and deleting (tests shorten it).
    pub fn with_settle_time(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// One pass under the fleet's lease.
    pub async fn pass(&self, dry_run: bool) -> Result<Report, PassError> {
        if dry_run {
            return self.pass_unleased(true).await;
        }
        let token = match self.leases.try_acquire(LEASE, LEASE_TTL, None).await {
            LeaseOutcome::Acquired(t) => Some(t),
            LeaseOutcome::HeldElsewhere(_) => return Err(PassError::Busy),
            // A replica on its own, or no lease store: deletions are idempotent, so a pass here
            // is still safe.
            LeaseOutcome::Local | LeaseOutcome::Unavailable => None,
        };
        let renew = async {
            let Some(t) = &token else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                if !self.leases.renew(LEASE, t, LEASE_TTL).await {
                    return PassError::LeaseLost;
                }
            }
        };
        let r = tokio::select! {
            r = self.pass_unleased(false) => r,
            e = renew => Err(e),
        };
        if let Some(t) = &token {
            self.leases.release(LEASE, t).await;
        }
        let result = match &r {
            Ok(_) => "ok",
            Err(_) => "failed",
        };
        metrics::counter!(crate::metrics::EXPIRY_PASSES, "result" => result).increment(1);
        r
    }

    async fn pass_unleased(&self, dry_run: bool) -> Result<Report, PassError> {
        if let Some(log) = &self.access {
            log.flush().await;
        }
        let now = (self.clock)();
        let inv = inventory::scan(self.storage.as_ref()).await?;
        let mut plan = policy::plan(&inv, &self.policy, now);
        let mut report = Report {
            dry_run,
            blobs: inv.blobs.len(),
            manifests: inv.manifests.len(),
            repositories: inv.repos.len(),
            stored_bytes: inv.total_bytes(),
            ..Report::default()
        };
        metrics::gauge!(crate::metrics::STORAGE_BYTES).set(report.stored_bytes as f64);
        let mut gone = BTreeSet::new();
        if !dry_run && !plan.is_empty() {
            tokio::time::sleep(self.settle).await;
            for d in self.recheck(&inv, &plan).await {
                report.spared += plan.spare(&d, &inv);
            }
            // Phase 1: the manifests go first, so no pull can start on them any more.
            let (tags_and_revisions, _) = plan.links(&inv);
            report.removed_links += tags_and_revisions.len();
            report.errors += self.delete_all(tags_and_revisions).await;
            let data: Vec<String> = plan.manifests.iter().map(layout::blob_data).collect();
            report.errors += self.delete_all(data).await;
            gone = plan.manifests.clone();
            // Phase 2: a pull that was given one of them before it went is on record once
            // the replicas have flushed; what it references stays.
            tokio::time::sleep(self.settle).await;
            for d in self.recheck(&inv, &plan).await {
                report.spared += spare_refs(&mut plan, &d, &gone, &inv);
            }
            let (_, layer_links) = plan.links(&inv);
            report.removed_links += layer_links.len();
            let data: Vec<String> = plan
                .blobs
                .keys()
                .filter(|d| !gone.contains(*d))
                .map(layout::blob_data)
                .collect();
            report.errors += self.delete_all(data).await;
            report.errors += self.delete_all(layer_links).await;
            let records: Vec<String> = plan
                .blobs
                .keys()
                .chain(&inv.orphan_markers)
                .map(layout::access_marker)
                .collect();
            report.errors += self.delete_all(records).await;
        } else if dry_run {
            let (a, b) = plan.links(&inv);
            report.removed_links = a.len() + b.len();
            gone = plan.manifests.clone();
        }
        report.kept_bytes = plan.kept_bytes;
        report.removed_manifests = gone.len();
        report.removed_blobs = plan.blobs.len();
        report.removed_bytes = plan.bytes();
        report.removed_by_age = plan
            .blobs
            .values()
            .filter(|(_, r)| *r == Reason::Age)
            .count();
        report.removed_by_size = plan.blobs.len() - report.removed_by_age;
        report.removed = plan.blobs.keys().map(|d| d.to_string()).collect();
        report.removed_records = inv.orphan_markers.len() + plan.blobs.len();
        if dry_run {
            return Ok(report);
        }
        if plan.is_empty() && !inv.orphan_markers.is_empty() {
            let records: Vec<String> = inv
                .orphan_markers
                .iter()
                .map(layout::access_marker)
                .collect();
            report.errors += self.delete_all(records).await;
        }
        // Clean-up of what killed writers left; a failure here spoils nothing done above.
        report.removed_temp_files = match self
            .storage
            .remove_abandoned(crate::storage::ABANDONED_TEMP_AGE)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "expiry: cannot clean up abandoned uploads");
                report.errors += 1;
                0
            }
        };
        metrics::counter!(crate::metrics::EXPIRY_REMOVED_BYTES).increment(report.removed_bytes);
        metrics::counter!(crate::metrics::EXPIRY_REMOVED_BLOBS)
            .increment(report.removed_blobs as u64);
        metrics::gauge!(crate::metrics::STORAGE_BYTES).set(report.kept_bytes as f64);
        let stamp = Bytes::from(unix_secs(now).to_string());
        self.storage.put(layout::LAST_EXPIRY_PASS, stamp).await?;
        Ok(report)
    }

    /// What was pulled after the snapshot, by its record in storage or by this process's own
    /// notes.
    async fn recheck(&self, inv: &Inventory, plan: &Plan) -> Vec<Digest> {
        if let Some(log) = &self.access {
            log.flush().await;
        }
        let victims: Vec<Digest> = plan.blobs.keys().cloned().collect();
        futures_util::stream::iter(victims)
            .map(|d| async move {
                let noted = self.access.as_ref().is_some_and(|l| l.is_active(&d));
                let pulled = inventory::read_marker(self.storage.as_ref(), &d).await;
                let before = inv.blobs.get(&d).map(|b| b.last_access);
                let again = noted || pulled.is_some_and(|p| before.is_none_or(|b| p > b));
                again.then_some(d)
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// Delete `keys`; returns how many failed (logged; the next pass tries again).
    async fn delete_all(&self, keys: Vec<String>) -> usize {
        futures_util::stream::iter(keys)
            .map(|k| async move {
                match self.storage.delete(&k).await {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::warn!(key = k, error = %e, "expiry: cannot delete");
                        1
                    }
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .fold(0, |a, n| async move { a + n })
            .await
    }

    /// Run a pass whenever the fleet's last one is `interval` old, until `stop`. Every replica
    /// runs this; the lease and the shared record of the last pass make it one pass per
    /// interval for the whole fleet.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let interval = self.policy.interval;
        if interval.is_zero() {
            return;
        }
        let tick = (interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        loop {
            // Replicas started together should not all look at once.
            let jitter = tick.mul_f64(rand_fraction() * 0.25);
            tokio::select! {
                _ = tokio::time::sleep(tick + jitter) => {}
                _ = stop.cancelled() => return,
            }
            if !self.due(interval).await {
                continue;
            }
            let pass = tokio::select! {
                r = self.pass(false) => r,
                _ = stop.cancelled() => return,
            };
            match pass {
                Ok(r) => tracing::info!(
                    removed_blobs = r.removed_blobs,
                    removed_manifests = r.removed_manifests,
                    removed_bytes = r.removed_bytes,
                    kept_bytes = r.kept_bytes,
                    spared = r.spared,
                    errors = r.errors,
                    "expiry pass done"
                ),
                Err(PassError::Busy) => {}
                Err(e) => tracing::warn!(error = %e, "expiry pass failed"),
            }
        }
    }

    async fn due(&self, interval: Duration) -> bool {
        let last = match self.storage.read(layout::LAST_EXPIRY_PASS).await {
            Ok(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok()),
            Err(_) => None,
        };
        let now = u64::try_from(unix_secs((self.clock)())).unwrap_or(0);
        last.is_none_or(|l| now.saturating_sub(l) >= interval.as_secs())
    }
}

/// Keep what `d` references (it was pulled again), or `d` itself when it is still stored.
/// Manifests in `gone` are already deleted: only what they reference can be kept.
fn spare_refs(plan: &mut Plan, d: &Digest, gone: &BTreeSet<Digest>, inv: &Inventory) -> usize {
    if !gone.contains(d) {
        return plan.spare(d, inv);
    }
    let mut n = 0;
    for r in inv.manifests.get(d).into_iter().flatten() {
        n += spare_refs(plan, r, gone, inv);
    }
    n
}

fn rand_fraction() -> f64 {
    (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests;
