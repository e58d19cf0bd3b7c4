//! The pull-through rules: how a manifest, tag, blob, tag list or catalog request is answered
//! from storage, the descriptor cache and the upstream. Never sees HTTP types. This file holds
//! the types, the construction and what the rooms share; each kind of request has its own room:
//! `manifests.rs` (and tags resolving to them), `blobs.rs`, `tags.rs` (tag lists, catalog),
//! `referrers.rs`; `fill.rs` the fill (spool, watermark, clients), `fetch.rs` its task (sources,
//! hashing, commit, resuming), `lease.rs` the fleet's fill lease and `peer.rs` the seam to the
//! other replicas; `namespace.rs` containerd's `ns`; `declared.rs` the blob sizes manifests
//! declare, binding on fills.

mod blobs;
mod bodies;
mod coalesce;
mod declared;
mod fetch;
mod fill;
mod lease;
mod manifests;
pub mod namespace;
mod open_blobs;
mod peer;
mod referrers;
mod signatures;
mod tags;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cache::DescriptorCache;
use crate::cache::lease::{Leases, LocalLeases};
use crate::expiry::AccessLog;
use crate::oci::{Digest, RangeError, Reference, RepoName};
use crate::storage::{Storage, StorageError};
use crate::upstream::{Upstream, UpstreamError};

use bodies::ManifestBodies;
use coalesce::Coalescer;
use fill::Fills;
pub use fill::{ClientStream, PieceStream, SpoolPiece};
use lease::{Fleet, Source};
pub use peer::{PeerByteStream, PeerError, PeerStream, Peers};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error(transparent)]
    Range(RangeError),
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Unverified(crate::verify::Refusal),
    /// Storage cannot be read and the upstream cannot be asked either (offline, unreachable).
    #[error("storage is unavailable and {0}")]
    StorageAndUpstreamDown(String),
}

/// Coalesced results are shared, so errors travel as text-bearing clones.
type Shared<T> = Result<T, Arc<RegistryError>>;

/// A tag list read: repository, `n` and `last`.
type TagsKey = (RepoName, Option<usize>, Option<String>);

#[derive(Clone, Debug)]
pub struct RegistrySettings {
    pub tag_ttl: Duration,
    /// Per upstream name prefix, where it differs from `tag_ttl`.
    pub tag_ttls: Vec<(String, Duration)>,
    pub offline: bool,
    pub read_only: bool,
    pub spool_dir: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// A blob answer: the full size, the inclusive range served (None: the whole blob) and the body
/// (None for HEAD); or where the client reads the bytes instead (`location`, a presigned URL of
/// the stored object, with no body); or, when the caller can send files and storage is a local
/// filesystem, the stored file to send the bytes from (`file`, with no body).
pub struct BlobReply {
    pub size: u64,
    pub range: Option<(u64, u64)>,
    pub body: Option<ClientStream>,
    pub location: Option<String>,
    pub file: Option<StoredFile>,
    /// A blob being filled, for a caller that can send files: the pieces of its spool, each as
    /// its bytes arrive (with no body).
    pub pieces: Option<PieceStream>,
}

impl BlobReply {
    /// A HEAD's answer: the whole blob's size, nothing to send.
    fn size_only(size: u64) -> Self {
        BlobReply {
            size,
            range: None,
            body: None,
            location: None,
            file: None,
            pieces: None,
        }
    }
}

/// A stored blob's bytes as an open file: `len` bytes from `offset`, for a connection that can
/// hand them to the kernel (`sendfile`) instead of reading them through the process.
pub struct StoredFile {
    /// Shared with the blobs kept open (`open_blobs.rs`): read at explicit offsets only.
    pub file: Arc<std::fs::File>,
    pub offset: u64,
    pub len: u64,
    /// Kept until the bytes are sent (expiry's hold on the blob).
    pub hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// How the caller can take a stored blob's bytes besides a body: a redirect to the store (the
/// client may be sent there and redirects are on), or an open file (the connection sends files).
#[derive(Clone, Copy, Debug, Default)]
pub struct Take {
    pub redirect: bool,
    pub file: bool,
}

/// A fill in progress, as a peer streams it.
pub struct FillStream {
    /// The whole blob's size, when known.
    pub size: Option<u64>,
    /// The repository the upstream served the blob under (see [`PeerStream::name`]).
    pub name: Option<RepoName>,
    pub body: ClientStream,
}

#[derive(Serialize, Deserialize)]
pub struct TagList {
    pub name: String,
    pub tags: Vec<String>,
}

pub struct TagsPage {
    pub list: TagList,
    /// Query string (`n=…&last=…`) of the next page, when there is one.
    pub next: Option<String>,
}

pub struct CatalogPage {
    pub repositories: Vec<String>,
    pub next: Option<String>,
}

/// Memory for hot manifest bodies (each at most 4 MiB; most are a few KiB).
const MANIFEST_BODY_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Links are bookkeeping; a request waits at most this long for one to be written.
const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Registry {
    storage: Arc<dyn Storage>,
    cache: Arc<dyn DescriptorCache>,
    upstream: Arc<dyn Upstream>,
    settings: RegistrySettings,
    fills: Fills,
    manifests: Coalescer<(RepoName, Reference), Shared<Manifest>>,
    fleet: Arc<Fleet>,
    decisions: Coalescer<Digest, Shared<Source>>,
    referrer_fetches: Coalescer<(RepoName, Digest), Shared<Bytes>>,
    /// Identical tag list reads in flight share one upstream request.
    tag_lists: Coalescer<TagsKey, Result<crate::upstream::TagsResponse, UpstreamError>>,
    referrer_answers: referrers::Answers,
    /// Stored blobs served from a local filesystem lately, still open.
    open_blobs: open_blobs::OpenBlobs,
    bodies: ManifestBodies,
    /// Blob sizes declared by the manifests served, binding on their fills.
    declared: declared::DeclaredSizes,
    /// Where pulls are noted for expiry (None: no expiry policy, nothing noted).
    access: Option<Arc<AccessLog>>,
    verifier: Option<Arc<crate::verify::Verifier>>,
    /// How long a presigned URL of a stored blob lives; `None`: blobs are never redirected.
    redirect: Option<Duration>,
    counts: CacheCounts,
}

/// The cache hit and miss counters, looked up once: building a handle from its name and
/// labels on every warm manifest GET was a measurable part of it.
struct CacheCounts {
    manifest_hits: metrics::Counter,
    manifest_misses: metrics::Counter,
    blob_hits: metrics::Counter,
    blob_misses: metrics::Counter,
}

impl CacheCounts {
    fn new() -> Self {
        use crate::metrics::{CACHE_HITS, CACHE_MISSES};
        CacheCounts {
            manifest_hits: metrics::counter!(CACHE_HITS, "kind" => "manifest"),
            manifest_misses: metrics::counter!(CACHE_MISSES, "kind" => "manifest"),
            blob_hits: metrics::counter!(CACHE_HITS, "kind" => "blob"),
            blob_misses: metrics::counter!(CACHE_MISSES, "kind" => "blob"),
        }
    }
}

fn link_digest(b: &[u8]) -> Option<Digest> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| Digest::parse(s.trim()).ok())
}

impl Registry {
    pub fn new(
        storage: Arc<dyn Storage>,
        cache: Arc<dyn DescriptorCache>,
        upstream: Arc<dyn Upstream>,
        settings: RegistrySettings,
    ) -> Self {
        let fills = Fills::new(
            settings.spool_dir.clone(),
            storage.clone(),
            upstream.clone(),
            settings.read_only,
        );
        Registry {
            storage: storage.clone(),
            cache,
            upstream,
            settings,
            fills,
            manifests: Coalescer::default(),
            fleet: Arc::new(Fleet::new(Arc::new(LocalLeases), storage.clone())),
            decisions: Coalescer::default(),
            referrer_fetches: Coalescer::default(),
            tag_lists: Coalescer::default(),
            referrer_answers: referrers::Answers::default(),
            open_blobs: open_blobs::OpenBlobs::default(),
            bodies: ManifestBodies::new(MANIFEST_BODY_CACHE_BYTES),
            counts: CacheCounts::new(),
            declared: declared::DeclaredSizes::default(),
            access: None,
            verifier: None,
            redirect: None,
        }
    }

    /// Note every pull in `log`, for expiry.
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Self {
        self.access = Some(log);
        self
    }

    /// Answer whole-blob GETs of stored blobs that allow it with a URL of the object in the
    /// store, valid for `expiry` (see [`Registry::blob_for`]).
    pub fn with_redirect(mut self, expiry: Duration) -> Self {
        self.redirect = Some(expiry);
        self
    }

    /// Keep referrers answers in at most `max_bytes` of memory, `filters` per index.
    pub fn with_referrers_cache(mut self, max_bytes: usize, filters: usize) -> Self {
        self.referrer_answers = referrers::Answers::new(max_bytes, filters);
        self
    }

    /// Coordinate fills with the other replicas of a fleet through `leases`.
    pub fn with_leases(mut self, leases: Arc<dyn Leases>) -> Self {
        self.fleet = Arc::new(self.fleet.with_leases(leases));
        self
    }

    /// Stream the fills other replicas of the fleet hold through `peers`, instead of waiting
    /// for their commits (set once the peer listener serves this replica's own fills). False
    /// when peers were set already.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) -> bool {
        self.fleet.set_peers(peers)
    }

    /// For a peer: the fill of `digest` in progress here, from byte `from` on, as clients get
    /// it (the last byte only once verified). `None` when there is none, or its upstream
    /// refused. Never storage: a peer asks only the replica its lease names.
    pub async fn fill_in_progress(&self, digest: &Digest, from: u64) -> Option<FillStream> {
        let fill = self.fills.get(digest)?;
        let size = fill.started().await.ok()?;
        if size.is_some_and(|s| from > s) {
            return None;
        }
        let name = fill.confirmed_under().await.ok()?;
        Some(FillStream {
            size,
            name,
            body: fill.stream(from, None),
        })
    }

    /// How long a tag of `repo` is trusted: its upstream's `tag_ttl`.
    fn tag_ttl(&self, repo: &RepoName) -> Duration {
        repo.as_str()
            .split_once('/')
            .and_then(|(first, _)| self.settings.tag_ttls.iter().find(|(p, _)| p == first))
            .map_or(self.settings.tag_ttl, |(_, t)| *t)
    }

    /// Let every fill in flight finish committing (used at shutdown).
    pub async fn wait_for_fills(&self) {
        self.fills.wait_idle().await;
    }

    /// Links are advisory bookkeeping for later requests: failing to write one must not fail
    /// the request that is being answered.
    async fn write_link(&self, key: &str, d: &Digest) {
        if self.settings.read_only || self.storage.reads_refused() {
            return;
        }
        self.write_bounded(key, Bytes::from(d.to_string())).await;
    }

    /// Bounded: a storage backend retrying a failing write must not hold the response.
    async fn write_bounded(&self, key: &str, body: Bytes) {
        match tokio::time::timeout(LINK_WRITE_TIMEOUT, self.storage.put(key, body)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(key, error = %e, "cannot write to storage"),
            Err(_) => tracing::error!(key, "storage write timed out"),
        }
    }
}

/// The caller's own copy of a coalesced result's error. Every kind survives the sharing, so a
/// joiner answers with the same status as the caller that ran the work (an S3 outage is a 503
/// for all of them, not a 503 for one and 500s for the rest).
fn unshare(e: Arc<RegistryError>) -> RegistryError {
    Arc::try_unwrap(e).unwrap_or_else(|e| match &*e {
        RegistryError::BlobUnknown => RegistryError::BlobUnknown,
        RegistryError::ManifestUnknown(m) => RegistryError::ManifestUnknown(m.clone()),
        RegistryError::NameUnknown => RegistryError::NameUnknown,
        RegistryError::ManifestInvalid(m) => RegistryError::ManifestInvalid(m.clone()),
        RegistryError::Range(r) => RegistryError::Range(r.clone()),
        RegistryError::Upstream(u) => RegistryError::Upstream(u.clone()),
        RegistryError::Storage(s) => RegistryError::Storage(s.duplicate()),
        RegistryError::Internal(m) => RegistryError::Internal(m.clone()),
        RegistryError::Unverified(r) => RegistryError::Unverified(r.clone()),
        RegistryError::StorageAndUpstreamDown(m) => {
            RegistryError::StorageAndUpstreamDown(m.clone())
        }
    })
}

/// Why a request that could not read storage cannot ask the upstream in offline mode.
const OFFLINE: &str = "the mirror is offline (it asks no upstream)";

/// A storage look-up on the request path: a store that cannot be read is a miss (noted in
/// `down`), so the content is passed through from the upstream rather than refused.
fn miss_if_down<T>(
    r: Result<Option<T>, RegistryError>,
    down: &mut bool,
) -> Result<Option<T>, RegistryError> {
    match r {
        Err(RegistryError::Storage(e)) if e.is_outage() => {
            *down = true;
            Ok(None)
        }
        r => r,
    }
}

/// The outcome of a request that could not read storage: counted when answered; an upstream
/// that could not be reached either is named beside the storage.
fn answered_while_down<T>(
    kind: &'static str,
    r: Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    match r {
        Ok(v) => {
            metrics::counter!(crate::metrics::DEGRADED_SERVED, "kind" => kind).increment(1);
            Ok(v)
        }
        Err(e) => Err(upstream_failed_too(e)),
    }
}

/// The error of a request that storage could not answer and the upstream failed: an upstream
/// that could not be reached is named beside the storage; any other answer of the upstream (a
/// rate limit, an invalid response) is the upstream's to report, as when storage works.
fn upstream_failed_too(e: RegistryError) -> RegistryError {
    match e {
        RegistryError::Upstream(UpstreamError::Unavailable(m)) => {
            RegistryError::StorageAndUpstreamDown(format!("the upstream is unavailable too ({m})"))
        }
        e => e,
    }
}

#[cfg(test)]
mod degraded_tests;
#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod rules_tests;
