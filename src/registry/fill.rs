//! The fill: one fetch per blob digest, however many clients want it.
//!
//! A fill runs in its own task (`fetch.rs`). It writes the blob's bytes, from the upstream or,
//! in a fleet, from the replica holding the digest's fill lease, into a spool file, hashing as
//! it goes, and publishes a watermark of bytes written. The spool starts as an anonymous file
//! (local, unlinked, so nothing to clean up after a crash); on a filesystem store the storage
//! writer's own temp file takes its place once opened, so each byte is written once. Every client, first or late, reads the spool up to the watermark,
//! so a slow or vanished client never slows or cancels the fill, late joiners never refetch, and
//! a range is answered as soon as its bytes are there. The last byte is released only once the
//! digest has been checked; on any failure every client's stream ends in an error, never a
//! short success.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::oci::{Digest, RepoName};
use crate::storage::Storage;
use crate::upstream::{Upstream, UpstreamError};

use super::fetch::{Backing, FillJob};
use super::lease::{Fleet, Start};

/// Bytes handed to a client per read of the spool: what a stalled reader's response holds.
const CHUNK: u64 = 64 * 1024;

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

/// Where a fill's bytes are coming from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Upstream,
    /// The replica holding the fill lease, streaming its own fill.
    Peer,
    /// The shared storage, where the lease holder committed the blob meanwhile.
    Storage,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Upstream => "upstream",
            Origin::Peer => "peer",
            Origin::Storage => "storage",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub size: Option<u64>,
    pub written: u64,
    /// Length and digest checked. Until then every reader holds back the blob's last byte, so
    /// a corrupt body can never reach a client as a complete response.
    pub verified: bool,
    pub state: FillState,
    pub origin: Origin,
    /// The repository under which the upstream served the bytes: this fill's own name once its
    /// upstream answered, for a relay the holder's fill's (as the holder said; `None` when it
    /// did not). The upstream's answer confirms the blob for that name only.
    pub confirmed: Option<RepoName>,
}

pub struct Fill {
    /// The repository the fill fetches under when it reads the upstream.
    name: RepoName,
    spool: Arc<Spool>,
    progress: watch::Receiver<Progress>,
}

/// The file a fill's clients read up to the watermark. The fill may replace it (with its
/// storage writer's file, or back with a file of its own when the store fails), but only with
/// a file holding the same bytes up to the watermark, so a reader may use either.
pub struct Spool(RwLock<Arc<File>>);

impl Spool {
    pub fn new(file: File) -> Self {
        Spool(RwLock::new(Arc::new(file)))
    }

    pub fn current(&self) -> Arc<File> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, file: Arc<File>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = file;
    }
}

pub type ClientStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

impl Fill {
    /// The repository this fill fetches the blob under when it reads the upstream.
    pub fn name(&self) -> &RepoName {
        &self.name
    }

    /// Wait for the fill's source to answer; then the repository the upstream confirmed the
    /// blob under (see [`Progress::confirmed`]). A request under another name is a join of
    /// another repository's fill, whether the fill runs here or on the replica relayed.
    pub async fn confirmed_under(&self) -> Result<Option<RepoName>, UpstreamError> {
        self.started().await?;
        Ok(self.progress.borrow().confirmed.clone())
    }

    /// Where the bytes are coming from now.
    pub fn origin(&self) -> Origin {
        self.progress.borrow().origin
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
        self.pieces(start, end, CHUNK)
            .map(|piece| piece.and_then(SpoolPiece::read))
            .boxed()
    }

    /// The same bytes as [`Fill::stream`], as pieces of the spool of at most `max` bytes each,
    /// each handed out as soon as its bytes are there: for a connection that sends them from
    /// the file itself (`sendfile`), never reading them into the process.
    pub fn pieces(self: Arc<Self>, start: u64, end: Option<u64>, max: u64) -> PieceStream {
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
                    let len = (available - pos).min(max).min(limit - pos) as usize;
                    let piece = SpoolPiece {
                        file: fill.spool.current(),
                        offset: pos,
                        len,
                    };
                    return Some((Ok(piece), (fill, rx, pos + len as u64, false)));
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

/// `len` bytes of a spool from `offset`, all below the fill's watermark: in the file already.
pub struct SpoolPiece {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: usize,
}

pub type PieceStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<SpoolPiece>> + Send>>;

impl SpoolPiece {
    /// The piece's bytes, read through the process. The spool is in the page cache: a pread
    /// is cheaper than a thread hop. It reads into the buffer's spare capacity: zeroing it
    /// first would be one more pass over every byte.
    pub fn read(self) -> io::Result<Bytes> {
        let mut buf = Vec::with_capacity(self.len);
        let n = rustix::io::pread(
            &*self.file,
            rustix::buffer::spare_capacity(&mut buf),
            self.offset,
        )?;
        if n < self.len {
            // Below the watermark every byte is there: a short read is a spool gone wrong.
            return Err(io::Error::other("the spool is shorter than its watermark"));
        }
        Ok(Bytes::from(buf))
    }
}

pub struct Fills {
    inflight: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    /// Every fill task, so shutdown can let them finish committing: a client may already have
    /// every byte while its blob is still being written to storage.
    tasks: TaskTracker,
    spool_dir: PathBuf,
    backing: Backing,
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
            backing: Backing {
                storage,
                upstream,
                read_only,
            },
        }
    }

    /// The fill in flight for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.inflight.lock().expect("lock").get(digest).cloned()
    }

    /// Join the fill for `digest`, starting one (fetching under `name`, from where `start` says,
    /// held to the `declared` size of a manifest of `name`) when none is in flight.
    pub fn join_or_start(
        &self,
        name: &RepoName,
        digest: &Digest,
        declared: Option<u64>,
        start: Start,
        fleet: Arc<Fleet>,
    ) -> io::Result<Arc<Fill>> {
        let mut map = self.inflight.lock().expect("lock");
        if let Some(f) = map.get(digest) {
            metrics::counter!(crate::metrics::FILL_JOINS).increment(1);
            // A lease taken for a fill that another request started meanwhile is not needed.
            if let Start::Upstream(lease) = start {
                tokio::spawn(async move { lease.release().await });
            }
            return Ok(f.clone());
        }
        let spool = Arc::new(Spool::new(tempfile::tempfile_in(&self.spool_dir)?));
        let origin = match start {
            Start::Upstream(_) => Origin::Upstream,
            Start::Peer(_) => Origin::Peer,
        };
        let (tx, rx) = watch::channel(Progress {
            size: None,
            written: 0,
            verified: false,
            state: FillState::Connecting,
            origin,
            confirmed: None,
        });
        let fill = Arc::new(Fill {
            name: name.clone(),
            spool: spool.clone(),
            progress: rx,
        });
        map.insert(digest.clone(), fill.clone());
        if origin == Origin::Upstream {
            metrics::counter!(crate::metrics::FILLS_STARTED).increment(1);
        }
        metrics::gauge!(crate::metrics::FILLS_IN_FLIGHT).increment(1.0);
        let job = FillJob::new(
            name.clone(),
            digest.clone(),
            spool,
            self.spool_dir.clone(),
            tx,
            self.backing.clone(),
            fleet,
        )
        .bounded(declared, Arc::downgrade(&fill));
        let inflight = self.inflight.clone();
        let digest = digest.clone();
        self.tasks.spawn(job.run(start, move || {
            // Leave the map before announcing the end: a request arriving after this point
            // finds the committed blob in storage (or starts afresh after a failure).
            inflight.lock().expect("lock").remove(&digest);
            metrics::gauge!(crate::metrics::FILLS_IN_FLIGHT).decrement(1.0);
        }));
        Ok(fill)
    }

    /// Wait for every fill in flight to finish (commit or fail). New fills may still start.
    pub async fn wait_idle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }
}
