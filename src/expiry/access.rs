//! When content was last pulled, kept where every replica and the expiry pass can see it: one
//! small record per digest in storage (`ocimirror/access/<alg>/<hex>`, unix seconds). A pull only
//! notes the digest in memory; a background task writes the records in batches, and rewrites a
//! record at most every `rewrite_after`, so a hot blob costs one write per interval, not one per
//! pull. Content being streamed is held, and its record kept fresh, until the stream ends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::layout;
use crate::oci::Digest;
use crate::storage::Storage;

use super::ExpiryPolicy;

/// Record writes in flight per flush.
const WRITE_CONCURRENCY: usize = 16;

pub struct AccessLog {
    storage: Arc<dyn Storage>,
    rewrite_after: Duration,
    flush_interval: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Pulled since the last flush.
    pending: HashSet<Digest>,
    /// Being streamed now, with how many streams.
    in_use: HashMap<Digest, usize>,
    /// When this replica last wrote each record (pruned once older than `rewrite_after`).
    written: HashMap<Digest, SystemTime>,
}

/// Holds a digest as in use until dropped (the end of a stream).
pub struct Hold {
    log: Arc<AccessLog>,
    digest: Digest,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut st = self.log.state.lock().expect("lock");
        if let Some(n) = st.in_use.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                st.in_use.remove(&self.digest);
            }
        }
        // The end of a long stream is a pull too.
        st.pending.insert(self.digest.clone());
    }
}

impl AccessLog {
    pub fn new(storage: Arc<dyn Storage>, policy: &ExpiryPolicy) -> Arc<Self> {
        Arc::new(AccessLog {
            storage,
            rewrite_after: policy.rewrite_after(),
            flush_interval: policy.flush_interval(),
            state: Mutex::new(State::default()),
        })
    }

    /// How long a manifest this replica found in storage may be served from memory without
    /// looking again. Shorter than a flush, so a manifest served from memory was in storage
    /// less than a flush ago: a pass that deleted it meanwhile finds the pull on record when it
    /// checks again (a settle time later), and keeps the blobs.
    pub fn memory_trust(&self) -> Duration {
        self.flush_interval.min(self.rewrite_after / 2)
    }

    /// Note a pull of `d`. Costs a map look-up; nothing waits on storage.
    pub fn touch(&self, d: &Digest) {
        let mut st = self.state.lock().expect("lock");
        if st.pending.contains(d) || self.recently_written(&st, d, SystemTime::now()) {
            return;
        }
        st.pending.insert(d.clone());
    }

    /// Note a pull of `d` that lasts until the returned hold is dropped.
    pub fn hold(self: &Arc<Self>, d: &Digest) -> Hold {
        let mut st = self.state.lock().expect("lock");
        *st.in_use.entry(d.clone()).or_default() += 1;
        st.pending.insert(d.clone());
        Hold {
            log: self.clone(),
            digest: d.clone(),
        }
    }

    /// Whether `d` was pulled here and its record may not be in storage yet, or is streaming
    /// now: an expiry pass in this process keeps such content.
    pub fn is_active(&self, d: &Digest) -> bool {
        let st = self.state.lock().expect("lock");
        st.pending.contains(d) || st.in_use.contains_key(d)
    }

    fn recently_written(&self, st: &State, d: &Digest, now: SystemTime) -> bool {
        st.written
            .get(d)
            .and_then(|t| now.duration_since(*t).ok())
            .is_some_and(|age| age < self.rewrite_after)
    }

    /// Write the records of everything pulled since the last flush, and of everything still
    /// streaming whose record is due. Returns how many were written.
    pub async fn flush(&self) -> usize {
        let now = SystemTime::now();
        let due: Vec<Digest> = {
            let mut st = self.state.lock().expect("lock");
            let mut due: Vec<Digest> = st.pending.drain().collect();
            let streaming: Vec<Digest> = st
                .in_use
                .keys()
                .filter(|d| !self.recently_written(&st, d, now))
                .cloned()
                .collect();
            due.extend(streaming);
            due.sort();
            due.dedup();
            let rewrite_after = self.rewrite_after;
            st.written
                .retain(|_, t| now.duration_since(*t).is_ok_and(|age| age < rewrite_after));
            due
        };
        if due.is_empty() {
            return 0;
        }
        let stamp = Bytes::from(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                .to_string(),
        );
        let results: Vec<(Digest, bool)> = futures_util::stream::iter(due)
            .map(|d| {
                let stamp = stamp.clone();
                async move {
                    let key = layout::access_marker(&d);
                    match self.storage.put(&key, stamp).await {
                        Ok(()) => (d, true),
                        Err(e) => {
                            tracing::warn!(key, error = %e, "cannot record an access");
                            (d, false)
                        }
                    }
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let mut st = self.state.lock().expect("lock");
        let mut written = 0;
        for (d, ok) in results {
            if ok {
                st.written.insert(d, now);
                written += 1;
            } else {
                // Tried again at the next flush.
                st.pending.insert(d);
            }
        }
        let failed = st.pending.len();
        drop(st);
        metrics::counter!(crate::metrics::ACCESS_RECORDS_WRITTEN).increment(written as u64);
        if failed > 0 {
            metrics::counter!(crate::metrics::STORAGE_ERRORS, "op" => "access_record")
                .increment(failed as u64);
        }
        written
    }

    /// Flush every `flush_interval` until `stop`, then once more.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.flush_interval) => {}
                _ = stop.cancelled() => break,
            }
            self.flush().await;
        }
        self.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expiry::inventory::read_marker;
    use crate::storage::MemoryStorage;

    fn policy(min_idle: Duration) -> ExpiryPolicy {
        ExpiryPolicy {
            min_idle,
            ..ExpiryPolicy::default()
        }
    }

    #[tokio::test]
    async fn pulls_are_written_in_batches_and_hot_records_not_rewritten() {
        let storage = Arc::new(MemoryStorage::new());
        let log = AccessLog::new(storage.clone(), &policy(Duration::from_secs(600)));
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        for _ in 0..1000 {
            log.touch(&a);
        }
        log.touch(&b);
        assert_eq!(
            read_marker(storage.as_ref(), &a).await,
            None,
            "nothing before a flush"
        );
        assert!(log.is_active(&a));
        assert_eq!(log.flush().await, 2);
        let t = read_marker(storage.as_ref(), &a).await.expect("recorded");
        assert!(SystemTime::now().duration_since(t).unwrap() < Duration::from_secs(5));
        assert!(!log.is_active(&a));
        // Within rewrite_after (300 s here) a pull is not written again.
        log.touch(&a);
        assert_eq!(log.flush().await, 0);
    }

    #[tokio::test]
    async fn a_held_digest_is_rewritten_while_streaming_and_noted_at_the_end() {
        let storage = Arc::new(MemoryStorage::new());
        // min_idle 0: every flush is due.
        let log = AccessLog::new(storage.clone(), &policy(Duration::ZERO));
        let a = Digest::sha256_of(b"a");
        let hold = log.hold(&a);
        assert_eq!(log.flush().await, 1);
        assert_eq!(log.flush().await, 1, "still streaming: written again");
        assert!(log.is_active(&a));
        drop(hold);
        assert!(log.is_active(&a), "the end of the stream is pending");
        assert_eq!(log.flush().await, 1);
        assert!(!log.is_active(&a));
        assert_eq!(log.flush().await, 0);
    }

    #[tokio::test]
    async fn failed_writes_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // A file where the storage root's directory should be: every write fails.
        std::fs::write(&root, b"").unwrap();
        let storage = Arc::new(crate::storage::FsStorage::new(&root));
        let log = AccessLog::new(storage, &policy(Duration::from_secs(600)));
        let a = Digest::sha256_of(b"a");
        log.touch(&a);
        assert_eq!(log.flush().await, 0);
        assert!(log.is_active(&a), "kept for the next flush");
    }
}
