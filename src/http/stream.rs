//! Bounds on blob response streams, so that clients that open many or never read cannot exhaust
//! the mirror's descriptors and memory.
//!
//! - **A process-wide cap on open blob streams** (`server.max_blob_streams`). Each streamed blob
//!   holds a storage file or a fill's spool open and a chunk in flight; beyond the cap a `GET` is
//!   answered 503 `UNAVAILABLE` with `Retry-After` before any work, and counted.
//! - **A per-client share of that cap** (`server.max_blob_streams_per_client`), so that one
//!   client cannot hold every place until the send timeout frees them. A client is its address
//!   (behind trusted proxies, from `limits.real_ip_header`), IPv6 by /64 as the login throttle counts it; beyond
//!   its share a `GET` gets the same 503, counted apart.
//! - **A send timeout** (`server.send_timeout`, like nginx's `send_timeout`): once a stream has
//!   handed the connection a chunk, either the connection asks for the next one or it writes
//!   something to its socket within this time. A client that stops reading (HTTP/1: its socket
//!   buffer stays full; HTTP/2: it sends no window updates) does neither, and its connection is
//!   then closed, releasing the stream's permit and files; a client reading slowly keeps its
//!   connection writing and is not cut. Time spent waiting on a slow upstream is not the client's
//!   and does not count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::{ApiError, Code};

/// Closes the connection it was handed by the connection loop (`http::conn`) when cancelled,
/// and knows when that connection last wrote to its socket. Every request carries its
/// connection's as an extension.
#[derive(Clone, Debug, Default)]
pub struct ConnCloser {
    pub close: CancellationToken,
    /// [`now_ms`] of the last write that moved bytes.
    pub last_write: Arc<AtomicU64>,
}

impl ConnCloser {
    pub fn wrote(&self) {
        self.last_write.store(now_ms(), Ordering::Relaxed);
    }
}

/// Milliseconds since a process-wide epoch.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The cap on open blob streams, each client's share of it, and the send timeout every one of
/// them is held to.
pub struct BlobStreams {
    permits: Arc<Semaphore>,
    per_client: usize,
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    send_timeout: Duration,
}

/// One open blob stream's places: in the process-wide cap and in its client's share.
pub struct StreamPermit {
    _global: OwnedSemaphorePermit,
    _client: Option<ClientSlot>,
}

impl std::fmt::Debug for StreamPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPermit")
            .field("client", &self._client.as_ref().map(|c| c.key))
            .finish()
    }
}

struct ClientSlot {
    key: IpAddr,
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = clients.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.key);
            }
        }
    }
}

fn refused(what: &str) -> ApiError {
    ApiError::new(Code::Unavailable, what.to_owned()).with_retry_after(1)
}

impl BlobStreams {
    pub fn new(max_streams: usize, send_timeout: Duration) -> Self {
        BlobStreams {
            permits: Arc::new(Semaphore::new(max_streams)),
            per_client: max_streams,
            clients: Arc::default(),
            send_timeout,
        }
    }

    /// At most `per_client` streams for one client.
    pub fn per_client(mut self, per_client: usize) -> Self {
        self.per_client = per_client;
        self
    }

    /// A place for one more blob stream of the client at `client` (its address as
    /// [`crate::auth::realip::RealIp`] found it), or 503 with `Retry-After` when its share or
    /// every place is taken.
    pub fn open(&self, client: Option<IpAddr>) -> Result<StreamPermit, ApiError> {
        let client = match client {
            Some(ip) => {
                let key = crate::auth::authn::client_key(ip);
                let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
                let n = clients.entry(key).or_insert(0);
                if *n >= self.per_client {
                    drop(clients);
                    metrics::counter!(crate::metrics::BLOB_STREAMS_CLIENT_REFUSED).increment(1);
                    return Err(refused(
                        "this client has too many blob downloads in progress; finish or close \
                         some and retry",
                    ));
                }
                *n += 1;
                Some(ClientSlot {
                    key,
                    clients: self.clients.clone(),
                })
            }
            None => None,
        };
        // The client's slot is given back (dropped) with the refusal.
        let global = self.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(crate::metrics::BLOB_STREAMS_REFUSED).increment(1);
            refused("too many blob downloads in progress; retry shortly")
        })?;
        Ok(StreamPermit {
            _global: global,
            _client: client,
        })
    }

    /// `body`, holding `permit` until it ends or is dropped, and closing `conn` when the
    /// connection stops asking for its bytes for longer than the send timeout.
    pub fn guard(&self, body: Body, permit: StreamPermit, conn: Option<ConnCloser>) -> Body {
        metrics::gauge!(crate::metrics::BLOB_STREAMS_OPEN).increment(1.0);
        let handed = Arc::new(AtomicU64::new(IDLE));
        let done = CancellationToken::new();
        if let Some(conn) = conn {
            tokio::spawn(watchdog(
                handed.clone(),
                self.send_timeout,
                done.clone(),
                conn,
            ));
        }
        Body::new(GuardedBody {
            inner: body,
            handed,
            _permit: permit,
            _done: done.drop_guard(),
        })
    }
}

/// `handed` when the connection is asking for bytes (not waiting on the client).
const IDLE: u64 = u64::MAX;

/// Closes `conn` when a chunk handed over at `handed` ([`now_ms`]) was followed neither by a
/// request for the next one nor by a write on the connection within `timeout`; ends with the
/// body.
async fn watchdog(
    handed: Arc<AtomicU64>,
    timeout: Duration,
    done: CancellationToken,
    conn: ConnCloser,
) {
    let limit = timeout.as_millis() as u64;
    let mut wait = timeout;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let at = handed.load(Ordering::Acquire);
        if at == IDLE {
            wait = timeout;
            continue;
        }
        let progress = at.max(conn.last_write.load(Ordering::Relaxed));
        let idle = now_ms().saturating_sub(progress);
        if idle >= limit {
            metrics::counter!(crate::metrics::SEND_TIMEOUTS).increment(1);
            tracing::info!(
                ?timeout,
                "client read nothing of a blob for the send timeout; closing its connection"
            );
            conn.close.cancel();
            return;
        }
        wait = Duration::from_millis(limit - idle);
    }
}

struct GuardedBody {
    inner: Body,
    handed: Arc<AtomicU64>,
    _permit: StreamPermit,
    /// Ends the watchdog when the body goes.
    _done: DropGuard,
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::BLOB_STREAMS_OPEN).decrement(1.0);
    }
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        self.handed.store(IDLE, Ordering::Release);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.handed.store(now_ms(), Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn the_cap_refuses_with_retry_after_and_frees_on_drop() {
        let s = BlobStreams::new(1, Duration::from_secs(60));
        let p = s.open(None).unwrap();
        let e = s.open(None).unwrap_err();
        assert_eq!(e.code, Code::Unavailable);
        let body = s.guard(Body::from("x"), p, None);
        assert!(s.open(None).is_err());
        drop(body);
        assert!(s.open(None).is_ok());
    }

    fn peer(ip: &str) -> Option<IpAddr> {
        Some(ip.parse().unwrap())
    }

    #[tokio::test]
    async fn one_client_gets_its_share_and_others_still_get_theirs() {
        let s = BlobStreams::new(8, Duration::from_secs(60)).per_client(3);
        let mut held: Vec<_> = (0..3).map(|_| s.open(peer("10.0.0.1")).unwrap()).collect();
        let e = s.open(peer("10.0.0.1")).unwrap_err();
        assert_eq!(e.code, Code::Unavailable);
        // Another address in the same IPv6 /64 is the same client.
        held.extend((0..3).map(|_| s.open(peer("2001:db8::1")).unwrap()));
        assert!(s.open(peer("2001:db8::ffff")).is_err());
        // Others get theirs; the process-wide cap still holds.
        held.push(s.open(peer("10.0.0.2")).unwrap());
        held.push(s.open(peer("2001:db8:0:1::1")).unwrap());
        assert!(s.open(peer("10.0.0.3")).is_err(), "8 open in all");
        drop(held.pop());
        held.push(s.open(peer("10.0.0.9")).unwrap());
        // A stream ending gives its client's place back.
        drop(held.remove(0));
        drop(held.pop());
        assert!(s.open(peer("10.0.0.1")).is_ok());
        drop(held);
        assert!(s.clients.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_reader_that_stops_asking_closes_its_connection() {
        let s = BlobStreams::new(4, Duration::from_secs(2));
        let conn = ConnCloser::default();
        let chunks = futures_util::stream::iter(
            (0..20).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))),
        );
        let mut body = s
            .guard(
                Body::from_stream(chunks),
                s.open(None).unwrap(),
                Some(conn.clone()),
            )
            .into_data_stream();
        // Asking steadily, for longer than the timeout in all: never closed.
        for _ in 0..10 {
            body.next().await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!conn.close.is_cancelled());
        }
        // Then it stops asking.
        tokio::time::timeout(Duration::from_secs(30), conn.close.cancelled())
            .await
            .expect("the connection is closed");
    }

    #[tokio::test]
    async fn waiting_on_the_source_is_not_the_clients_stall() {
        let s = BlobStreams::new(4, Duration::from_millis(200));
        let conn = ConnCloser::default();
        let slow = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, std::io::Error>(Bytes::from_static(b"late"))
        });
        let mut body = s
            .guard(
                Body::from_stream(slow),
                s.open(None).unwrap(),
                Some(conn.clone()),
            )
            .into_data_stream();
        body.next().await.unwrap().unwrap();
        assert!(!conn.close.is_cancelled());
    }
}
