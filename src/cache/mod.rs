//! The descriptor cache seam: small facts that save storage round trips (which digest a tag
//! pointed to and when that was last confirmed upstream; a manifest's media type and size).
//! Advisory by contract: a backend error is logged by the backend and reads as a miss, so the
//! cache can never fail a request.

mod memory;
mod redis;

use std::time::SystemTime;

use async_trait::async_trait;

use crate::oci::Digest;

pub use self::redis::{RedisCache, RedisConfig, RedisConfigError};
pub use memory::MemoryCache;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagEntry {
    pub digest: Digest,
    /// When the upstream last confirmed this mapping.
    pub checked_at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub media_type: String,
    pub size: u64,
}

#[async_trait]
pub trait DescriptorCache: Send + Sync + 'static {
    /// `repo` is the upstream-qualified repository key.
    async fn tag(&self, repo: &str, tag: &str) -> Option<TagEntry>;
    async fn set_tag(&self, repo: &str, tag: &str, entry: TagEntry);
    async fn manifest(&self, digest: &Digest) -> Option<ManifestEntry>;
    async fn set_manifest(&self, digest: &Digest, entry: ManifestEntry);
}

#[cfg(test)]
pub(crate) mod suite {
    use std::time::{Duration, SystemTime};

    use super::*;

    pub async fn run(c: &dyn DescriptorCache) {
        let d = Digest::sha256_of(b"m");
        assert_eq!(c.tag("r", "t").await, None);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let e = TagEntry {
            digest: d.clone(),
            checked_at: at,
        };
        c.set_tag("r", "t", e.clone()).await;
        assert_eq!(c.tag("r", "t").await, Some(e));
        assert_eq!(c.tag("r", "other").await, None);
        assert_eq!(c.tag("r2", "t").await, None);
        let e2 = TagEntry {
            digest: Digest::sha256_of(b"n"),
            checked_at: at + Duration::from_secs(5),
        };
        c.set_tag("r", "t", e2.clone()).await;
        assert_eq!(c.tag("r", "t").await, Some(e2));

        assert_eq!(c.manifest(&d).await, None);
        let m = ManifestEntry {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 42,
        };
        c.set_manifest(&d, m.clone()).await;
        assert_eq!(c.manifest(&d).await, Some(m));
    }
}
