//! Blobs: served from storage when the repository links them, else from the one fill of their
//! digest (or, in a fleet, from storage once another replica committed it). A blob is served
//! under a name only when the upstream confirmed it may be read there.

use std::sync::Arc;

use futures_util::StreamExt;

use super::lease::Source;
use super::{BlobReply, ClientStream, Registry, RegistryError};
use crate::layout;
use crate::oci::{ByteRange, Digest, RepoName};
use crate::storage::ObjectMeta;
use crate::upstream::UpstreamError;

impl Registry {
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
        let (mut linked, data) = (link?.is_some(), data?);
        if !linked {
            // Nothing has confirmed that this repository may read the blob, and a manifest
            // listing it is only a claim: only the upstream can say, under this name.
            if self.settings.offline {
                return Err(RegistryError::BlobUnknown);
            }
            match self.fills.get(digest) {
                // Being fetched under this very name: the upstream's answer to that GET is the
                // confirmation (the fill links the blob once it is stored).
                Some(f) if f.name() == &repo => {
                    f.started().await.map_err(blob_upstream_error)?;
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
                            return Ok(BlobReply {
                                size,
                                range: None,
                                body: None,
                            });
                        }
                    }
                }
            }
        }
        if let Some(meta) = data {
            match self.serve_stored(digest, meta, range, head).await {
                // Expired and deleted since the look above: fetch it again like any miss.
                Err(RegistryError::Storage(e)) if e.is_not_found() => {
                    tracing::debug!(digest = %digest, "blob removed while being served; fetching again");
                }
                r => {
                    metrics::counter!(crate::metrics::CACHE_HITS, "kind" => "blob").increment(1);
                    return r;
                }
            }
        }
        if self.settings.offline {
            return Err(RegistryError::BlobUnknown);
        }
        metrics::counter!(crate::metrics::CACHE_MISSES, "kind" => "blob").increment(1);
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
            Source::Fill(f) => {
                // Started under another name meanwhile: its GET confirms nothing here.
                if !linked && f.name() != &repo {
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
                return self.serve_stored(digest, meta, range, head).await;
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
