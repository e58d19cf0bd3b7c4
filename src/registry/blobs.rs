//! Blobs: served from storage when the repository links them, else from the one fill of their
//! digest (or, in a fleet, from storage once another replica committed it). A blob is served
//! under a name only when the upstream confirmed it may be read there.

use std::sync::Arc;
use std::time::Instant;

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
        let started = Instant::now();
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
            match self.serve_stored(digest, meta, range, head, started).await {
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
            Source::Stored(meta) => {
                return self.serve_stored(digest, meta, range, head, started).await;
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
            Some((a, b)) => fill.clone().stream(a, Some(b + 1)),
            None => fill.clone().stream(0, None),
        };
        Ok(BlobReply {
            size,
            range: resolved,
            body: Some(timed(body, started, move || fill.origin().as_str())),
        })
    }

    async fn serve_stored(
        &self,
        digest: &Digest,
        meta: ObjectMeta,
        range: Option<ByteRange>,
        head: bool,
        started: Instant,
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
            let body = s.map(|r| r.map_err(std::io::Error::other)).boxed();
            Some(timed(body, started, || "storage"))
        };
        Ok(BlobReply {
            size: meta.size,
            range: resolved,
            body,
        })
    }
}

/// Time from a request to its body's first byte, by where that byte came from (`upstream`,
/// `peer`, `storage`): what a client waits, whichever replica it reached.
fn timed(
    body: ClientStream,
    started: Instant,
    origin: impl Fn() -> &'static str + Send + 'static,
) -> ClientStream {
    let mut first = true;
    body.map(move |chunk| {
        if first && chunk.is_ok() {
            first = false;
            metrics::histogram!("ocimirror_blob_first_byte_seconds", "source" => origin())
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
