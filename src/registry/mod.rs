//! The pull-through rules: how a manifest, tag, blob, tag list or catalog request is answered
//! from storage, the descriptor cache and the upstream. Never sees HTTP types.

mod bodies;
mod coalesce;
mod fill;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::cache::lease::{LeaseOutcome, Leases, LocalLeases, fill_lease};
use crate::cache::{DescriptorCache, ManifestEntry, TagEntry};
use crate::expiry::AccessLog;
use crate::layout;
use crate::oci::{ByteRange, Digest, ManifestInfo, RangeError, Reference, RepoName, Tag};
use crate::storage::{ObjectMeta, Storage, StorageError};
use crate::upstream::{Upstream, UpstreamError};

use bodies::ManifestBodies;
use coalesce::Coalescer;
pub use fill::ClientStream;
use fill::Fills;

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
}

/// Coalesced results are shared, so errors travel as text-bearing clones.
type Shared<T> = Result<T, Arc<RegistryError>>;

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
/// (None for HEAD).
pub struct BlobReply {
    pub size: u64,
    pub range: Option<(u64, u64)>,
    pub body: Option<ClientStream>,
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

/// Where a missed blob comes from.
#[derive(Clone)]
enum Source {
    Fill(Arc<fill::Fill>),
    Stored(ObjectMeta),
}

/// Polling of the shared storage while another replica fills.
const REMOTE_POLL_MIN: Duration = Duration::from_millis(100);
const REMOTE_POLL_MAX: Duration = Duration::from_secs(1);
/// Memory for hot manifest bodies (each at most 4 MiB; most are a few KiB).
const MANIFEST_BODY_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Links are bookkeeping; a request waits at most this long for one to be written.
const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// After this long waiting for another replica, fetch here as well.
const MAX_REMOTE_WAIT: Duration = Duration::from_secs(600);

pub struct Registry {
    storage: Arc<dyn Storage>,
    cache: Arc<dyn DescriptorCache>,
    upstream: Arc<dyn Upstream>,
    settings: RegistrySettings,
    fills: Fills,
    manifests: Coalescer<(RepoName, Reference), Shared<Manifest>>,
    leases: Arc<dyn Leases>,
    decisions: Coalescer<Digest, Shared<Source>>,
    referrer_fetches: Coalescer<(RepoName, Digest), Shared<Bytes>>,
    bodies: ManifestBodies,
    /// Where pulls are noted for expiry (None: no expiry policy, nothing noted).
    access: Option<Arc<AccessLog>>,
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
            storage,
            cache,
            upstream,
            settings,
            fills,
            manifests: Coalescer::default(),
            leases: Arc::new(LocalLeases),
            decisions: Coalescer::default(),
            referrer_fetches: Coalescer::default(),
            bodies: ManifestBodies::new(MANIFEST_BODY_CACHE_BYTES),
            access: None,
        }
    }

    /// Note every pull in `log`, for expiry.
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Self {
        self.access = Some(log);
        self
    }

    /// Coordinate fills with the other replicas of a fleet through `leases`.
    pub fn with_leases(mut self, leases: Arc<dyn Leases>) -> Self {
        self.leases = leases;
        self
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

    // ---- manifests -------------------------------------------------------------------------

    pub async fn manifest(
        self: &Arc<Self>,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Manifest, RegistryError> {
        let repo = self.upstream.canonical_name(name);
        let m = match reference {
            Reference::Digest(d) => self.manifest_by_digest(&repo, d).await,
            Reference::Tag(t) => self.manifest_by_tag(&repo, t).await,
        }?;
        if let Some(log) = &self.access {
            log.touch(&m.digest);
        }
        Ok(m)
    }

    /// The manifest `d` from storage, if this repository holds it.
    async fn stored_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        require_link: bool,
    ) -> Result<Option<Manifest>, RegistryError> {
        if require_link
            && self
                .storage
                .stat(&layout::revision_link(repo, d))
                .await?
                .is_none()
        {
            return Ok(None);
        }
        let trust = self.access.as_ref().map(|log| log.memory_trust());
        if let Some(m) = self.bodies.get(d, trust) {
            return Ok(Some(m));
        }
        let body = match self.storage.read(&layout::blob_data(d)).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let media_type = match self.cache.manifest(d).await {
            Some(m) => m.media_type,
            None => {
                let info = ManifestInfo::parse(&body, None)
                    .map_err(|e| RegistryError::ManifestInvalid(format!("stored {d}: {e}")))?;
                self.cache
                    .set_manifest(
                        d,
                        ManifestEntry {
                            media_type: info.media_type.clone(),
                            size: body.len() as u64,
                        },
                    )
                    .await;
                info.media_type
            }
        };
        let m = Manifest {
            digest: d.clone(),
            media_type,
            body,
        };
        self.bodies.put(&m);
        Ok(Some(m))
    }

    async fn manifest_by_digest(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Manifest, RegistryError> {
        if let Some(m) = self.stored_manifest(repo, d, true).await? {
            metrics::counter!("ocimirror_cache_hits_total", "kind" => "manifest").increment(1);
            return Ok(m);
        }
        if self.settings.offline {
            return Err(RegistryError::ManifestUnknown(format!(
                "{d} is not cached (offline)"
            )));
        }
        let this = self.clone();
        let (repo2, d2) = (repo.clone(), d.clone());
        let key = (repo.clone(), Reference::Digest(d.clone()));
        let (r, _) = self
            .manifests
            .run(key, async move {
                this.fetch_manifest_by_digest(&repo2, &d2)
                    .await
                    .map_err(Arc::new)
            })
            .await;
        r.map_err(unshare)
    }

    async fn fetch_manifest_by_digest(
        &self,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Manifest, RegistryError> {
        // Held elsewhere in storage (another repository): confirm with a HEAD, which Docker Hub
        // does not count as a pull, instead of downloading it again.
        if self.storage.stat(&layout::blob_data(d)).await?.is_some() {
            self.upstream
                .head_manifest(repo, &Reference::Digest(d.clone()))
                .await
                .map_err(|e| manifest_upstream_error(e, d))?;
            if let Some(m) = self.stored_manifest(repo, d, false).await? {
                self.link_manifest(repo, &m).await;
                return Ok(m);
            }
        }
        let fetched = self
            .upstream
            .get_manifest(repo, &Reference::Digest(d.clone()))
            .await
            .map_err(|e| manifest_upstream_error(e, d))?;
        if !crate::oci::schema1::manifest_matches(d, &fetched.body) {
            return Err(RegistryError::Upstream(UpstreamError::Invalid(format!(
                "manifest {d} from the upstream does not match its digest"
            ))));
        }
        self.store_manifest(repo, d, fetched.body, fetched.media_type.as_deref())
            .await
    }

    /// Validate, store and link a manifest fetched from the upstream.
    async fn store_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Manifest, RegistryError> {
        metrics::counter!("ocimirror_cache_misses_total", "kind" => "manifest").increment(1);
        let info = ManifestInfo::parse(&body, content_type).map_err(|e| {
            RegistryError::Upstream(UpstreamError::Invalid(format!("manifest {d}: {e}")))
        })?;
        let m = Manifest {
            digest: d.clone(),
            media_type: info.media_type.clone(),
            body,
        };
        self.bodies.put(&m);
        self.cache
            .set_manifest(
                d,
                ManifestEntry {
                    media_type: info.media_type.clone(),
                    size: m.body.len() as u64,
                },
            )
            .await;
        if !self.settings.read_only {
            if let Err(e) = self
                .storage
                .put(&layout::blob_data(d), m.body.clone())
                .await
            {
                tracing::error!(digest = %d, error = %e, "cannot store manifest; serving without caching");
                return Ok(m);
            }
            // The upstream served this manifest under `repo`, so `repo` may serve its blobs.
            // Written concurrently: the client asks for the blobs as soon as it has the manifest.
            let keys: Vec<(String, &Digest)> = info
                .blobs
                .iter()
                .map(|b| (layout::layer_link(repo, b), b))
                .chain(std::iter::once((layout::revision_link(repo, d), d)))
                .collect();
            futures_util::future::join_all(keys.iter().map(|(k, b)| self.write_link(k, b))).await;
        }
        Ok(m)
    }

    async fn link_manifest(&self, repo: &RepoName, m: &Manifest) {
        self.write_link(&layout::revision_link(repo, &m.digest), &m.digest)
            .await;
    }

    /// Links are advisory bookkeeping for later requests: failing to write one must not fail
    /// the request that is being answered.
    async fn write_link(&self, key: &str, d: &Digest) {
        if self.settings.read_only {
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

    async fn tag_entry(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<TagEntry>, RegistryError> {
        if let Some(e) = self.cache.tag(repo.as_str(), tag.as_str()).await {
            return Ok(Some(e));
        }
        let key = layout::tag_current(repo, tag);
        let Some(meta) = self.storage.stat(&key).await? else {
            return Ok(None);
        };
        let body = match self.storage.read(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(link_digest(&body).map(|digest| TagEntry {
            digest,
            // A link's age is when it was last confirmed, so a restart does not revalidate
            // every tag at once.
            checked_at: meta.modified.unwrap_or(SystemTime::UNIX_EPOCH),
        }))
    }

    async fn manifest_by_tag(
        self: &Arc<Self>,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Manifest, RegistryError> {
        let entry = self.tag_entry(repo, tag).await?;
        let cached = match &entry {
            Some(e) => self.stored_manifest(repo, &e.digest, false).await?,
            None => None,
        };
        if let (Some(e), Some(m)) = (&entry, &cached) {
            let age = SystemTime::now()
                .duration_since(e.checked_at)
                .unwrap_or(Duration::ZERO);
            if self.settings.offline || age < self.tag_ttl(repo) {
                metrics::counter!("ocimirror_cache_hits_total", "kind" => "manifest").increment(1);
                return Ok(m.clone());
            }
        }
        if self.settings.offline {
            return Err(RegistryError::ManifestUnknown(format!(
                "tag {tag} is not cached (offline)"
            )));
        }
        let this = self.clone();
        let (repo2, tag2) = (repo.clone(), tag.clone());
        let key = (repo.clone(), Reference::Tag(tag.clone()));
        let known = cached.is_some();
        let (r, _) = self
            .manifests
            .run(key, async move {
                this.revalidate_tag(&repo2, &tag2, known)
                    .await
                    .map_err(Arc::new)
            })
            .await;
        match r {
            Ok(m) => Ok(m),
            Err(e) => {
                // NotFound has already become ManifestUnknown: every other upstream failure
                // is one the cached copy papers over.
                let stale_ok = matches!(&*e, RegistryError::Upstream(_));
                match cached {
                    Some(m) if stale_ok => {
                        metrics::counter!("ocimirror_stale_served_total").increment(1);
                        tracing::warn!(name = %repo, tag = %tag, digest = %m.digest, error = %e, "upstream failed; serving cached tag");
                        Ok(m)
                    }
                    _ => Err(unshare(e)),
                }
            }
        }
    }

    /// Ask the upstream what `tag` points at (HEAD: Docker Hub counts only GETs as pulls), and
    /// fetch the manifest only when its digest is new to us. A tag never seen (`known` false)
    /// needs the body whatever the HEAD says, so it is fetched with one GET.
    async fn revalidate_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        known: bool,
    ) -> Result<Manifest, RegistryError> {
        let reference = Reference::Tag(tag.clone());
        let head_digest = if known {
            self.upstream
                .head_manifest(repo, &reference)
                .await
                .map_err(|e| tag_upstream_error(e, tag))?
                .digest
        } else {
            None
        };
        let m = match &head_digest {
            Some(d) => match self.stored_manifest(repo, d, false).await? {
                Some(m) => {
                    // Revalidated: the upstream confirmed what is stored, no body fetched.
                    metrics::counter!("ocimirror_cache_hits_total", "kind" => "manifest")
                        .increment(1);
                    self.link_manifest(repo, &m).await;
                    m
                }
                None => {
                    let fetched = self
                        .upstream
                        .get_manifest(repo, &Reference::Digest(d.clone()))
                        .await
                        .map_err(|e| tag_upstream_error(e, tag))?;
                    if !crate::oci::schema1::manifest_matches(d, &fetched.body) {
                        return Err(RegistryError::Upstream(UpstreamError::Invalid(format!(
                            "manifest for {tag} does not match the digest {d} the upstream announced"
                        ))));
                    }
                    self.store_manifest(repo, d, fetched.body, fetched.media_type.as_deref())
                        .await?
                }
            },
            None => {
                let fetched = self
                    .upstream
                    .get_manifest(repo, &reference)
                    .await
                    .map_err(|e| tag_upstream_error(e, tag))?;
                // Trust the announced digest only if the body matches it; without one, the
                // body is the only way to learn it.
                let d = match fetched.digest {
                    Some(d) if crate::oci::schema1::manifest_matches(&d, &fetched.body) => d,
                    Some(d) => {
                        return Err(RegistryError::Upstream(UpstreamError::Invalid(format!(
                            "manifest for {tag} does not match the digest {d} the upstream announced"
                        ))));
                    }
                    None => crate::oci::schema1::manifest_digest(&fetched.body),
                };
                self.store_manifest(repo, &d, fetched.body, fetched.media_type.as_deref())
                    .await?
            }
        };
        self.record_tag(repo, tag, &m.digest).await?;
        Ok(m)
    }

    async fn record_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        d: &Digest,
    ) -> Result<(), RegistryError> {
        let now = SystemTime::now();
        self.cache
            .set_tag(
                repo.as_str(),
                tag.as_str(),
                TagEntry {
                    digest: d.clone(),
                    checked_at: now,
                },
            )
            .await;
        // The link file is what restarts and offline replicas go by, and its mtime records the
        // confirmation. Compare with the link itself, not the cache: a link write that failed
        // earlier must be repaired even when the cache already knows the digest. Rewriting it on
        // every revalidation would cost a write per request with tag_ttl 0, so an unchanged link
        // is refreshed only when the stored confirmation has itself expired.
        let key = layout::tag_current(repo, tag);
        let linked = match self.storage.read(&key).await {
            Ok(b) => link_digest(&b),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let changed = linked.as_ref() != Some(d);
        let ttl = self.tag_ttl(repo);
        let expired = !changed && !ttl.is_zero() && {
            let stored_age = self
                .storage
                .stat(&key)
                .await?
                .and_then(|m| m.modified)
                .and_then(|t| now.duration_since(t).ok());
            stored_age.is_none_or(|a| a >= ttl)
        };
        if changed || expired {
            let (index, current) = (
                layout::tag_index(repo, tag, d),
                layout::tag_current(repo, tag),
            );
            tokio::join!(self.write_link(&index, d), self.write_link(&current, d));
        }
        Ok(())
    }

    // ---- blobs -----------------------------------------------------------------------------

    pub async fn blob(
        self: &Arc<Self>,
        name: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobReply, RegistryError> {
        let mut reply = self.blob_reply(name, digest, range, head).await?;
        if let Some(log) = &self.access {
            match reply.body.take() {
                // Held until the stream ends, so that expiry leaves it alone meanwhile.
                Some(body) => {
                    let hold = log.hold(digest);
                    reply.body = Some(
                        body.map(move |chunk| {
                            let _ = &hold;
                            chunk
                        })
                        .boxed(),
                    );
                }
                None => log.touch(digest),
            }
        }
        Ok(reply)
    }

    async fn blob_reply(
        self: &Arc<Self>,
        name: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobReply, RegistryError> {
        let repo = self.upstream.canonical_name(name);
        let (link_key, data_key) = (layout::layer_link(&repo, digest), layout::blob_data(digest));
        let (link, data) = tokio::join!(self.storage.stat(&link_key), self.storage.stat(&data_key));
        let (linked, data) = (link?.is_some(), data?);
        if !linked {
            // The repository has not been seen to reference this blob: only the upstream can
            // say whether it may be served under this name.
            if self.settings.offline {
                return Err(RegistryError::BlobUnknown);
            }
            let size = self
                .upstream
                .head_blob(&repo, digest)
                .await
                .map_err(blob_upstream_error)?;
            self.write_link(&layout::layer_link(&repo, digest), digest)
                .await;
            if head && data.is_none() {
                return Ok(BlobReply {
                    size,
                    range: None,
                    body: None,
                });
            }
        }
        if let Some(meta) = data {
            match self.serve_stored(digest, meta, range, head).await {
                // Expired and deleted since the look above: fetch it again like any miss.
                Err(RegistryError::Storage(e)) if e.is_not_found() => {
                    tracing::debug!(digest = %digest, "blob removed while being served; fetching again");
                }
                r => {
                    metrics::counter!("ocimirror_cache_hits_total", "kind" => "blob").increment(1);
                    return r;
                }
            }
        }
        if self.settings.offline {
            return Err(RegistryError::BlobUnknown);
        }
        metrics::counter!("ocimirror_cache_misses_total", "kind" => "blob").increment(1);
        if head {
            if let Some(fill) = self.fills.get(digest)
                && let Ok(Some(size)) = fill.started().await
            {
                return Ok(BlobReply {
                    size,
                    range: None,
                    body: None,
                });
            }
            let size = self
                .upstream
                .head_blob(&repo, digest)
                .await
                .map_err(blob_upstream_error)?;
            return Ok(BlobReply {
                size,
                range: None,
                body: None,
            });
        }
        let fill = match self.obtain(&repo, digest).await? {
            Source::Fill(f) => f,
            // Another replica filled it while this one waited.
            Source::Stored(meta) => return self.serve_stored(digest, meta, range, head).await,
        };
        let size = match fill.started().await.map_err(blob_upstream_error)? {
            Some(s) => s,
            // No Content-Length upstream: the size is known only at the end.
            None => fill
                .finished()
                .await
                .map_err(|m| RegistryError::Upstream(UpstreamError::Unavailable(m)))?,
        };
        let resolved = resolve(range, size)?;
        let body = match resolved {
            Some((a, b)) => fill.stream(a, Some(b + 1)),
            None => fill.stream(0, None),
        };
        Ok(BlobReply {
            size,
            range: resolved,
            body: Some(body),
        })
    }

    async fn serve_stored(
        &self,
        digest: &Digest,
        meta: ObjectMeta,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobReply, RegistryError> {
        let resolved = resolve(range, meta.size)?;
        let body = if head {
            None
        } else {
            let (off, len) = match resolved {
                Some((a, b)) => (a, Some(b - a + 1)),
                None => (0, None),
            };
            let s = self
                .storage
                .read_range(&layout::blob_data(digest), off, len)
                .await?;
            Some(s.map(|r| r.map_err(std::io::Error::other)).boxed() as ClientStream)
        };
        Ok(BlobReply {
            size: meta.size,
            range: resolved,
            body,
        })
    }

    /// The fill to stream `digest` from, or the stored blob when another replica of the fleet
    /// committed it meanwhile. One decision per digest per replica at a time.
    async fn obtain(
        self: &Arc<Self>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Source, RegistryError> {
        if let Some(f) = self.fills.get(digest) {
            metrics::counter!("ocimirror_fill_joins_total").increment(1);
            return Ok(Source::Fill(f));
        }
        let this = self.clone();
        let (repo2, digest2) = (repo.clone(), digest.clone());
        let (r, _) = self
            .decisions
            .run(digest.clone(), async move {
                this.decide(&repo2, &digest2).await.map_err(Arc::new)
            })
            .await;
        r.map_err(unshare)
    }

    async fn decide(&self, repo: &RepoName, digest: &Digest) -> Result<Source, RegistryError> {
        let started = Instant::now();
        let mut poll = REMOTE_POLL_MIN;
        let mut waited = false;
        loop {
            if let Some(f) = self.fills.get(digest) {
                return Ok(Source::Fill(f));
            }
            if waited && let Some(meta) = self.storage.stat(&layout::blob_data(digest)).await? {
                metrics::counter!("ocimirror_fill_remote_waits_total", "result" => "stored")
                    .increment(1);
                return Ok(Source::Stored(meta));
            }
            let lease = match self
                .leases
                .try_acquire(&fill_lease(digest), fill::LEASE_TTL)
                .await
            {
                LeaseOutcome::Acquired(token) if token.is_empty() => None,
                LeaseOutcome::Acquired(token) => Some((self.leases.clone(), token)),
                LeaseOutcome::Unavailable => None,
                LeaseOutcome::HeldElsewhere if started.elapsed() < MAX_REMOTE_WAIT => {
                    // Another replica is fetching it: wait for its commit rather than fetch
                    // the same bytes again.
                    waited = true;
                    tokio::time::sleep(poll).await;
                    poll = (poll * 3 / 2).min(REMOTE_POLL_MAX);
                    continue;
                }
                LeaseOutcome::HeldElsewhere => {
                    tracing::warn!(digest = %digest, "another replica's fill is taking too long; fetching here too");
                    None
                }
            };
            // The previous holder releases only after its commit: a fleet lease that was free
            // may mean the blob has just landed, so look once more before fetching it again.
            // (A replica on its own was just told by storage that the blob is absent.)
            if (lease.is_some() || waited)
                && let Some(meta) = self.storage.stat(&layout::blob_data(digest)).await?
            {
                if let Some((leases, token)) = &lease {
                    leases.release(&fill_lease(digest), token).await;
                }
                return Ok(Source::Stored(meta));
            }
            if waited {
                metrics::counter!("ocimirror_fill_remote_waits_total", "result" => "took_over")
                    .increment(1);
            }
            let fill = self
                .fills
                .join_or_start(repo, digest, lease)
                .map_err(|e| RegistryError::Internal(format!("cannot create spool file: {e}")))?;
            return Ok(Source::Fill(fill));
        }
    }

    // ---- referrers -------------------------------------------------------------------------

    /// The referrers of `digest` as an OCI image index, filtered by `artifact_type`. Fetched
    /// from the upstream (its referrers API, or the tag schema) and kept like a tag: trusted
    /// for `tag_ttl`, served stale when the upstream fails, served from storage offline. An
    /// upstream that knows of none gives the empty index.
    pub async fn referrers(
        self: &Arc<Self>,
        name: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Bytes, RegistryError> {
        let repo = self.upstream.canonical_name(name);
        let key = layout::referrers(&repo, digest);
        let stored = match self.storage.stat(&key).await? {
            Some(meta) => match self.storage.read(&key).await {
                Ok(b) => Some((b, meta.modified)),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let fresh = stored.as_ref().is_some_and(|(_, at)| {
            self.settings.offline
                || at
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age < self.tag_ttl(&repo))
        });
        let index = match stored {
            Some((b, _)) if fresh => b,
            _ if self.settings.offline => empty_index(),
            stored => {
                let this = self.clone();
                let (repo2, d2, key2) = (repo.clone(), digest.clone(), key.clone());
                let (r, _) = self
                    .referrer_fetches
                    .run((repo.clone(), digest.clone()), async move {
                        this.fetch_referrers(&repo2, &d2, &key2)
                            .await
                            .map_err(Arc::new)
                    })
                    .await;
                match (r, stored) {
                    (Ok(b), _) => b,
                    (Err(e), Some((b, _))) if matches!(&*e, RegistryError::Upstream(_)) => {
                        metrics::counter!("ocimirror_stale_served_total").increment(1);
                        tracing::warn!(name = %repo, digest = %digest, error = %e, "upstream failed; serving cached referrers");
                        b
                    }
                    (Err(e), _) => return Err(unshare(e)),
                }
            }
        };
        match artifact_type {
            None => Ok(index),
            Some(t) => filter_index(&index, t),
        }
    }

    async fn fetch_referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        key: &str,
    ) -> Result<Bytes, RegistryError> {
        let body = match self.upstream.referrers(repo, digest).await {
            Ok(b) => b,
            Err(UpstreamError::NotFound) => empty_index(),
            Err(e) => return Err(RegistryError::Upstream(e)),
        };
        let parsed: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Upstream(UpstreamError::Invalid(format!("referrers index: {e}")))
        })?;
        if !parsed.get("manifests").is_some_and(|m| m.is_array()) {
            return Err(RegistryError::Upstream(UpstreamError::Invalid(
                "referrers index without a manifests list".into(),
            )));
        }
        if !self.settings.read_only {
            // Its modification time is when it was fetched.
            self.write_bounded(key, body.clone()).await;
        }
        Ok(body)
    }

    // ---- tags and catalog ------------------------------------------------------------------

    pub async fn tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagsPage, RegistryError> {
        let repo = self.upstream.canonical_name(name);
        let mut refused = None;
        if !self.settings.offline {
            match self.upstream.tags(&repo, n, last).await {
                Ok(resp) => {
                    let list: TagList = serde_json::from_slice(&resp.body).map_err(|e| {
                        RegistryError::Upstream(UpstreamError::Invalid(format!("tag list: {e}")))
                    })?;
                    let upstream_next = resp
                        .next
                        .and_then(|l| l.split_once('?').map(|(_, q)| q.to_owned()));
                    // Upstreams differ (Distribution 2.8 ignores `n` and does not sort): answer
                    // as the spec says whatever they did — sorted, after `last`, at most `n`.
                    let mut all = list.tags;
                    all.sort();
                    all.dedup();
                    let (tags, local_next) = paginate(all, n, last);
                    return Ok(TagsPage {
                        list: TagList {
                            name: name.to_string(),
                            tags,
                        },
                        next: local_next.or(upstream_next),
                    });
                }
                Err(UpstreamError::NotFound) => return Err(RegistryError::NameUnknown),
                // Outside the allow-list: what is cached may still be listed, nothing else.
                Err(UpstreamError::NotAllowed) => refused = Some(UpstreamError::NotAllowed),
                Err(e) => {
                    tracing::warn!(name = %repo, error = %e, "upstream tag list failed; answering from cache");
                    metrics::counter!("ocimirror_stale_served_total").increment(1);
                }
            }
        }
        let all = self.storage.list(&layout::tags_dir(&repo)).await?;
        if all.is_empty() {
            return Err(refused.map_or(RegistryError::NameUnknown, RegistryError::Upstream));
        }
        let (tags, next) = paginate(all, n, last);
        Ok(TagsPage {
            list: TagList {
                name: name.to_string(),
                tags,
            },
            next,
        })
    }

    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<CatalogPage, RegistryError> {
        let repos = layout::repositories(self.storage.as_ref()).await?;
        let (repositories, next) = paginate(repos, n, last);
        Ok(CatalogPage { repositories, next })
    }
}

fn empty_index() -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::manifest::OCI_INDEX,
            "manifests": [],
        }))
        .expect("serialises"),
    )
}

/// Keep the descriptors of `index` whose `artifactType` is `t`.
fn filter_index(index: &[u8], t: &str) -> Result<Bytes, RegistryError> {
    let mut v: serde_json::Value = serde_json::from_slice(index)
        .map_err(|e| RegistryError::Internal(format!("stored referrers index: {e}")))?;
    if let Some(list) = v.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        list.retain(|d| d.get("artifactType").and_then(|a| a.as_str()) == Some(t));
    }
    Ok(Bytes::from(serde_json::to_vec(&v).expect("serialises")))
}

/// Page through a sorted list the way Distribution does: entries after `last`, at most `n`,
/// with the next page's query when more remain.
fn paginate(
    all: Vec<String>,
    n: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, Option<String>) {
    let rest: Vec<String> = match last {
        Some(l) => all.into_iter().filter(|t| t.as_str() > l).collect(),
        None => all,
    };
    match n {
        Some(n) if rest.len() > n => {
            let page: Vec<String> = rest.into_iter().take(n).collect();
            let next = page.last().map(|l| {
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("n", &n.to_string())
                    .append_pair("last", l)
                    .finish()
            });
            (page, next)
        }
        _ => (rest, None),
    }
}

fn resolve(range: Option<ByteRange>, size: u64) -> Result<Option<(u64, u64)>, RegistryError> {
    range
        .map(|r| r.resolve(size))
        .transpose()
        .map_err(RegistryError::Range)
}

fn unshare(e: Arc<RegistryError>) -> RegistryError {
    Arc::try_unwrap(e).unwrap_or_else(|e| match &*e {
        RegistryError::BlobUnknown => RegistryError::BlobUnknown,
        RegistryError::ManifestUnknown(m) => RegistryError::ManifestUnknown(m.clone()),
        RegistryError::NameUnknown => RegistryError::NameUnknown,
        RegistryError::ManifestInvalid(m) => RegistryError::ManifestInvalid(m.clone()),
        RegistryError::Range(r) => RegistryError::Range(r.clone()),
        RegistryError::Upstream(u) => RegistryError::Upstream(u.clone()),
        other => RegistryError::Internal(other.to_string()),
    })
}

fn manifest_upstream_error(e: UpstreamError, d: &Digest) -> RegistryError {
    match e {
        UpstreamError::NotFound => {
            RegistryError::ManifestUnknown(format!("{d} not found upstream"))
        }
        other => RegistryError::Upstream(other),
    }
}

fn tag_upstream_error(e: UpstreamError, tag: &Tag) -> RegistryError {
    match e {
        UpstreamError::NotFound => {
            RegistryError::ManifestUnknown(format!("tag {tag} not found upstream"))
        }
        other => RegistryError::Upstream(other),
    }
}

fn blob_upstream_error(e: UpstreamError) -> RegistryError {
    match e {
        UpstreamError::NotFound => RegistryError::BlobUnknown,
        other => RegistryError::Upstream(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let (p, next) = paginate(all.clone(), Some(2), None);
        assert_eq!(p, vec!["a", "b"]);
        assert_eq!(next.as_deref(), Some("n=2&last=b"));
        let (p, next) = paginate(all.clone(), Some(2), Some("b"));
        assert_eq!(p, vec!["c", "d"]);
        assert_eq!(next, None);
        let (p, _) = paginate(all, None, Some("c"));
        assert_eq!(p, vec!["d"]);
    }
}

#[cfg(test)]
mod rules_tests;
