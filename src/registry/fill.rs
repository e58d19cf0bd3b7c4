//! The fill: one upstream fetch per blob digest, however many clients want it.
//!
//! A fill runs in its own task. It streams the upstream body into an anonymous spool file (local,
//! unlinked, so nothing to clean up after a crash) and into a storage writer, hashing as it goes,
//! and publishes a watermark of bytes written. Every client, first or late, reads the spool up to
//! the watermark, so a slow or vanished client never slows or cancels the fill, late joiners never
//! refetch, and a range is answered as soon as its bytes are there. The storage object is
//! committed only when length and digest match; on any failure nothing is committed and every
//! client's stream ends in an error, never a short success.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::layout;
use crate::oci::{Digest, Hasher, RepoName};
use crate::storage::Storage;
use crate::upstream::{Upstream, UpstreamError};

use super::LINK_WRITE_TIMEOUT;
use super::lease::FillLease;

/// Bytes handed to a client per read of the spool: what a stalled reader's response holds.
const CHUNK: u64 = 64 * 1024;
/// Bytes gathered before one storage write.
const STORAGE_BATCH: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Connecting,
    Streaming,
    Done,
    /// The upstream refused before sending any bytes: clients get a proper error status.
    Refused(UpstreamError),
    /// Failed after bytes flowed: clients' streams end in an error.
    Broken(String),
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub size: Option<u64>,
    pub written: u64,
    /// Length and digest checked. Until then every reader holds back the blob's last byte, so
    /// a corrupt body can never reach a client as a complete response.
    pub verified: bool,
    pub state: FillState,
}

pub struct Fill {
    /// The repository the fill fetches under: the upstream's answer confirms the blob for this
    /// name only.
    name: RepoName,
    spool: File,
    progress: watch::Receiver<Progress>,
}

pub type ClientStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

impl Fill {
    /// The repository this fill fetches the blob under.
    pub fn name(&self) -> &RepoName {
        &self.name
    }

    /// Wait for the upstream's answer. `Ok(size)` once bytes are flowing (size when announced).
    pub async fn started(&self) -> Result<Option<u64>, UpstreamError> {
        let mut rx = self.progress.clone();
        loop {
            let p = rx.borrow_and_update().clone();
            match p.state {
                FillState::Connecting => {}
                FillState::Refused(e) => return Err(e),
                _ => return Ok(p.size),
            }
            if rx.changed().await.is_err() {
                return Err(UpstreamError::Unavailable("fill ended unexpectedly".into()));
            }
        }
    }

    /// Wait until the fill has finished, successfully or not, and return the final size.
    pub async fn finished(&self) -> Result<u64, String> {
        let mut rx = self.progress.clone();
        loop {
            let p = rx.borrow_and_update().clone();
            match p.state {
                FillState::Done => return Ok(p.written),
                FillState::Broken(m) => return Err(m),
                FillState::Refused(e) => return Err(e.to_string()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err("fill ended unexpectedly".into());
            }
        }
    }

    /// Stream bytes `[start, end)` (to the end of the blob when `end` is `None`) as they arrive.
    pub fn stream(self: Arc<Self>, start: u64, end: Option<u64>) -> ClientStream {
        let rx = self.progress.clone();
        let state = (self, rx, start, false);
        futures_util::stream::unfold(state, move |(fill, mut rx, pos, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let p = rx.borrow_and_update().clone();
                let limit = end.unwrap_or(u64::MAX);
                if pos >= limit {
                    return None;
                }
                let available = if p.verified {
                    p.written
                } else {
                    p.written.saturating_sub(1)
                };
                if pos < available {
                    let n = (available - pos).min(CHUNK).min(limit - pos) as usize;
                    let mut buf = BytesMut::zeroed(n);
                    // The spool is in the page cache; a pread is cheaper than a thread hop.
                    return match fill.spool.read_exact_at(&mut buf, pos) {
                        Ok(()) => Some((Ok(buf.freeze()), (fill, rx, pos + n as u64, false))),
                        Err(e) => Some((Err(e), (fill, rx, pos, true))),
                    };
                }
                if p.verified {
                    // Everything there is has been sent: the end, or a range past it.
                    return end.map(|_| {
                        let e = io::Error::other("blob is shorter than the requested range");
                        (Err(e), (fill, rx, pos, true))
                    });
                }
                match p.state {
                    FillState::Broken(m) => {
                        let e = io::Error::other(format!("upstream fetch failed: {m}"));
                        return Some((Err(e), (fill, rx, pos, true)));
                    }
                    FillState::Refused(e) => {
                        let e = io::Error::other(format!("upstream fetch failed: {e}"));
                        return Some((Err(e), (fill, rx, pos, true)));
                    }
                    FillState::Connecting | FillState::Streaming | FillState::Done => {}
                }
                if rx.changed().await.is_err() {
                    let e = io::Error::other("fill ended unexpectedly");
                    return Some((Err(e), (fill, rx, pos, true)));
                }
            }
        })
        .boxed()
    }
}

pub struct Fills {
    inflight: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    /// Every fill task, so shutdown can let them finish committing: a client may already have
    /// every byte while its blob is still being written to storage.
    tasks: TaskTracker,
    spool_dir: PathBuf,
    storage: Arc<dyn Storage>,
    upstream: Arc<dyn Upstream>,
    read_only: bool,
}

impl Fills {
    pub fn new(
        spool_dir: PathBuf,
        storage: Arc<dyn Storage>,
        upstream: Arc<dyn Upstream>,
        read_only: bool,
    ) -> Self {
        Fills {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            tasks: TaskTracker::new(),
            spool_dir,
            storage,
            upstream,
            read_only,
        }
    }

    /// The fill in flight for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.inflight.lock().expect("lock").get(digest).cloned()
    }

    /// Join the fill for `digest`, starting one (fetching under `name`) when none is in flight.
    /// `lease` is what this replica holds for the digest, renewed while the fill runs and
    /// released when it ends.
    pub fn join_or_start(
        &self,
        name: &RepoName,
        digest: &Digest,
        lease: FillLease,
    ) -> io::Result<Arc<Fill>> {
        let mut map = self.inflight.lock().expect("lock");
        if let Some(f) = map.get(digest) {
            metrics::counter!(crate::metrics::FILL_JOINS).increment(1);
            return Ok(f.clone());
        }
        let spool = tempfile::tempfile_in(&self.spool_dir)?;
        let writer_spool = spool.try_clone()?;
        let (tx, rx) = watch::channel(Progress {
            size: None,
            written: 0,
            verified: false,
            state: FillState::Connecting,
        });
        let fill = Arc::new(Fill {
            name: name.clone(),
            spool,
            progress: rx,
        });
        map.insert(digest.clone(), fill.clone());
        metrics::counter!(crate::metrics::FILLS_STARTED).increment(1);
        metrics::gauge!(crate::metrics::FILLS_IN_FLIGHT).increment(1.0);
        let job = FillJob {
            name: name.clone(),
            digest: digest.clone(),
            spool: writer_spool,
            tx,
            storage: self.storage.clone(),
            upstream: self.upstream.clone(),
            read_only: self.read_only,
            inflight: self.inflight.clone(),
            lease,
        };
        self.tasks.spawn(job.run());
        Ok(fill)
    }

    /// Wait for every fill in flight to finish (commit or fail). New fills may still start.
    pub async fn wait_idle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }
}

struct FillJob {
    name: RepoName,
    digest: Digest,
    spool: File,
    tx: watch::Sender<Progress>,
    storage: Arc<dyn Storage>,
    upstream: Arc<dyn Upstream>,
    read_only: bool,
    inflight: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    lease: FillLease,
}

impl FillJob {
    async fn run(self) {
        let started = std::time::Instant::now();
        let outcome = self.lease.hold(&self.digest, self.fetch()).await;
        self.lease.release().await;
        // Leave the map before announcing the end: a request arriving after this point finds
        // the committed blob in storage (or starts afresh after a failure).
        self.inflight.lock().expect("lock").remove(&self.digest);
        metrics::gauge!(crate::metrics::FILLS_IN_FLIGHT).decrement(1.0);
        let state = match outcome {
            Ok(()) => FillState::Done,
            Err(state) => {
                metrics::counter!(crate::metrics::FILLS_FAILED).increment(1);
                state
            }
        };
        let result = match state {
            FillState::Done => "done",
            FillState::Refused(_) => "refused",
            _ => "broken",
        };
        let written = self.tx.borrow().written;
        crate::status::fill_ended(&self.digest.to_string(), written, started.elapsed(), result);
        self.tx.send_modify(|p| p.state = state);
    }

    async fn fetch(&self) -> Result<(), FillState> {
        let resp = self
            .upstream
            .get_blob(&self.name, &self.digest)
            .await
            .map_err(|e| {
                tracing::warn!(name = %self.name, digest = %self.digest, error = %e, "blob fetch refused");
                FillState::Refused(e)
            })?;
        let size = resp.size;
        self.tx.send_modify(|p| {
            p.size = size;
            p.state = FillState::Streaming;
        });
        let key = layout::blob_data(&self.digest);
        let mut writer = if self.read_only {
            None
        } else {
            match self.storage.writer(&key).await {
                Ok(w) => Some(w),
                Err(e) => {
                    // Clients are still served from the spool; only the caching is lost.
                    tracing::error!(digest = %self.digest, error = %e, "cannot open storage writer; serving without caching");
                    None
                }
            }
        };
        let broken = |m: String| {
            tracing::warn!(name = %self.name, digest = %self.digest, error = %m, "fill failed; nothing stored");
            FillState::Broken(m)
        };
        // Upstream chunks are small (often 16 KiB); storage writes are batched so that a
        // backend paying per call (a blocking-pool hop, an S3 part) is called per MiB.
        let mut pending = BytesMut::with_capacity(STORAGE_BATCH);
        let mut hasher = Hasher::new(self.digest.algorithm());
        let mut written: u64 = 0;
        let mut stream = resp.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| broken(format!("upstream stream broke: {e}")))?;
            if size.is_some_and(|s| written + chunk.len() as u64 > s) {
                return Err(broken(
                    "upstream sent more bytes than its Content-Length".into(),
                ));
            }
            hasher.update(&chunk);
            self.spool
                .write_all_at(&chunk, written)
                .map_err(|e| broken(format!("spool write failed: {e}")))?;
            written += chunk.len() as u64;
            self.tx.send_modify(|p| p.written = written);
            if writer.is_some() {
                pending.extend_from_slice(&chunk);
                if pending.len() >= STORAGE_BATCH {
                    let batch = pending.split().freeze();
                    if let Some(w) = writer.as_mut()
                        && let Err(e) = w.write(batch).await
                    {
                        tracing::error!(digest = %self.digest, error = %e, "storage write failed; serving without caching");
                        writer = None;
                    }
                }
            }
        }
        if let Some(s) = size
            && s != written
        {
            return Err(broken(format!(
                "upstream sent {written} bytes, Content-Length said {s}"
            )));
        }
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(broken(format!("content hashes to {actual}")));
        }
        // Clients may finish now; the commit (an fsync for big blobs) need not delay them.
        self.tx.send_modify(|p| p.verified = true);
        if let Some(mut w) = writer {
            if !pending.is_empty()
                && let Err(e) = w.write(pending.split().freeze()).await
            {
                tracing::error!(digest = %self.digest, error = %e, "storage write failed; not cached");
                return Ok(());
            }
            match w.commit().await {
                Ok(()) => {
                    tracing::info!(name = %self.name, digest = %self.digest, bytes = written, "blob cached");
                    self.link().await;
                }
                Err(e) => {
                    tracing::error!(digest = %self.digest, error = %e, "storage commit failed")
                }
            }
        }
        Ok(())
    }

    /// The upstream served the blob under `name`: that is the confirmation that `name` may serve
    /// it. Written before the lease is released, so a replica waiting on this fill for the same
    /// repository finds the link and asks the upstream nothing.
    async fn link(&self) {
        let key = layout::layer_link(&self.name, &self.digest);
        let body = Bytes::from(self.digest.to_string());
        match tokio::time::timeout(LINK_WRITE_TIMEOUT, self.storage.put(&key, body)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(key, error = %e, "cannot write to storage"),
            Err(_) => tracing::error!(key, "storage write timed out"),
        }
    }
}
