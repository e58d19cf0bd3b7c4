//! Bounds on what an upstream can make the mirror read, so that a hostile or broken upstream can
//! neither fill the disk nor hold a fetch (and its slot, spool and temp file) forever.
//!
//! - A blob body stops and fails at `upstream.max_blob_size`, whether its `Content-Length`
//!   announces more (refused before any byte) or it simply keeps sending.
//! - A blob body must keep up an average of `upstream.min_blob_rate` after a grace period (the
//!   upstream's `read_timeout`): its
//!   overall deadline is `grace + size / min_rate`, checked as it arrives, so a trickling
//!   upstream is cut off however it paces its bytes.
//! - Bodies read whole (tag lists, token responses) stop at a fixed cap (referrers indexes and
//!   manifests at 4 MiB, in `http.rs`); error bodies are never read.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::{BlobByteStream, UpstreamError};

/// Tag lists: 10,000 tags of 128 characters fit several times over.
pub const MAX_TAGS_BODY: usize = 8 * 1024 * 1024;
/// Referrers indexes: like manifests.
pub const MAX_REFERRERS_BODY: usize = 4 * 1024 * 1024;
/// Token responses: a JWT with a long access claim is a few KiB.
pub const MAX_TOKEN_BODY: usize = 1024 * 1024;

/// Long enough for a client that timed out to come back and join the fill it left.
pub const DEFAULT_ABANDON_AFTER: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobBounds {
    /// Bytes a blob body may have at most.
    pub max_size: u64,
    /// Bytes per second a blob body must average after `grace`; 0: no minimum.
    pub min_rate: u64,
    /// Time a blob fetch gets before its average rate is held to the minimum.
    pub grace: Duration,
    /// How long a fill nobody reads goes on fetching; None: to the end (for the cache).
    pub abandon_after: Option<Duration>,
}

impl Default for BlobBounds {
    fn default() -> Self {
        BlobBounds {
            max_size: 32 << 30,
            min_rate: 16 << 10,
            grace: Duration::from_secs(30),
            abandon_after: Some(DEFAULT_ABANDON_AFTER),
        }
    }
}

fn tripped(bound: &'static str) {
    metrics::counter!(crate::metrics::UPSTREAM_BOUNDS, "bound" => bound).increment(1);
}

impl BlobBounds {
    /// `stream` cut off with an error at the size bound or when it falls behind the rate;
    /// refused at once when `announced` is already over the size bound.
    pub fn apply(
        self,
        announced: Option<u64>,
        stream: BlobByteStream,
    ) -> Result<BlobByteStream, UpstreamError> {
        self.apply_at(0, announced, stream)
    }

    /// [`apply`](Self::apply) to a stream of the blob's bytes from offset `start` on (a ranged
    /// resume): the size bound counts the blob's bytes, the rate this stream's own.
    pub fn apply_at(
        self,
        start: u64,
        announced: Option<u64>,
        stream: BlobByteStream,
    ) -> Result<BlobByteStream, UpstreamError> {
        if let Some(n) = announced
            && n > self.max_size
        {
            tripped("max_blob_size");
            return Err(UpstreamError::Invalid(format!(
                "the upstream announces a {n}-byte blob, above upstream.max_blob_size ({})",
                self.max_size
            )));
        }
        let started = Instant::now();
        let state = (stream, 0u64, false);
        Ok(futures_util::stream::unfold(state, move |(mut s, seen, ended)| async move {
            if ended {
                return None;
            }
            let deadline = (self.min_rate > 0)
                .then(|| started + self.grace + Duration::from_secs(seen / self.min_rate));
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, s.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        tripped("min_blob_rate");
                        let e = UpstreamError::Unavailable(format!(
                            "the upstream sent {seen} bytes, slower than upstream.min_blob_rate ({} bytes/s)",
                            self.min_rate
                        ));
                        return Some((Err(e), (s, seen, true)));
                    }
                },
                None => s.next().await,
            };
            match next {
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    if start + seen > self.max_size {
                        tripped("max_blob_size");
                        let e = UpstreamError::Invalid(format!(
                            "the upstream sent more than upstream.max_blob_size ({} bytes)",
                            self.max_size
                        ));
                        return Some((Err(e), (s, seen, true)));
                    }
                    Some((Ok(chunk), (s, seen, false)))
                }
                Some(Err(e)) => Some((Err(e), (s, seen, true))),
                None => None,
            }
        })
        .boxed())
    }
}

/// The whole of `resp`'s body, or an error naming `what` once it passes `max` bytes (without
/// reading the rest).
pub async fn read_capped(
    resp: reqwest::Response,
    max: usize,
    what: &str,
) -> Result<Bytes, UpstreamError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        tripped("body_size");
        return Err(UpstreamError::Invalid(format!(
            "the upstream's {what} is larger than {max} bytes"
        )));
    }
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        if body.len() + chunk.len() > max {
            tripped("body_size");
            return Err(UpstreamError::Invalid(format!(
                "the upstream's {what} is larger than {max} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, size: usize) -> BlobByteStream {
        futures_util::stream::iter((0..n).map(move |_| Ok(Bytes::from(vec![0u8; size])))).boxed()
    }

    async fn drain(mut s: BlobByteStream) -> (u64, Option<UpstreamError>) {
        let mut n = 0;
        while let Some(c) = s.next().await {
            match c {
                Ok(c) => n += c.len() as u64,
                Err(e) => return (n, Some(e)),
            }
        }
        (n, None)
    }

    #[tokio::test]
    async fn an_announced_size_over_the_bound_is_refused_before_any_byte() {
        let b = BlobBounds {
            max_size: 100,
            min_rate: 0,
            grace: Duration::ZERO,
            abandon_after: None,
        };
        assert!(b.apply(Some(101), chunks(1, 1)).is_err());
        assert!(b.apply(Some(100), chunks(1, 1)).is_ok());
    }

    #[tokio::test]
    async fn a_body_stops_with_an_error_at_the_size_bound() {
        let b = BlobBounds {
            max_size: 100,
            min_rate: 0,
            grace: Duration::ZERO,
            abandon_after: None,
        };
        let (n, e) = drain(b.apply(None, chunks(1000, 10)).unwrap()).await;
        assert_eq!(n, 100);
        assert!(e.is_some());
        let (n, e) = drain(b.apply(None, chunks(10, 10)).unwrap()).await;
        assert_eq!((n, e), (100, None));
        // A resumed stream: the blob's bytes before it count too.
        let (n, e) = drain(b.apply_at(60, None, chunks(10, 10)).unwrap()).await;
        assert_eq!(n, 40);
        assert!(e.is_some());
    }

    #[tokio::test]
    async fn a_trickle_falls_behind_the_rate_and_is_cut_off() {
        // A body that never sends a second chunk: the deadline after the first passes.
        let b = BlobBounds {
            max_size: u64::MAX,
            min_rate: u64::MAX,
            grace: Duration::from_millis(50),
            abandon_after: None,
        };
        let stalled = futures_util::stream::iter([Ok(Bytes::from_static(b"x"))])
            .chain(futures_util::stream::pending())
            .boxed();
        let (n, e) = drain(b.apply(None, stalled).unwrap()).await;
        assert_eq!(n, 1);
        assert!(matches!(e, Some(UpstreamError::Unavailable(_))));
    }
}
