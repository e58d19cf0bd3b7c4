//! Streaming another replica's fill: the registry's [`Peers`] over HTTP to the holder's peer
//! listener. A connection refused means nothing listens at the holder's address any more (the
//! holder is gone and its lease can be taken at once); a timeout or a broken stream only means
//! it cannot be reached now.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use reqwest::StatusCode;
use url::Url;

use super::{ClusterError, Secret};
use crate::oci::{Digest, RepoName};
use crate::percore::PerCore;
use crate::registry::{PeerError, PeerStream, Peers};

/// Header of a peer answer: the whole blob's size, when the holder knows it.
pub const SIZE_HEADER: &str = "x-ocimirror-blob-size";
/// Header of a peer answer: the repository the holder's upstream served the blob under.
pub const REPOSITORY_HEADER: &str = "x-ocimirror-fill-repository";
/// Replicas are near each other: a holder that does not accept a connection this fast is
/// treated as unreachable for now.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest silence on a peer stream: the holder waits for its upstream as long as the
/// upstream's own read timeout allows.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PeerClient {
    /// One per connection worker, so a peer stream is driven on the thread serving its reader.
    client: PerCore<reqwest::Client>,
    advertise: String,
    secret: Secret,
}

impl PeerClient {
    pub fn new(advertise: Url, secret: Secret) -> Result<Self, ClusterError> {
        let client = PerCore::try_new(|| {
            crate::client_tls::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .tcp_nodelay(true)
                // Peer traffic stays between the replicas, whatever proxy the environment names.
                .no_proxy()
                .user_agent(concat!("ocimirror/", env!("CARGO_PKG_VERSION"), " peer"))
                .build()
                .map_err(|e| ClusterError::Client(e.to_string()))
        })?;
        Ok(PeerClient {
            client,
            advertise: advertise.as_str().trim_end_matches('/').to_owned(),
            secret,
        })
    }
}

/// Whether `e` is a connection the holder's host refused.
fn refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = s.source();
    }
    false
}

#[async_trait]
impl Peers for PeerClient {
    fn advertise(&self) -> &str {
        &self.advertise
    }

    async fn open(
        &self,
        holder: &str,
        digest: &Digest,
        from: u64,
    ) -> Result<PeerStream, PeerError> {
        let url = format!(
            "{}/fills/{digest}?from={from}",
            holder.trim_end_matches('/')
        );
        let resp = self
            .client
            .get()
            .get(&url)
            .bearer_auth(self.secret.as_str())
            .send()
            .await
            .map_err(|e| {
                if refused(&e) {
                    PeerError::Gone(format!("{holder}: connection refused"))
                } else {
                    PeerError::Failed(format!("{holder}: {e}"))
                }
            })?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(PeerError::NoFill),
            StatusCode::UNAUTHORIZED => {
                tracing::error!(
                    holder,
                    "the peer refused this replica's cluster secret: every replica needs the same cluster.secret_file"
                );
                return Err(PeerError::Failed(format!(
                    "{holder} refused the cluster secret"
                )));
            }
            s => return Err(PeerError::Failed(format!("{holder} answered {s}"))),
        }
        let size = resp
            .headers()
            .get(SIZE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let name = resp
            .headers()
            .get(REPOSITORY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| RepoName::parse(v).ok());
        let holder = holder.to_owned();
        let stream = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| PeerError::Failed(format!("{holder}: {e}"))))
            .boxed();
        Ok(PeerStream { size, name, stream })
    }
}
