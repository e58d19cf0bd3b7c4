//! The upstream seam: what the registry layer asks of the registry it mirrors, independent of
//! HTTP. [`HttpUpstream`] is the real client (auth challenges, token cache, timeouts).

mod allow;
pub mod bounds;
mod challenge;
pub mod config;
mod credentials;
pub mod fanout;
mod guard;
mod http;
pub mod ratelimit;
mod route;
mod slots;
mod token;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::oci::{Digest, Reference, RepoName};

pub use allow::{AllowFn, AllowListed};
pub use challenge::{Challenge, ChallengeError};
pub use http::{HttpUpstream, UpstreamSettings};
pub use route::{Namespace, Route, Routed};

pub type BlobByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// Upstream failures as the registry layer needs to tell them apart. `Clone` because one result
/// is shared by every request coalesced onto the same upstream call.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    #[error("not found upstream")]
    NotFound,
    #[error("upstream denied access: {0}")]
    Denied(String),
    /// The upstream refused the mirror's own credentials (even after the password file was
    /// read again): an operator's problem, not the client's.
    #[error("upstream refused the configured credentials: {0}")]
    CredentialsRefused(String),
    #[error("upstream rate limit exceeded")]
    RateLimited { retry_after: Option<String> },
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("upstream sent an invalid response: {0}")]
    Invalid(String),
    #[error("upstream manifest is larger than the 4 MiB limit")]
    ManifestTooLarge,
    /// A manifest the mirror will not take (too many descriptors), with why.
    #[error("upstream manifest refused: {0}")]
    ManifestRefused(String),
    #[error("repository is not in the mirror's upstream allow-list")]
    NotAllowed,
}

#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub body: Bytes,
    pub media_type: Option<String>,
    pub digest: Option<Digest>,
}

pub struct BlobResponse {
    /// The whole blob's size, when the upstream said.
    pub size: Option<u64>,
    /// The offset of the stream's first byte: the one asked for, or 0 when the upstream ignored
    /// the range and sends the whole blob.
    pub start: u64,
    pub stream: BlobByteStream,
}

#[derive(Debug, Clone)]
pub struct TagsResponse {
    pub body: Bytes,
    /// The `Link` header's target, for the next page.
    pub next: Option<String>,
}

#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// The repository name the upstream knows `name` by (Docker Hub's `library/` prefix), which is
    /// also the name content is cached under.
    fn canonical_name(&self, name: &RepoName) -> RepoName;
    /// The name the upstream that serves stored repository `name` (a canonical name) calls it
    /// by itself: without the prefix a named upstream's repositories are stored under
    /// (`ghcr.io/owner/app` is `owner/app` at ghcr.io). What a signature made at that upstream
    /// names. No default, as for `blob_bounds`: a wrapper must pass it on.
    fn own_name(&self, name: &RepoName) -> RepoName;
    async fn head_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError>;
    async fn get_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<FetchedManifest, UpstreamError>;
    async fn head_blob(&self, name: &RepoName, digest: &Digest) -> Result<u64, UpstreamError>;
    /// The blob's bytes from offset `from` on (a `Range` request when `from` > 0; see
    /// [`BlobResponse::start`] for what the upstream made of it).
    async fn get_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<BlobResponse, UpstreamError>;
    async fn tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagsResponse, UpstreamError>;
    /// The bounds a blob of `name` is held to, wherever its bytes come from (the upstream, or
    /// another replica relaying its own fetch). No default: a wrapper that forgot to pass it on
    /// would silently lift the bounds.
    fn blob_bounds(&self, name: &RepoName) -> bounds::BlobBounds;
    /// What containerd's `?ns=<registry>` value selects among the configured upstreams; None:
    /// none answers for it (only [`Routed`] knows the set).
    fn namespace(&self, ns: &str) -> Option<Namespace<'_>> {
        let _ = ns;
        None
    }
    /// The referrers of `digest` as an image index: the referrers API, or the tag-schema
    /// fallback (`<alg>-<hex>`) where the upstream lacks it. `NotFound`: neither has any.
    async fn referrers(&self, name: &RepoName, digest: &Digest) -> Result<Bytes, UpstreamError> {
        let _ = (name, digest);
        Err(UpstreamError::NotFound)
    }
}
