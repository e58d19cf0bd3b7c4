//! The task behind a fill: where its bytes come from and what is done with them.
//!
//! The replica holding the digest's fill lease reads the upstream and writes a storage object,
//! committed only when length and digest match: beside the spool, or, on a filesystem store, as
//! the spool (the writer's file takes the spool's place, and falls back to a spool of the fill's
//! own when the store fails a write). A replica that found the lease
//! held relays the holder's fill from its peer stream (the holder's last byte arrives only after
//! the holder verified the digest) into its own spool, and commits nothing: the holder does.
//!
//! Every byte is hashed as it is written to the spool, so a relay whose stream breaks already
//! holds the hash of its prefix. It then continues from where it is (see `Fleet::after_break`):
//! from the lease's new holder, from storage if the holder committed meanwhile, or from the
//! upstream under the lease it took over, asking for the rest with a `Range` (the whole blob,
//! skipping what it has, when the upstream ignores ranges) and writing the prefix from its spool
//! to storage first. Its clients' streams carry on where they were. A holder's own failure is
//! final: every client's stream ends in an error, nothing is committed.
//!
//! Two bounds beyond the upstream's own: a fill of a blob whose size a manifest of its
//! repository declared takes no more than that (`declared.rs`), from any source; and a fill
//! nobody reads any more (no client, range waiter or peer stream holds it) for
//! `upstream.abandon_fills_after` stops fetching, freeing its upstream slot, rather than
//! fetching a whole blob for the cache alone.
//!
//! While storage reads are refused (the breaker's read circuit is open) a fill writes nothing:
//! its clients are served from the spool, and a fill that was writing when the circuit opened
//! drops its writer (nothing is published) rather than wait on the store.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::LINK_WRITE_TIMEOUT;
use super::fill::{Fill, FillState, Origin, Progress, Spool};
use super::lease::{Fleet, Next, PEER_RETRY_MIN, REMOTE_POLL_MAX, REMOTE_POLL_MIN, Start};
use super::peer::PeerError;
use crate::cache::lease::holder_peer;
use crate::layout;
use crate::oci::{Digest, Hasher, RepoName};
use crate::storage::{ObjectWriter, Storage, StorageError};
use crate::upstream::{Upstream, UpstreamError};

/// Bytes gathered before one storage write.
const STORAGE_BATCH: usize = 1024 * 1024;

/// `work`'s output, or None when `stop` resolves first (`work` is then dropped).
async fn unless<T>(stop: impl Future<Output = ()>, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = work => Some(r),
        () = stop => None,
    }
}

/// Why a source stopped short.
enum Stop {
    /// The peer stream ended early; the fill may go on from another source.
    Peer(PeerError),
    /// The fill has failed: this is its final state.
    Fail(FillState),
}

/// What every fill works with: where its blob is kept, where it comes from, and whether
/// storage may be written at all.
#[derive(Clone)]
pub struct Backing {
    pub storage: Arc<dyn Storage>,
    pub upstream: Arc<dyn Upstream>,
    pub read_only: bool,
}

pub struct FillJob {
    name: RepoName,
    digest: Digest,
    /// The file this fill writes and its clients read (`shared` names it to them).
    spool: Arc<File>,
    shared: Arc<Spool>,
    /// Where a spool of the fill's own is made when the store's file cannot take the bytes.
    spool_dir: PathBuf,
    tx: watch::Sender<Progress>,
    storage: Arc<dyn Storage>,
    upstream: Arc<dyn Upstream>,
    read_only: bool,
    fleet: Arc<Fleet>,
    hasher: Hasher,
    written: u64,
    size: Option<u64>,
    /// The size a manifest of `name` declares for the blob: binding on every source.
    declared: Option<u64>,
    /// The fill its clients hold: nobody holding it (but the map of fills) means nobody reads.
    readers: Option<Weak<Fill>>,
}

impl FillJob {
    pub fn new(
        name: RepoName,
        digest: Digest,
        shared: Arc<Spool>,
        spool_dir: PathBuf,
        tx: watch::Sender<Progress>,
        backing: Backing,
        fleet: Arc<Fleet>,
    ) -> Self {
        let Backing {
            storage,
            upstream,
            read_only,
        } = backing;
        let hasher = Hasher::new(digest.algorithm());
        FillJob {
            name,
            digest,
            spool: shared.current(),
            shared,
            spool_dir,
            tx,
            storage,
            upstream,
            read_only,
            fleet,
            hasher,
            written: 0,
            size: None,
            declared: None,
            readers: None,
        }
    }

    /// Held to the `declared` size, and abandoned once nobody holds `readers` for a while.
    pub fn bounded(mut self, declared: Option<u64>, readers: Weak<Fill>) -> Self {
        self.declared = declared;
        self.readers = Some(readers);
        self
    }

    /// Fill from `start` on until the blob is verified (and, for the holder, committed) or the
    /// fill has failed; `leave` takes the fill out of the map before its end is announced.
    pub async fn run(mut self, start: Start, leave: impl FnOnce()) {
        let started = Instant::now();
        let mut next = match start {
            Start::Upstream(lease) => Next::Upstream(lease),
            Start::Peer(held) => Next::Peer(held),
        };
        let mut poll = PEER_RETRY_MIN;
        let outcome = loop {
            let (held, why) = match next {
                Next::Upstream(lease) => {
                    if self.written > 0 {
                        self.set_origin(Origin::Upstream);
                    }
                    let digest = self.digest.clone();
                    let idle = self.idle();
                    let r = lease
                        .hold(&digest, async {
                            match unless(idle, self.fetch_upstream()).await {
                                Some(r) => r,
                                None => Err(self.abandon()),
                            }
                        })
                        .await;
                    lease.release().await;
                    break r;
                }
                Next::Stored => break self.read_storage().await,
                Next::Peer(held) => {
                    let before = self.written;
                    let idle = self.idle();
                    let relayed = match unless(idle, self.relay_peer(&held)).await {
                        Some(r) => r,
                        None => Err(Stop::Fail(self.abandon())),
                    };
                    match relayed {
                        Ok(()) => break Ok(()),
                        Err(Stop::Fail(state)) => break Err(state),
                        Err(Stop::Peer(why)) => {
                            if self.written > before {
                                poll = PEER_RETRY_MIN;
                            }
                            (held, why)
                        }
                    }
                }
                Next::Wait => unreachable!("waiting is decided below"),
            };
            next = loop {
                match self.fleet.after_break(&self.digest, &held, &why).await {
                    Next::Wait => {}
                    // The same holder again: give it a moment (it may be between taking the
                    // lease and starting its fill, or committing), then stream from it again.
                    Next::Peer(v) if v == held => {
                        tokio::time::sleep(poll).await;
                        poll = (poll * 3 / 2).min(REMOTE_POLL_MAX);
                        break Next::Peer(v);
                    }
                    other => break other,
                }
                // Waiting on a commit (the holder cannot stream): poll storage gently.
                poll = poll.max(REMOTE_POLL_MIN);
                tokio::time::sleep(poll).await;
                poll = (poll * 3 / 2).min(REMOTE_POLL_MAX);
            };
        };
        leave();
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
        crate::status::fill_ended(
            &self.digest.to_string(),
            self.written,
            started.elapsed(),
            result,
        );
        self.tx.send_modify(|p| p.state = state);
    }

    /// Resolves once nobody has read this fill for `upstream.abandon_fills_after`; never when
    /// that is `never`, nor once the blob is verified (what is left is storing it).
    fn idle(&self) -> impl Future<Output = ()> + use<> {
        let after = self.upstream.blob_bounds(&self.name).abandon_after;
        let readers = self.readers.clone();
        let progress = self.tx.subscribe();
        async move {
            let (Some(readers), Some(after)) = (readers, after) else {
                return std::future::pending().await;
            };
            let tick = (after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            let mut idle_since: Option<tokio::time::Instant> = None;
            loop {
                tokio::time::sleep(tick).await;
                if progress.borrow().verified {
                    return std::future::pending().await;
                }
                // The map of fills in flight holds one reference; each client's stream, range
                // waiter, request on its way and peer stream holds another.
                if readers.strong_count() > 1 {
                    idle_since = None;
                    continue;
                }
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= after {
                    return;
                }
            }
        }
    }

    /// The end of a fill nobody reads: its fetch is dropped (its upstream slot, connection and
    /// storage writer with it), nothing is kept.
    fn abandon(&self) -> FillState {
        metrics::counter!(crate::metrics::FILLS_ABANDONED).increment(1);
        tracing::info!(name = %self.name, digest = %self.digest, bytes = self.written,
            "fill abandoned: nobody reads it any more; nothing stored");
        let m = "the fill was abandoned: nobody was reading it".to_owned();
        if self.written == 0 {
            FillState::Refused(UpstreamError::Unavailable(m))
        } else {
            FillState::Broken(m)
        }
    }

    /// Why a source announcing a `size`-byte blob is refused: above the manifest's declared size.
    fn over_declared(&self, who: &str, size: Option<u64>) -> Option<String> {
        let (Some(d), Some(n)) = (self.declared, size) else {
            return None;
        };
        (n > d).then(|| {
            metrics::counter!(crate::metrics::UPSTREAM_BOUNDS, "bound" => "declared_size")
                .increment(1);
            format!("{who} announces a {n}-byte blob; its manifest declares {d} bytes")
        })
    }

    fn set_origin(&self, origin: Origin) {
        self.tx.send_modify(|p| p.origin = origin);
    }

    fn broken(&self, m: String) -> FillState {
        tracing::warn!(name = %self.name, digest = %self.digest, error = %m, "fill failed; nothing stored");
        FillState::Broken(m)
    }

    /// Learn the blob's size from a source; every source must agree.
    fn learn_size(&mut self, size: Option<u64>) -> Result<(), FillState> {
        match (self.size, size) {
            (Some(a), Some(b)) if a != b => {
                Err(self.broken(format!("the blob's size was {a}, now a source says {b}")))
            }
            (None, Some(_)) => {
                self.size = size;
                self.tx.send_modify(|p| {
                    p.size = size;
                    p.state = FillState::Streaming;
                });
                Ok(())
            }
            _ => {
                self.tx.send_modify(|p| p.state = FillState::Streaming);
                Ok(())
            }
        }
    }

    /// Hash `chunk`, write it to the spool and publish the new watermark.
    fn absorb(&mut self, chunk: &[u8]) -> Result<(), FillState> {
        self.admit(chunk)?;
        self.spooled(chunk)
    }

    /// Write an admitted `chunk` to the spool and publish the new watermark.
    fn spooled(&mut self, chunk: &[u8]) -> Result<(), FillState> {
        self.spool
            .write_all_at(chunk, self.written)
            .map_err(|e| self.broken(format!("spool write failed: {e}")))?;
        self.advance(chunk.len());
        Ok(())
    }

    /// Publish a watermark `n` bytes further on: they are in the spool.
    fn advance(&mut self, n: usize) {
        self.written += n as u64;
        let written = self.written;
        self.tx.send_modify(|p| p.written = written);
    }

    /// The clients read the storage writer's own file from now on: it holds what the spool
    /// holds (the writer was given the spool's bytes when opened).
    fn spool_in(&mut self, file: File) {
        let file = Arc::new(file);
        self.shared.replace(file.clone());
        self.spool = file;
    }

    /// The store's file failed a write: the clients move to a spool of the fill's own, given
    /// what the store's file held, and the fill goes on without caching.
    fn respool(&mut self) -> Result<(), FillState> {
        let own = tempfile::tempfile_in(&self.spool_dir)
            .map_err(|e| self.broken(format!("cannot create a spool file: {e}")))?;
        let mut buf = vec![0; STORAGE_BATCH];
        let mut at = 0;
        while at < self.written {
            let n = (self.written - at).min(STORAGE_BATCH as u64) as usize;
            self.spool
                .read_exact_at(&mut buf[..n], at)
                .and_then(|()| own.write_all_at(&buf[..n], at))
                .map_err(|e| self.broken(format!("cannot move the spool: {e}")))?;
            at += n as u64;
        }
        self.spool_in(own);
        Ok(())
    }

    /// Check `chunk` against the blob's bounds and hash it.
    fn admit(&mut self, chunk: &[u8]) -> Result<(), FillState> {
        if self
            .size
            .is_some_and(|s| self.written + chunk.len() as u64 > s)
        {
            return Err(self.broken("the source sent more bytes than the blob's size".into()));
        }
        if let Some(d) = self.declared
            && self.written + chunk.len() as u64 > d
        {
            metrics::counter!(crate::metrics::UPSTREAM_BOUNDS, "bound" => "declared_size")
                .increment(1);
            return Err(self.broken(format!(
                "the source sent more than the {d} bytes its manifest declares"
            )));
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// Check length and digest, and release the last byte to the clients.
    fn verify(&mut self) -> Result<(), FillState> {
        if let Some(s) = self.size
            && s != self.written
        {
            return Err(self.broken(format!(
                "the source sent {} bytes, the blob has {s}",
                self.written
            )));
        }
        let hasher = std::mem::replace(&mut self.hasher, Hasher::new(self.digest.algorithm()));
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(self.broken(format!("content hashes to {actual}")));
        }
        self.tx.send_modify(|p| p.verified = true);
        Ok(())
    }

    /// Relay the fill of the lease's holder, from the bytes this replica has on.
    async fn relay_peer(&mut self, held: &str) -> Result<(), Stop> {
        let peers = self.fleet.peers().expect("relays only with peers").clone();
        let holder = holder_peer(held).expect("relays only from a named holder");
        let digest = self.digest.clone();
        let failed = |why: PeerError| {
            let reason = match &why {
                PeerError::NoFill => "no_fill",
                PeerError::Gone(_) => "gone",
                PeerError::Failed(_) => "failed",
            };
            metrics::counter!(crate::metrics::PEER_STREAMS_FAILED, "reason" => reason).increment(1);
            tracing::debug!(digest = %digest, holder, error = %why, "peer stream ended early");
            Stop::Peer(why)
        };
        let opened = peers
            .open(holder, &self.digest, self.written)
            .await
            .map_err(failed)?;
        metrics::counter!(crate::metrics::PEER_STREAMS_OPENED).increment(1);
        if self.written > 0 {
            metrics::counter!(crate::metrics::FILL_RESUMES, "from" => "peer").increment(1);
        }
        // The holder's bytes are held to this replica's own bounds, as its upstream's would be.
        let bounds = self.upstream.blob_bounds(&self.name);
        if let Some(n) = opened.size
            && n > bounds.max_size
        {
            let e = UpstreamError::Invalid(format!(
                "the holder announces a {n}-byte blob, above upstream.max_blob_size ({})",
                bounds.max_size
            ));
            return Err(Stop::Fail(if self.written == 0 {
                FillState::Refused(e)
            } else {
                self.broken(e.to_string())
            }));
        }
        if let Some(m) = self.over_declared("the holder", opened.size) {
            return Err(Stop::Fail(if self.written == 0 {
                FillState::Refused(UpstreamError::Invalid(m))
            } else {
                self.broken(m)
            }));
        }
        self.tx.send_modify(|p| p.confirmed = opened.name.clone());
        self.set_origin(Origin::Peer);
        self.learn_size(opened.size).map_err(Stop::Fail)?;
        let relayed = metrics::counter!(crate::metrics::PEER_BYTES_RELAYED);
        let mut stream = opened.stream;
        let opened_at = tokio::time::Instant::now();
        let mut seen = 0u64;
        loop {
            // Falling behind upstream.min_blob_rate: this holder is no better than a slow
            // upstream. The stream is dropped and the fill goes on from wherever is next.
            let next = if let Some(secs) = seen.checked_div(bounds.min_rate) {
                let deadline = opened_at + bounds.grace + std::time::Duration::from_secs(secs);
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        metrics::counter!(crate::metrics::UPSTREAM_BOUNDS, "bound" => "min_blob_rate")
                            .increment(1);
                        return Err(failed(PeerError::Failed(format!(
                            "the holder sent {seen} bytes, slower than upstream.min_blob_rate"
                        ))));
                    }
                }
            } else {
                stream.next().await
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(failed)?;
            seen += chunk.len() as u64;
            if self.written + chunk.len() as u64 > bounds.max_size {
                metrics::counter!(crate::metrics::UPSTREAM_BOUNDS, "bound" => "max_blob_size")
                    .increment(1);
                return Err(Stop::Fail(self.broken(format!(
                    "the holder sent more than upstream.max_blob_size ({} bytes)",
                    bounds.max_size
                ))));
            }
            relayed.increment(chunk.len() as u64);
            self.absorb(&chunk).map_err(Stop::Fail)?;
        }
        // A clean end: the holder verified the blob. Check it here too.
        self.verify().map_err(Stop::Fail)
    }

    /// Read the rest from storage, where the holder committed the blob.
    async fn read_storage(&mut self) -> Result<(), FillState> {
        let key = layout::blob_data(&self.digest);
        let meta = match self.storage.stat(&key).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(self.broken("the committed blob is gone".into())),
            Err(e) => return Err(self.broken(format!("storage: {e}"))),
        };
        self.set_origin(Origin::Storage);
        if self.written > 0 {
            metrics::counter!(crate::metrics::FILL_RESUMES, "from" => "storage").increment(1);
        }
        self.learn_size(Some(meta.size))?;
        let mut stream = match self.storage.read_range(&key, self.written, None).await {
            Ok(s) => s,
            Err(e) => return Err(self.broken(format!("storage: {e}"))),
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.broken(format!("storage: {e}")))?;
            self.absorb(&chunk)?;
        }
        self.verify()
    }

    /// Fetch the rest from the upstream (all of it, for a fill that starts here) and store the
    /// whole blob, committed once verified.
    async fn fetch_upstream(&mut self) -> Result<(), FillState> {
        let from = self.written;
        let resp = self
            .upstream
            .get_blob(&self.name, &self.digest, from)
            .await
            .map_err(|e| {
                tracing::warn!(name = %self.name, digest = %self.digest, error = %e, "blob fetch refused");
                if from == 0 {
                    FillState::Refused(e)
                } else {
                    self.broken(format!("resuming from the upstream: {e}"))
                }
            })?;
        if let Some(m) = self.over_declared("the upstream", resp.size) {
            tracing::warn!(name = %self.name, digest = %self.digest, error = %m, "blob fetch refused");
            return Err(if from == 0 {
                FillState::Refused(UpstreamError::Invalid(m))
            } else {
                self.broken(m)
            });
        }
        // The upstream's answer confirms the blob under this fill's name (from here on, for
        // a relay that took over).
        let name = self.name.clone();
        self.tx.send_modify(|p| p.confirmed = Some(name));
        self.learn_size(resp.size)?;
        if from > 0 {
            let how = if resp.start == from {
                "upstream_range"
            } else {
                "upstream_whole"
            };
            tracing::info!(digest = %self.digest, from, how, "resuming the fill from the upstream");
            metrics::counter!(crate::metrics::FILL_RESUMES, "from" => how).increment(1);
        }
        let mut writer = self.open_writer().await;
        // A writer of a local file: its file becomes the spool, and each byte is written once.
        let mut direct = match writer.as_ref().and_then(|w| w.local_file()) {
            Some(file) => {
                self.spool_in(file);
                true
            }
            None => false,
        };
        let mut pending = BytesMut::with_capacity(if writer.is_some() && !direct {
            STORAGE_BATCH
        } else {
            0
        });
        // Bytes of the upstream's answer this replica already has (an upstream ignoring the
        // range sends them again): hashed already, so only skipped.
        let mut skip = from - resp.start;
        let mut stream = resp.stream;
        while let Some(chunk) = stream.next().await {
            let mut chunk =
                chunk.map_err(|e| self.broken(format!("upstream stream broke: {e}")))?;
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                skip -= n;
                chunk = chunk.slice(n as usize..);
                if chunk.is_empty() {
                    continue;
                }
            }
            if direct {
                self.admit(&chunk)?;
                let stored = match writer.as_mut() {
                    Some(w) if !self.storage.reads_refused() => {
                        w.write(chunk.clone()).await.map_err(|e| e.to_string())
                    }
                    _ => Err("storage is down".to_owned()),
                };
                match stored {
                    Ok(()) => self.advance(chunk.len()),
                    Err(e) => {
                        tracing::error!(digest = %self.digest, error = %e, "storage write failed; serving without caching");
                        (writer, direct) = (None, false);
                        self.respool()?;
                        self.spooled(&chunk)?;
                    }
                }
                continue;
            }
            self.absorb(&chunk)?;
            if writer.is_some() {
                pending.extend_from_slice(&chunk);
                if pending.len() >= STORAGE_BATCH {
                    self.write(&mut writer, pending.split().freeze()).await;
                }
            }
        }
        self.verify()?;
        // Clients may finish now; the commit (an fsync for big blobs) need not delay them.
        if !pending.is_empty() {
            self.write(&mut writer, pending.split().freeze()).await;
        }
        // Storage went down during the fill: the commit would only wait on it to fail.
        if self.storage.reads_refused() {
            writer = None;
        }
        if let Some(w) = writer {
            match w.commit().await {
                Ok(()) => {
                    tracing::info!(name = %self.name, digest = %self.digest, bytes = self.written, "blob cached");
                    self.link().await;
                }
                Err(e) => {
                    tracing::error!(digest = %self.digest, error = %e, "storage commit failed")
                }
            }
        }
        Ok(())
    }

    /// A storage writer holding what this replica already has of the blob (a relay taking
    /// over); `None` when read-only or storage is down or fails, in which case clients are
    /// still served from the spool and only the caching is lost.
    async fn open_writer(&self) -> Option<Box<dyn ObjectWriter>> {
        if self.read_only || self.storage.reads_refused() {
            return None;
        }
        let mut w = match self.storage.writer(&layout::blob_data(&self.digest)).await {
            Ok(w) => Some(w),
            // The breaker's write circuit is open: said once, by the breaker.
            Err(StorageError::Unavailable(_)) => return None,
            Err(e) => {
                tracing::error!(digest = %self.digest, error = %e, "cannot open storage writer; serving without caching");
                return None;
            }
        };
        let mut at = 0;
        while at < self.written {
            let n = (self.written - at).min(STORAGE_BATCH as u64) as usize;
            let mut buf = BytesMut::zeroed(n);
            if let Err(e) = self.spool.read_exact_at(&mut buf, at) {
                tracing::error!(digest = %self.digest, error = %e, "spool read failed; serving without caching");
                return None;
            }
            self.write(&mut w, buf.freeze()).await;
            w.as_ref()?;
            at += n as u64;
        }
        w
    }

    /// The upstream served the blob under `name`: that is the confirmation that `name` may serve
    /// it. Written before the lease is released, so a replica waiting on (or relaying) this fill
    /// for the same repository finds the link and asks the upstream nothing.
    async fn link(&self) {
        let key = layout::layer_link(&self.name, &self.digest);
        let body = Bytes::from(self.digest.to_string());
        match tokio::time::timeout(LINK_WRITE_TIMEOUT, self.storage.put(&key, body)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(key, error = %e, "cannot write to storage"),
            Err(_) => tracing::error!(key, "storage write timed out"),
        }
    }

    async fn write(&self, writer: &mut Option<Box<dyn ObjectWriter>>, batch: Bytes) {
        if writer.is_some() && self.storage.reads_refused() {
            tracing::debug!(digest = %self.digest, "storage is down; serving without caching");
            *writer = None;
        }
        if let Some(w) = writer.as_mut()
            && let Err(e) = w.write(batch).await
        {
            tracing::error!(digest = %self.digest, error = %e, "storage write failed; serving without caching");
            *writer = None;
        }
    }
}
