//! TLS served by ocimirror itself, for set-ups without an ingress: the certificate and key come
//! from files and are reloaded when they change (a renewed certificate takes effect without a
//! restart; one that does not load is refused and the one in force stays). Handshakes run in
//! their own tasks, so a client that stalls one holds up no one else.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::watch::FileWatch;

/// A client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to pick them up.
const BACKLOG: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// The `tls` section's own check: the pair loads and matches.
pub fn check(files: &TlsFiles) -> Result<(), String> {
    load(files).map(drop)
}

/// Load and check a certificate chain and its key.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", files.certificate.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            files.certificate.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let provider = aws_lc_rs::default_provider();
    let ck = CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        format!(
            "{} and {} do not make a usable pair: {e}",
            files.certificate.display(),
            files.key.display()
        )
    })?;
    Ok(ck)
}

/// The certificate in force, replaced on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("lock").clone())
    }
}

/// A TCP listener that hands the server finished TLS connections.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsConn, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serve TLS on `tcp` with the certificate in `files`, reloading it when the files change.
    pub fn new(tcp: TcpListener, files: TlsFiles) -> Result<TlsListener, String> {
        let current = Arc::new(Current(RwLock::new(Arc::new(load(&files)?))));
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        tokio::spawn(accept_loop(tcp, acceptor, tx));
        tokio::spawn(reload_loop(files, current));
        Ok(TlsListener { rx, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsConn, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        // The handshake runs on the connection's worker, which then serves it.
        let home = super::workers::next();
        let handshake = async move {
            let Some(stream) = super::conn::settled(stream, home.is_some(), peer) else {
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((TlsConn { stream, home }, peer)).await;
                }
                Ok(Err(e)) => {
                    metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES).increment(1);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES).increment(1);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        };
        match home {
            Some(w) => drop(w.spawn(handshake)),
            None => drop(tokio::spawn(handshake)),
        }
    }
}

async fn reload_loop(files: TlsFiles, current: Arc<Current>) {
    let mut watch = FileWatch::new(vec![files.certificate.clone(), files.key.clone()]);
    loop {
        watch.changed().await;
        match load(&files) {
            Ok(ck) => {
                *current.0.write().expect("lock") = Arc::new(ck);
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "ok").increment(1);
                tracing::info!(certificate = %files.certificate.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "refused").increment(1);
                tracing::error!(error = %e, "TLS certificate reload refused; the previous one stays in force");
            }
        }
    }
}

/// A finished TLS connection and the worker its handshake ran on, which serves it too.
pub struct TlsConn {
    pub stream: TlsStream<TcpStream>,
    home: Option<&'static Handle>,
}

// The listener's connection type must be a stream itself; the server takes `stream` out.
impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

// Encrypted in the process: nothing for the kernel to send from a file.
impl super::sendfile::SendFiles for TlsConn {
    type Io = TlsStream<TcpStream>;
    fn with_files(self) -> (Self::Io, Option<Arc<super::sendfile::FileQueue>>) {
        (self.stream, None)
    }
}

impl super::conn::Transport for TlsConn {
    const TLS: bool = true;
    fn worker(&self) -> Option<&'static Handle> {
        self.home
    }
    // Already registered with its worker.
    fn rehome(self) -> io::Result<Self> {
        Ok(self)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, cn: &str) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        let files = TlsFiles {
            certificate: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.certificate, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn loads_a_pair_and_refuses_broken_files_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "a");
        assert!(load(&files).is_ok());

        std::fs::write(&files.certificate, "not a certificate").unwrap();
        let e = load(&files).unwrap_err();
        assert!(e.contains("tls.crt"), "{e}");

        let other = tempfile::tempdir().unwrap();
        let good = write_pair(other.path(), "b");
        let mismatched = TlsFiles {
            certificate: good.certificate.clone(),
            key: dir.path().join("missing.key"),
        };
        let e = load(&mismatched).unwrap_err();
        assert!(e.contains("missing.key"), "{e}");
    }

    #[tokio::test]
    async fn tls_connections_are_served_on_the_workers_their_handshakes_ran_on() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "a");
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let tls = TlsListener::new(tcp, files).unwrap();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .tls_danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let url = format!("https://localhost:{port}/");
        crate::http::workers::tests::check_served_by_workers(tls, client, &url).await;
    }
}
