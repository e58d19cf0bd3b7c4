//! A loopback TCP proxy that can be cut and restored: a server behind it "goes away" and comes
//! back on the same port.

use std::time::Duration;

use super::free_port;

/// A loopback TCP proxy in this test's tokio runtime: listens on a fixed port and forwards each
/// connection to `target`. [`TcpProxy::cut`] drops every connection (RST) and closes the
/// listener, so new connections are refused, as when the server behind it is stopped;
/// [`TcpProxy::restore`] listens on the same port again.
pub struct TcpProxy {
    pub port: u16,
    target: std::net::SocketAddr,
    run: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Sender<bool>,
    )>,
}

impl TcpProxy {
    /// A proxy to `target` (`host:port` or an `http://host:port` URL), already forwarding.
    pub async fn start(target: &str) -> TcpProxy {
        let hp = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mut p = TcpProxy {
            port: free_port(),
            target: hp.parse().expect("target host:port"),
            run: None,
        };
        p.restore().await;
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_up(&self) -> bool {
        self.run.is_some()
    }

    /// Drop every open connection (with RST) and refuse new ones.
    pub fn cut(&mut self) {
        if let Some((task, stop)) = self.run.take() {
            task.abort();
            let _ = stop.send(true);
        }
    }

    /// Listen and forward again, on the same port.
    pub async fn restore(&mut self) {
        assert!(self.run.is_none(), "proxy already up");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut tries = 0;
        let listener = loop {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_reuseaddr(true).unwrap();
            match sock.bind(addr).and_then(|()| sock.listen(1024)) {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("proxy cannot listen on {addr} again: {e}"),
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let target = self.target;
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut stop = stop_rx.clone();
                // Linger 0 does not block on drop: it makes the close a reset.
                #[allow(deprecated)]
                tokio::spawn(async move {
                    let _ = inbound.set_linger(Some(Duration::ZERO));
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_linger(Some(Duration::ZERO));
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        self.run = Some((task, stop_tx));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
