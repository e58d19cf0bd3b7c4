//! Blobs: served from storage when the repository links them, else from the one fill of their
//! digest (or, in a fleet, from storage once another replica committed it). A blob is served
//! under a name only when the upstream confirmed it may be read there: a fill's GET confirms it
//! for the repository it fetched under, also for the clients of another replica relaying that
//! fill; any other repository asks with a HEAD first. Storage that cannot be read makes every
//! blob a miss, passed through from the upstream by a fill that commits nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{Stream, StreamExt};

use super::fill::Fill;
use super::lease::Source;
use super::{
    BlobReply, OFFLINE, Registry, RegistryError, StoredFile, Take, answered_while_down,
    miss_if_down,
};
use crate::layout;
use crate::oci::{ByteRange, Digest, RepoName};
use crate::storage::{ObjectMeta, StorageError};
use crate::upstream::UpstreamError;

impl Registry {
    pub async fn blob(
        self: &Arc<Self>,
        name: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobReply, RegistryError> {
        self.blob_for(name, digest, range, head, Take::default())
            .await
    }

    /// [`Registry::blob`] for a caller that can take a stored blob's bytes another way (see
    /// [`Take`]). With `take.redirect` and redirects on, a whole-blob GET of a blob in storage
    /// (under a repository that may read it, as for any answer) is answered with a presigned URL
    /// of the object instead of its bytes; a store that cannot presign serves the bytes. With
    /// `take.file` and a local filesystem store, a GET of a stored blob (or a range of it) is
    /// answered with the open file ([`BlobReply::file`]) for the caller to send. HEAD and misses
    /// are answered as by [`Registry::blob`].
    pub async fn blob_for(
        self: &Arc<Self>,
        name: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
        mut take: Take,
    ) -> Result<BlobReply, RegistryError> {
        take.redirect &= self.redirect.is_some();
        // A pull all the same: noted for expiry below (`touch`, as there is nothing to hold).
        let mut reply = self.blob_reply(name, digest, range, head, take).await?;
        if let Some(log) = &self.access {
            // Held until the bytes are sent, so that expiry leaves it alone meanwhile.
            if let Some(body) = reply.body.take() {
                reply.body = Some(held(body, log.hold(digest)));
            } else if let Some(pieces) = reply.pieces.take() {
                reply.pieces = Some(held(pieces, log.hold(digest)));
            } else if let Some(file) = reply.file.as_mut() {
                file.hold = Some(Box::new(log.hold(digest)));
            } else {
                log.touch(digest);
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
        take: Take,
    ) -> Result<BlobReply, RegistryError> {
        let started = Instant::now();
        let repo = self.upstream.canonical_name(name);
        let (link_key, data_key) = (layout::layer_link(&repo, digest), layout::blob_data(digest));
        // A blob kept open since it was last sent needs no look-up of its data (`open_blobs`).
        let kept = (take.file && !head)
            .then(|| self.open_blobs.get(digest))
            .flatten();
        let data = async {
            match &kept {
                Some((_, meta)) => Ok(Some(*meta)),
                None => self.storage.stat(&data_key).await,
            }
        };
        let (link, data) = tokio::join!(self.storage.stat(&link_key), data);
        let mut down = false;
        let link = miss_if_down(link.map_err(RegistryError::from), &mut down)?;
        let data = miss_if_down(data.map_err(RegistryError::from), &mut down)?;
        let lookup = match down {
            // Neither look-up can be trusted: the upstream's answer under this name decides.
            true if self.settings.offline => {
                return Err(RegistryError::StorageAndUpstreamDown(OFFLINE.into()));
            }
            true => Lookup {
                linked: false,
                data: None,
                kept: None,
            },
            false => Lookup {
                linked: link.is_some(),
                data,
                kept: kept.map(|(file, _)| file),
            },
        };
        let r = self
            .blob_looked_up(
                repo,
                digest,
                range,
                (head, take),
                (link_key, started),
                lookup,
            )
            .await;
        if down {
            answered_while_down("blob", r)
        } else {
            r
        }
    }

    /// The rest of [`Registry::blob_reply`], once storage has been looked at.
    async fn blob_looked_up(
        self: &Arc<Self>,
        repo: RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
        (head, take): (bool, Take),
        (link_key, started): (String, Instant),
        lookup: Lookup,
    ) -> Result<BlobReply, RegistryError> {
        let Lookup {
            mut linked,
            data,
            kept,
        } = lookup;
        if !linked {
            // Nothing has confirmed that this repository may read the blob, and a manifest
            // listing it is only a claim: only the upstream can say, under this name.
            if self.settings.offline {
                return Err(RegistryError::BlobUnknown);
            }
            match self.fills.get(digest) {
                // Being fetched under this very name: the upstream's answer to that GET is the
                // confirmation (the fill links the blob once it is stored). A relay of another
                // replica's fill carries the name that replica fetches under: another
                // repository's fill confirms nothing here.
                Some(f) if f.name() == &repo => {
                    let under = f.confirmed_under().await.map_err(blob_upstream_error)?;
                    if under.as_ref() != Some(&repo) {
                        self.confirm(&repo, digest).await?;
                    }
                    linked = true;
                }
                // Stored, asked about, or being fetched under another name: ask under this
                // one. Not stored and not in flight: the fill's own GET under this name will be
                // the confirmation, so a cold pull costs no extra request.
                in_flight => {
                    if data.is_some() || head || in_flight.is_some() {
                        let size = self.confirm(&repo, digest).await?;
                        linked = true;
                        if head && data.is_none() {
                            return Ok(BlobReply::size_only(size));
                        }
                    }
                }
            }
        }
        if let Some(meta) = data {
            match self
                .serve_stored(digest, (meta, kept), range, head, take, started)
                .await
            {
                // Expired and deleted since the look above, or the store failed meanwhile:
                // fetch it again like any miss.
                Err(RegistryError::Storage(e)) if e.is_not_found() || e.is_outage() => {
                    tracing::debug!(digest = %digest, error = %e, "stored blob unreadable; fetching again");
                }
                r => {
                    self.counts.blob_hits.increment(1);
                    return r;
                }
            }
        }
        if self.settings.offline {
            return Err(RegistryError::BlobUnknown);
        }
        self.counts.blob_misses.increment(1);
        if head {
            if let Some(fill) = self.fills.get(digest)
                && let Ok(Some(size)) = fill.started().await
            {
                return Ok(BlobReply::size_only(size));
            }
            let size = self
                .upstream
                .head_blob(&repo, digest)
                .await
                .map_err(blob_upstream_error)?;
            return Ok(BlobReply::size_only(size));
        }
        let fill = match self.obtain(&repo, digest).await? {
            Source::Fill(f) => {
                // Started under another name meanwhile, here or (relayed) on the replica
                // fetching it: its GET confirms nothing here. A refusal is reported below.
                let confirmed = linked || (f.name() == &repo && confirms(&f, &repo).await);
                if !confirmed {
                    self.confirm(&repo, digest).await?;
                }
                f
            }
            // Another replica filled it while this one waited. Its confirmation counts only
            // for the repository it fetched under, whose link it wrote before its commit ended.
            Source::Stored(meta) => {
                if !linked && self.storage.stat(&link_key).await?.is_none() {
                    self.confirm(&repo, digest).await?;
                }
                return self
                    .serve_stored(digest, (meta, None), range, head, take, started)
                    .await;
            }
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
        let (start, end) = match resolved {
            Some((a, b)) => (a, Some(b + 1)),
            None => (0, None),
        };
        let mut reply = BlobReply {
            size,
            range: resolved,
            body: None,
            location: None,
            file: None,
            pieces: None,
        };
        let source = fill.clone();
        let origin = move || source.origin().as_str();
        if take.file {
            let pieces = fill.pieces(start, end, SPOOL_PIECE);
            reply.pieces = Some(timed(pieces, started, origin));
        } else {
            reply.body = Some(timed(fill.stream(start, end), started, origin));
        }
        Ok(reply)
    }

    /// Ask the upstream whether `repo` may read `digest` (a HEAD: not a pull on Docker Hub) and
    /// keep its yes as the repository's link, so it is asked once.
    async fn confirm(&self, repo: &RepoName, digest: &Digest) -> Result<u64, RegistryError> {
        let size = self
            .upstream
            .head_blob(repo, digest)
            .await
            .map_err(blob_upstream_error)?;
        self.write_link(&layout::layer_link(repo, digest), digest)
            .await;
        Ok(size)
    }

    /// The stored blob: `meta` as looked up, with its file when it was kept open.
    async fn serve_stored(
        &self,
        digest: &Digest,
        (meta, kept): (ObjectMeta, Option<Arc<std::fs::File>>),
        range: Option<ByteRange>,
        head: bool,
        take: Take,
        started: Instant,
    ) -> Result<BlobReply, RegistryError> {
        let resolved = resolve(range, meta.size)?;
        let mut reply = BlobReply {
            size: meta.size,
            range: resolved,
            body: None,
            location: None,
            file: None,
            pieces: None,
        };
        if head {
            return Ok(reply);
        }
        if take.redirect
            && resolved.is_none()
            && let Some(location) = self.presigned(digest).await
        {
            metrics::counter!(crate::metrics::BLOB_REDIRECTS).increment(1);
            reply.location = Some(location);
            return Ok(reply);
        }
        let (offset, len) = match resolved {
            Some((a, b)) => (a, b - a + 1),
            None => (0, meta.size),
        };
        let key = layout::blob_data(digest);
        if take.file
            && let Some(path) = self.storage.local_path(&key)
        {
            let file = match kept {
                Some(file) => file,
                None => {
                    let file = match tokio::fs::File::open(&path).await {
                        Ok(f) => Arc::new(f.into_std().await),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(StorageError::NotFound(key).into());
                        }
                        Err(source) => return Err(StorageError::Io { key, source }.into()),
                    };
                    self.open_blobs.keep(digest, file.clone(), meta);
                    file
                }
            };
            // The first byte leaves as soon as the connection takes the file.
            metrics::histogram!(crate::metrics::BLOB_FIRST_BYTE, "source" => "storage")
                .record(started.elapsed().as_secs_f64());
            reply.file = Some(StoredFile {
                file,
                offset,
                len,
                hold: None,
            });
            return Ok(reply);
        }
        let s = self
            .storage
            .read_range(&key, offset, resolved.map(|_| len))
            .await?;
        let body = s.map(|r| r.map_err(std::io::Error::other)).boxed();
        reply.body = Some(timed(body, started, || "storage"));
        Ok(reply)
    }

    /// A presigned URL of the stored blob, or `None` (the bytes are served) when the store
    /// cannot make one. A failure is counted (`ocimirror_storage_errors_total{op="presign"}`)
    /// and logged once per process: it repeats for every pull until the credentials change.
    async fn presigned(&self, digest: &Digest) -> Option<String> {
        use std::sync::atomic::{AtomicBool, Ordering};
        static WARNED: AtomicBool = AtomicBool::new(false);
        let expiry = self.redirect?;
        match self
            .storage
            .presign_read(&layout::blob_data(digest), expiry)
            .await
        {
            Ok(url) => url,
            Err(e) => {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot presign a blob URL; serving blobs through the mirror");
                }
                None
            }
        }
    }
}

/// What storage said of a blob: linked under the repository, and its data's size.
struct Lookup {
    linked: bool,
    data: Option<ObjectMeta>,
    /// The blob's file, when it was kept open since it was last sent (`open_blobs`).
    kept: Option<Arc<std::fs::File>>,
}

/// Whether `fill`'s upstream answer confirmed the blob under `repo` (see
/// [`Fill::confirmed_under`]); true as well when its upstream refused, which the caller reports.
async fn confirms(fill: &Fill, repo: &RepoName) -> bool {
    match fill.confirmed_under().await {
        Ok(under) => under.as_ref() == Some(repo),
        Err(_) => true,
    }
}

/// Time from a request to its body's first byte, by where that byte came from (`upstream`,
/// `peer`, `storage`): what a client waits, whichever replica it reached.
/// `body` (bytes or spool pieces) keeping `hold` until it is dropped.
fn held<T: Send + 'static>(
    body: Pin<Box<dyn Stream<Item = std::io::Result<T>> + Send>>,
    hold: impl Send + 'static,
) -> Pin<Box<dyn Stream<Item = std::io::Result<T>> + Send>> {
    body.map(move |item| {
        let _ = &hold;
        item
    })
    .boxed()
}

/// The most of a spool one piece sent from the file names: what a connection sending files
/// hands the kernel per call.
const SPOOL_PIECE: u64 = 512 * 1024;

/// `body` (bytes or spool pieces) recording the time to its first item.
fn timed<T: Send + 'static>(
    body: Pin<Box<dyn Stream<Item = std::io::Result<T>> + Send>>,
    started: Instant,
    origin: impl Fn() -> &'static str + Send + 'static,
) -> Pin<Box<dyn Stream<Item = std::io::Result<T>> + Send>> {
    let mut first = true;
    body.map(move |chunk| {
        if first && chunk.is_ok() {
            first = false;
            metrics::histogram!(crate::metrics::BLOB_FIRST_BYTE, "source" => origin())
                .record(started.elapsed().as_secs_f64());
        }
        chunk
    })
    .boxed()
}

fn resolve(range: Option<ByteRange>, size: u64) -> Result<Option<(u64, u64)>, RegistryError> {
    range
        .map(|r| r.resolve(size))
        .transpose()
        .map_err(RegistryError::Range)
}

fn blob_upstream_error(e: UpstreamError) -> RegistryError {
    match e {
        UpstreamError::NotFound => RegistryError::BlobUnknown,
        other => RegistryError::Upstream(other),
    }
}
