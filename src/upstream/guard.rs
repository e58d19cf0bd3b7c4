//! Checking decorators: a [`Guarded`] upstream passes every call on to the upstream it wraps,
//! after asking its [`Guard`] whether the call may go out and whether a fetched manifest may be
//! kept. The allow-list (`allow.rs`) and the manifest fan-out bound (`fanout.rs`) are guards;
//! the passing-on is written once, here, so no guard can forget a method and with it its check
//! or the blob bounds.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobResponse, FetchedManifest, ManifestHead, TagsResponse, Upstream, UpstreamError};
use crate::oci::{Digest, Reference, RepoName};

/// What a decorator checks; both checks pass unless a guard says otherwise.
pub trait Guard: Send + Sync + 'static {
    /// Before any call to the upstream for repository `name`, so a refusal costs no traffic.
    fn call(&self, name: &RepoName) -> Result<(), UpstreamError> {
        let _ = name;
        Ok(())
    }
    /// A fetched manifest's body, before the mirror stores, caches or serves anything of it.
    fn manifest(&self, body: &[u8]) -> Result<(), UpstreamError> {
        let _ = body;
        Ok(())
    }
}

/// `inner` behind `guard`. Each guard's module gives its `Guarded<_>` a constructor.
pub struct Guarded<G> {
    pub(super) inner: Arc<dyn Upstream>,
    pub(super) guard: G,
}

#[async_trait]
impl<G: Guard> Upstream for Guarded<G> {
    fn canonical_name(&self, name: &RepoName) -> RepoName {
        self.inner.canonical_name(name)
    }

    fn own_name(&self, name: &RepoName) -> RepoName {
        self.inner.own_name(name)
    }

    fn blob_bounds(&self, name: &RepoName) -> super::bounds::BlobBounds {
        self.inner.blob_bounds(name)
    }

    async fn head_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        self.guard.call(name)?;
        self.inner.head_manifest(name, reference).await
    }

    async fn get_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<FetchedManifest, UpstreamError> {
        self.guard.call(name)?;
        let m = self.inner.get_manifest(name, reference).await?;
        self.guard.manifest(&m.body)?;
        Ok(m)
    }

    async fn head_blob(&self, name: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        self.guard.call(name)?;
        self.inner.head_blob(name, digest).await
    }

    async fn get_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<BlobResponse, UpstreamError> {
        self.guard.call(name)?;
        self.inner.get_blob(name, digest, from).await
    }

    async fn tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagsResponse, UpstreamError> {
        self.guard.call(name)?;
        self.inner.tags(name, n, last).await
    }

    async fn referrers(&self, name: &RepoName, digest: &Digest) -> Result<Bytes, UpstreamError> {
        self.guard.call(name)?;
        self.inner.referrers(name, digest).await
    }
}
