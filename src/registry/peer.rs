//! The seam to the other replicas of a fleet: streaming a fill that another replica runs. The
//! cluster module implements it over the fleet's peer listener; the registry sees only this.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::oci::{Digest, RepoName};

pub type PeerByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, PeerError>> + Send>>;

pub struct PeerStream {
    /// The whole blob's size, when the holder knows it.
    pub size: Option<u64>,
    /// The repository the holder's upstream served the blob under (`None`: the holder did not
    /// say). Its answer confirms the blob for that name only.
    pub name: Option<RepoName>,
    /// The blob's bytes from the offset asked for. It ends cleanly only after the holder has
    /// verified the whole blob's digest (the holder holds its last byte back until then); any
    /// failure on the way is an error item.
    pub stream: PeerByteStream,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The holder runs no fill of this digest (finished, failed, or not started yet).
    #[error("the holder has no fill of it in progress")]
    NoFill,
    /// Nothing listens at the holder's address any more: the holder is gone.
    #[error("the holder is gone: {0}")]
    Gone(String),
    /// Anything else: no answer in time, an unexpected answer, a stream broken mid-way.
    #[error("peer stream failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Where the other replicas reach this one: written into the fill leases it holds.
    fn advertise(&self) -> &str;
    /// Stream `digest` from byte `from` on, out of the fill the replica at `holder` runs.
    async fn open(&self, holder: &str, digest: &Digest, from: u64)
    -> Result<PeerStream, PeerError>;
}
