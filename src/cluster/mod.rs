//! The fleet's peer endpoint: the replicas of a fleet stream each other's fills in progress, so
//! that a client on any replica gets a blob's bytes as the one replica fetching it receives them.
//!
//! Each replica serves its fills in progress, by digest, on a listener of its own
//! (`cluster.listen`, never the public one), to requests bearing the secret the fleet shares
//! (`cluster.secret_file`); the fill leases it holds name the URL the others reach it at
//! (`cluster.advertise`). Nothing else is served there: not storage, not anything the ACL
//! governs. `client.rs` is the registry's [`Peers`](crate::registry::Peers) over HTTP,
//! `server.rs` the listener.

mod client;
pub mod config;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::http::conn::ConnBounds;
use crate::registry::Registry;

pub use client::PeerClient;
pub use config::{ClusterConfig, ClusterSettings};

/// Shortest secret accepted: the secret is all that keeps a fill's bytes inside the fleet.
const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.secret_file {path}: {message}")]
    Secret { path: String, message: String },
    #[error("cluster.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the peer client: {0}")]
    Client(String),
}

/// How the peer listener bounds its connections and streams: as the public listener does
/// (`server.header_read_timeout`, `server.max_concurrent_streams`, `server.max_blob_streams`,
/// `server.send_timeout`).
#[derive(Clone, Copy, Debug)]
pub struct PeerBounds {
    pub conn: ConnBounds,
    pub max_blob_streams: usize,
    pub send_timeout: Duration,
}

/// The fleet's shared secret, as read from its file.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn read(path: &std::path::Path) -> Result<Secret, ClusterError> {
        let fail = |message: String| ClusterError::Secret {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let secret = text.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(fail(format!(
                "the secret must be at least {MIN_SECRET_LEN} characters"
            )));
        }
        if secret.chars().any(|c| c.is_control() || c == ' ') {
            return Err(fail(
                "the secret must be one line without spaces (it travels in a header)".into(),
            ));
        }
        Ok(Secret(secret.into()))
    }

    fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the secret, in time independent of both (their hashes are
    /// compared, so not even the length shows).
    fn matches(&self, presented: &[u8]) -> bool {
        use aws_lc_rs::digest::{SHA256, digest};
        let a = digest(&SHA256, presented);
        let b = digest(&SHA256, self.0.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref()).is_ok()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Join `registry` to its fleet's peers: serve its fills in progress on `cluster.listen` and
/// stream the other replicas' fills. Without a `cluster` section a replica sharing leases with
/// a fleet (`fleet`) waits for the others' commits, and says so once.
pub async fn start(
    cluster: Option<&ClusterSettings>,
    fleet: bool,
    registry: &Arc<Registry>,
    bounds: PeerBounds,
) -> Result<(), ClusterError> {
    let Some(c) = cluster else {
        if fleet {
            tracing::info!(
                "no cluster section: a client of a replica that is not fetching an uncached blob \
                 gets no byte until the fetching replica has committed it (configure cluster to \
                 stream fills between replicas)"
            );
        }
        return Ok(());
    };
    if !fleet {
        tracing::warn!(
            "cluster is configured but the cache is not shared (cache.backend: memory): fill \
             leases are local, so no replica streams from another"
        );
    }
    let secret = Secret::read(&c.secret_file)?;
    let listener =
        tokio::net::TcpListener::bind(c.listen)
            .await
            .map_err(|e| ClusterError::Bind {
                addr: c.listen,
                source: e,
            })?;
    let client = PeerClient::new(c.advertise.clone(), secret.clone())?;
    registry.set_peers(Arc::new(client));
    let addr = listener.local_addr().map_err(|e| ClusterError::Bind {
        addr: c.listen,
        source: e,
    })?;
    tracing::info!(%addr, advertise = %c.advertise, "serving fills in progress to the fleet's peers");
    tokio::spawn(server::serve(listener, registry.clone(), secret, bounds));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_a_long_enough_line_compared_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "short\n").unwrap();
        assert!(Secret::read(&p).is_err());
        std::fs::write(&p, "0123456789abcdef-fleet\n").unwrap();
        let s = Secret::read(&p).unwrap();
        assert!(s.matches(b"0123456789abcdef-fleet"));
        assert!(!s.matches(b"0123456789abcdef-fleeT"));
        assert!(!s.matches(b"0123456789abcdef"));
        assert!(!s.matches(b""));
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }
}
