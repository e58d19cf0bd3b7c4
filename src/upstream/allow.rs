//! The upstream allow-list: a decorator that refuses, before any network traffic, every upstream
//! call for a repository outside the configured patterns. It guards the mirror's storage and
//! its upstream account against being used to pull all of Docker Hub, whoever is authenticated.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobResponse, FetchedManifest, ManifestHead, TagsResponse, Upstream, UpstreamError};
use crate::oci::{Digest, Reference, RepoName};

/// Decides whether a canonical repository name may be fetched.
pub type AllowFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub struct AllowListed {
    inner: Arc<dyn Upstream>,
    allowed: AllowFn,
}

impl AllowListed {
    pub fn new(inner: Arc<dyn Upstream>, allowed: AllowFn) -> Self {
        AllowListed { inner, allowed }
    }

    fn check(&self, name: &RepoName) -> Result<(), UpstreamError> {
        if (self.allowed)(name.as_str()) {
            Ok(())
        } else {
            metrics::counter!(crate::metrics::UPSTREAM_REFUSED, "reason" => "allow_list")
                .increment(1);
            Err(UpstreamError::NotAllowed)
        }
    }
}

#[async_trait]
impl Upstream for AllowListed {
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
        self.check(name)?;
        self.inner.head_manifest(name, reference).await
    }

    async fn get_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<FetchedManifest, UpstreamError> {
        self.check(name)?;
        self.inner.get_manifest(name, reference).await
    }

    async fn head_blob(&self, name: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        self.check(name)?;
        self.inner.head_blob(name, digest).await
    }

    async fn get_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<BlobResponse, UpstreamError> {
        self.check(name)?;
        self.inner.get_blob(name, digest, from).await
    }

    async fn tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagsResponse, UpstreamError> {
        self.check(name)?;
        self.inner.tags(name, n, last).await
    }

    async fn referrers(&self, name: &RepoName, digest: &Digest) -> Result<Bytes, UpstreamError> {
        self.check(name)?;
        self.inner.referrers(name, digest).await
    }
}
