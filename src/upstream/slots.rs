//! The places among the requests in flight to one upstream (`max_concurrent_requests`), of
//! which blob downloads never take `manifest_slots`: a blob download takes one of the slots
//! blobs may hold, then one of all the slots; anything else takes one of all the slots only.
//! So the overall cap holds, and manifest, tag list and referrers requests get through while
//! blob downloads fill every slot they may.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::UpstreamError;

/// A place among the requests in flight, held until dropped.
pub struct Slot {
    _all: OwnedSemaphorePermit,
    _blob: Option<OwnedSemaphorePermit>,
}

pub struct Slots {
    /// The `upstream` label of the metrics.
    upstream: String,
    max: usize,
    all: Arc<Semaphore>,
    /// The share of `all` blob downloads may hold.
    blobs: Arc<Semaphore>,
}

impl Slots {
    /// None when `max` is 0 (no cap). `reserved` is kept to at most half of `max`.
    pub fn new(upstream: &str, max: usize, reserved: usize) -> Option<Slots> {
        (max > 0).then(|| Slots {
            upstream: upstream.to_owned(),
            max,
            all: Arc::new(Semaphore::new(max)),
            blobs: Arc::new(Semaphore::new(max - reserved.min(max / 2))),
        })
    }

    fn queued(&self, kind: &'static str) {
        metrics::counter!(crate::metrics::UPSTREAM_QUEUED, "upstream" => self.upstream.clone(), "kind" => kind)
            .increment(1);
    }

    /// A slot for `op`. Blob downloads (`blob_get`) queue for as long as it takes (their
    /// clients are waiting on them); anything else gives up after `wait`, and a cached answer
    /// is served instead.
    pub async fn acquire(&self, op: &'static str, wait: Duration) -> Result<Slot, UpstreamError> {
        let blob = if op == "blob_get" {
            Some(match self.blobs.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.queued("blob");
                    self.blobs
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("never closed")
                }
            })
        } else {
            None
        };
        if let Ok(p) = self.all.clone().try_acquire_owned() {
            return Ok(Slot {
                _all: p,
                _blob: blob,
            });
        }
        if blob.is_none() {
            self.queued("other");
        }
        let acquire = self.all.clone().acquire_owned();
        let permit = if blob.is_some() {
            acquire.await
        } else {
            tokio::time::timeout(wait, acquire).await.map_err(|_| {
                UpstreamError::Unavailable(format!(
                    "{} requests to the upstream already in flight",
                    self.max
                ))
            })?
        };
        Ok(Slot {
            _all: permit.expect("the semaphore is never closed"),
            _blob: blob,
        })
    }
}
