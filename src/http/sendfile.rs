//! Blobs sent by the kernel: on a plain-TCP HTTP/1 connection, a blob held on the local
//! filesystem, and a blob being filled (from its spool, piece by piece as its bytes arrive),
//! goes from the file to the socket with `sendfile(2)`, never read into the process (the way a
//! static file server sends it). Everything else (TLS, HTTP/2, stored blobs on other stores)
//! streams bytes as before.
//!
//! hyper writes a response body as the data frames it is given, in order, and knows nothing of
//! files. So the body ([`FileBody`]) yields, for each piece of the file, a stand-in chunk of the
//! same length taken from one static buffer ([`STAND_IN`]), and queues the piece (file, offset,
//! length) on its connection's [`FileQueue`]. The connection's I/O ([`FileSendIo`]) recognises a
//! write of stand-in bytes by their address and sends the queued piece from the file instead.
//! The stand-in's contents never reach a socket: hyper is configured to queue body chunks
//! rather than copy them (`writev`, so the address survives), an HTTP/1 connection sends one
//! response at a time (so pieces are written in the order they were queued), and a write whose
//! stand-in position does not match the queue's next piece fails the connection instead.
//!
//! `sendfile(2)` runs on the runtime's thread, as nginx runs it without `aio threads`: from the
//! page cache it costs no more than a socket write, but a piece not in the page cache waits for
//! the disk there (at most one piece, 512 KiB, per call).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::registry::{PieceStream, SpoolPiece, StoredFile};

/// The stand-in buffer: the largest piece of a file one data frame announces. Its bytes are
/// never sent; only its address is looked at.
static STAND_IN: [u8; PIECE] = [0; PIECE];
const PIECE: usize = 512 * 1024;

/// The pieces of files a connection's responses announced and its I/O has not sent yet, in
/// order. Requests on a connection that can send files carry its queue as an extension.
#[derive(Default)]
pub struct FileQueue {
    pieces: Mutex<VecDeque<Piece>>,
}

struct Piece {
    file: Arc<std::fs::File>,
    offset: u64,
    len: usize,
    sent: usize,
}

impl FileQueue {
    fn push(&self, piece: Piece) {
        self.pieces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(piece);
    }
}

/// Where `buf` starts within the stand-in buffer, if it is stand-in bytes.
fn stand_in_position(buf: &[u8]) -> Option<usize> {
    let base = STAND_IN.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    (!buf.is_empty() && at >= base && at + buf.len() <= base + PIECE).then(|| at - base)
}

/// The body of a stored blob on a connection that sends files: stand-in chunks, each queued
/// as the file piece to send in its place.
pub fn body(queue: Arc<FileQueue>, stored: StoredFile) -> Body {
    Body::new(FileBody {
        queue,
        file: stored.file,
        offset: stored.offset,
        remaining: stored.len,
        _hold: stored.hold,
    })
}

/// The body of a blob being filled on a connection that sends files: each piece of the fill's
/// spool, as its bytes arrive, queued and announced by stand-in chunks as a stored file's are
/// (at most [`PIECE`] bytes each).
pub fn spooled(queue: Arc<FileQueue>, pieces: PieceStream) -> Body {
    Body::from_stream(pieces.map(move |piece| {
        let SpoolPiece { file, offset, len } = piece?;
        if len > PIECE {
            return Err(io::Error::other("a spool piece larger than a stand-in"));
        }
        queue.push(Piece {
            file,
            offset,
            len,
            sent: 0,
        });
        Ok::<_, io::Error>(Bytes::from_static(&STAND_IN[..len]))
    }))
}

/// The pieces of a fill's spool read through the process, for a connection that cannot send
/// files.
pub fn spooled_read(pieces: PieceStream) -> Body {
    Body::from_stream(pieces.map(|piece| piece.and_then(SpoolPiece::read)))
}

/// The body of a stored blob on a connection that cannot send files: its bytes read through
/// the process.
pub fn streamed(stored: StoredFile) -> Body {
    let StoredFile {
        file,
        offset,
        len,
        hold,
    } = stored;
    // Positional reads: the file may be shared with other responses (kept open).
    let stream = crate::storage::file_stream(file, offset, Some(len), "stored blob".into()).map(
        move |chunk| {
            let _ = &hold;
            chunk.map_err(io::Error::other)
        },
    );
    Body::from_stream(stream)
}

struct FileBody {
    queue: Arc<FileQueue>,
    file: Arc<std::fs::File>,
    offset: u64,
    remaining: u64,
    _hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(PIECE as u64) as usize;
        self.queue.push(Piece {
            file: self.file.clone(),
            offset: self.offset,
            len,
            sent: 0,
        });
        self.offset += len as u64;
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &STAND_IN[..len],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// A connection's I/O as the connection loop serves it, with its file queue when it can send
/// files: a plain TCP connection can, a TLS one cannot (its bytes must pass through the
/// encryption).
pub trait SendFiles: Sized {
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    fn with_files(self) -> (Self::Io, Option<Arc<FileQueue>>);
}

impl SendFiles for TcpStream {
    type Io = FileSendIo;
    fn with_files(self) -> (FileSendIo, Option<Arc<FileQueue>>) {
        let (io, queue) = FileSendIo::new(self);
        (io, Some(queue))
    }
}

/// A plain TCP connection that sends the queued file pieces where stand-in bytes are written.
pub struct FileSendIo {
    tcp: TcpStream,
    queue: Arc<FileQueue>,
}

impl FileSendIo {
    pub fn new(tcp: TcpStream) -> (Self, Arc<FileQueue>) {
        let queue = Arc::new(FileQueue::default());
        (
            FileSendIo {
                tcp,
                queue: queue.clone(),
            },
            queue,
        )
    }

    /// Send (part of) the next queued piece in place of the stand-in bytes `buf`, which start
    /// at `position` in the stand-in buffer.
    fn poll_send_piece(
        &self,
        cx: &mut Context<'_>,
        position: usize,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let mut pieces = self.queue.pieces.lock().unwrap_or_else(|e| e.into_inner());
        let Some(piece) = pieces.front_mut() else {
            return Poll::Ready(Err(out_of_step()));
        };
        // hyper advances through a chunk as it is written: the position in the stand-in is
        // how much of this piece went already.
        if position != piece.sent || len > piece.len - piece.sent {
            return Poll::Ready(Err(out_of_step()));
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut offset = piece.offset + piece.sent as u64;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*piece.file, Some(&mut offset), len)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stored blob is shorter than its size",
                    )));
                }
                Ok(n) => {
                    piece.sent += n;
                    if piece.sent == piece.len {
                        pieces.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn out_of_step() -> io::Error {
    io::Error::other("file piece written out of step with its response")
}

impl AsyncRead for FileSendIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for FileSendIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match stand_in_position(buf) {
            Some(at) => self.poll_send_piece(cx, at, buf.len()),
            None => Pin::new(&mut self.tcp).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(i) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if let Some(at) = stand_in_position(&bufs[i]) {
            return self.poll_send_piece(cx, at, bufs[i].len());
        }
        // The bytes before the next stand-in, written as they are.
        let plain = bufs[i..]
            .iter()
            .take_while(|b| stand_in_position(b).is_none())
            .count();
        Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[i..i + plain])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn stored(bytes: &[u8], offset: u64, len: u64) -> StoredFile {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        StoredFile {
            file: Arc::new(f),
            offset,
            len,
            hold: None,
        }
    }

    async fn pair() -> (FileSendIo, Arc<FileQueue>, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let (io, queue) = FileSendIo::new(server);
        (io, queue, client)
    }

    #[tokio::test]
    async fn stand_ins_are_replaced_by_the_file_and_plain_bytes_pass() {
        let data: Vec<u8> = (0..1_300_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
        let (mut io, queue, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // Two responses on one connection: a range, then the whole file.
        for (offset, len) in [(1000u64, 1_100_000u64), (0, data.len() as u64)] {
            io.write_all(b"HEAD\r\n").await.unwrap();
            let mut frames = body(queue.clone(), stored(&data, offset, len)).into_data_stream();
            let mut n = 0;
            while let Some(chunk) = frames.next().await {
                let chunk = chunk.unwrap();
                assert!(chunk.iter().all(|&b| b == 0), "stand-ins only");
                n += chunk.len();
                io.write_all(&chunk).await.unwrap();
            }
            assert_eq!(n as u64, len);
        }
        io.shutdown().await.unwrap();
        drop(io);
        let got = reader.await.unwrap();
        let mut want = b"HEAD\r\n".to_vec();
        want.extend_from_slice(&data[1000..1_101_000]);
        want.extend_from_slice(b"HEAD\r\n");
        want.extend_from_slice(&data);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
        assert!(queue.pieces.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn stand_ins_out_of_step_fail_the_connection() {
        let (mut io, queue, _client) = pair().await;
        // Nothing queued.
        let e = io.write(&STAND_IN[..10]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Other);
        // Queued, but written from the wrong position.
        let mut frames = body(queue, stored(b"0123456789", 0, 10)).into_data_stream();
        frames.next().await.unwrap().unwrap();
        assert!(io.write(&STAND_IN[3..10]).await.is_err());
    }

    #[tokio::test]
    async fn a_short_file_is_an_error_not_a_short_body() {
        let (mut io, queue, _client) = pair().await;
        let mut frames = body(queue, stored(b"0123", 0, 10)).into_data_stream();
        let chunk = frames.next().await.unwrap().unwrap();
        assert!(io.write_all(&chunk).await.is_err());
    }

    #[tokio::test]
    async fn streamed_reads_the_same_range() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let body = streamed(stored(&data, 5, 150_000));
        let got = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(&got[..], &data[5..150_005]);
    }
}
