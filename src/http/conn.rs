//! Serving connections: hyper's HTTP/1 and HTTP/2 on each accepted connection (plain or TLS),
//! with the protections `axum::serve` does not set up.
//!
//! - **Slow or silent clients.** A client must finish each request head (request line and
//!   headers) within `header_read_timeout` of starting to wait for it — this includes an idle
//!   keep-alive connection waiting for its next request. A connection that sends nothing at all
//!   gets the same time for its first bytes (while hyper decides between HTTP/1 and HTTP/2). A
//!   client trickling its headers a byte at a time (slowloris) or opening thousands of idle
//!   connections therefore holds a file descriptor for that long at most.
//! - **Graceful shutdown**: when `shutdown` resolves, no new connections are accepted, idle
//!   keep-alive connections are closed, and in-flight requests finish; the future returned by
//!   [`serve`] completes when the last connection is done (the caller bounds that with its grace
//!   period).
//! - **Bounded streams.** An HTTP/2 connection (TLS or cleartext prior knowledge) may have at
//!   most `max_concurrent_streams` requests open, each with a small send buffer, so one
//!   connection cannot open hundreds of blob streams.
//! - **Closed on request.** Each request carries a [`ConnCloser`] for its connection; a blob
//!   stream whose client stopped reading (`http::stream`'s send timeout) closes the connection
//!   through it.
//! - The client address is given to handlers as axum's `ConnectInfo<SocketAddr>`; a request on
//!   a connection the mirror terminated TLS on carries [`OverTls`] (the scheme of the URLs the
//!   mirror names to its client, as a challenge's realm).
//! - **Files sent by the kernel.** A plain-TCP connection's HTTP/1 requests carry its
//!   [`super::sendfile::FileQueue`], so that a stored blob is sent with `sendfile(2)`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sendfile::SendFiles;
use super::stream::ConnCloser;

/// Bytes a connection must have sent within the first deadline: enough for hyper to tell an
/// HTTP/2 preface (24 bytes) from an HTTP/1 request line.
const FIRST_BYTES: usize = 24;
/// Bytes an HTTP/2 stream may have queued for sending: a stalled reader's stream holds this
/// much at most (hyper's default is 400 KiB).
const H2_SEND_BUF: usize = 64 * 1024;

/// Marks a request that came in on a TLS connection the mirror terminated itself. The
/// connection decides, not the request: an HTTP/2 client names any `:scheme` it likes.
#[derive(Clone, Copy, Debug)]
pub struct OverTls;

/// What a listener's connections are: TLS the mirror terminated, or plain TCP; and where each
/// is served (see [`super::workers`]).
pub trait Transport: Sized {
    const TLS: bool;
    /// The per-core runtime this connection is to be served on; `None`: where it was accepted.
    fn worker(&self) -> Option<&'static Handle>;
    /// The connection registered with the runtime this is called on (its worker's).
    fn rehome(self) -> io::Result<Self>;
    /// Send each write at once. With Nagle's algorithm on, the end of a response (the tail of
    /// a `sendfile` piece, a manifest past one segment) waits for the client to acknowledge
    /// what went before, and a client reading a blob stalls on every such wait.
    fn no_delay(&self) {}
}

impl Transport for tokio::net::TcpStream {
    const TLS: bool = false;
    fn worker(&self) -> Option<&'static Handle> {
        super::workers::next()
    }
    fn rehome(self) -> io::Result<Self> {
        tokio::net::TcpStream::from_std(self.into_std()?)
    }
    fn no_delay(&self) {
        if let Err(e) = self.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    }
}

/// `io` registered with the runtime this runs on when it was `moved` there; `None` (logged)
/// when it cannot be.
pub fn settled<T: Transport>(io: T, moved: bool, peer: SocketAddr) -> Option<T> {
    if !moved {
        return Some(io);
    }
    io.rehome()
        .inspect_err(
            |e| tracing::debug!(%peer, error = %e, "cannot move a connection to its worker"),
        )
        .ok()
}

/// How connections are bounded.
#[derive(Clone, Copy, Debug)]
pub struct ConnBounds {
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
}

/// Serve `app` on `listener` until `shutdown` resolves and the connections have finished.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    bounds: ConnBounds,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    L::Io: SendFiles + Transport,
{
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            c = listener.accept() => c,
            _ = &mut shutdown => break,
        };
        io.no_delay();
        let app = app.clone();
        let stop = stop.clone();
        let header_read_timeout = bounds.header_read_timeout;
        let worker = io.worker();
        let moved = worker.is_some();
        let serving = async move {
            let Some(io) = settled(io, moved, peer) else {
                return;
            };
            let router = TowerToHyperService::new(app);
            let closer = ConnCloser::default();
            let close = closer.close.clone();
            let writes = closer.clone();
            let (io, files) = io.with_files();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(closer.clone());
                if <L::Io as Transport>::TLS {
                    req.extensions_mut().insert(OverTls);
                }
                // HTTP/1 only: it sends one response at a time, in order (see `sendfile`).
                if let Some(files) = &files
                    && req.version() <= http::Version::HTTP_11
                {
                    req.extensions_mut().insert(files.clone());
                }
                hyper::service::Service::call(&router, req.map(Body::new))
            });
            let mut builder = Builder::new(TokioExecutor::new());
            // `writev`: body chunks are queued as they are, never copied into one buffer, which
            // the stand-ins of `sendfile` rely on (and saves a copy of every streamed chunk).
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .writev(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(bounds.max_concurrent_streams)
                .max_send_buf_size(H2_SEND_BUF);
            let io = TokioIo::new(FirstBytesDeadline::new(io, header_read_timeout, writes));
            let conn = builder.serve_connection_with_upgrades(io, svc);
            let mut conn = std::pin::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    // A stalled reader: dropping the connection closes it at once.
                    _ = close.cancelled() => break,
                    _ = stop.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        };
        match worker {
            Some(w) => drop(tracker.spawn_on(serving, w)),
            None => drop(tracker.spawn(serving)),
        }
    }
    drop(listener);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// An I/O stream whose reads fail with `TimedOut` when fewer than [`FIRST_BYTES`] bytes have
/// arrived by the deadline; after that, a plain pass-through that notes each write that moved
/// bytes (the send timeout's measure of a client still reading).
pub struct FirstBytesDeadline<I> {
    inner: I,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    missing: usize,
    writes: ConnCloser,
}

impl<I> FirstBytesDeadline<I> {
    pub fn new(inner: I, timeout: Duration, writes: ConnCloser) -> Self {
        FirstBytesDeadline {
            inner,
            sleep: Some(Box::pin(tokio::time::sleep(timeout))),
            missing: FIRST_BYTES,
            writes,
        }
    }

    fn noted(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.writes.wrote();
        }
        r
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let n = buf.filled().len() - before;
                this.missing = this.missing.saturating_sub(n);
                if this.missing == 0 || n == 0 {
                    this.sleep = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(sleep) = this.sleep.as_mut() {
                    ready!(sleep.as_mut().poll(cx));
                    this.sleep = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client sent no request in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.noted(r)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.noted(r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A listener handing out what a `TcpListener` accepts, keeping a handle on each socket.
    struct Watched {
        inner: tokio::net::TcpListener,
        seen: Arc<Mutex<Vec<std::net::TcpStream>>>,
    }

    impl Listener for Watched {
        type Io = tokio::net::TcpStream;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            let (io, peer) = self.inner.accept().await.unwrap();
            let same_socket = io.as_fd().try_clone_to_owned().unwrap();
            self.seen.lock().unwrap().push(same_socket.into());
            (io, peer)
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            self.inner.local_addr()
        }
    }

    #[tokio::test]
    async fn plain_connections_send_without_waiting_for_acks() {
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = Watched {
            inner,
            seen: seen.clone(),
        };
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let bounds = ConnBounds {
            header_read_timeout: Duration::from_secs(5),
            max_concurrent_streams: 10,
        };
        tokio::spawn(serve(listener, app, bounds, std::future::pending()));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nhost: mirror\r\nconnection: close\r\n\r\n";
        client.write_all(request).await.unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].nodelay().unwrap(),
            "the connection was served with Nagle's algorithm on"
        );
    }
}
