//! The descriptor cache seam: small facts that save storage round trips (which digest a tag
//! pointed to and when that was last confirmed upstream; a manifest's media type and size).
//! Advisory by contract: a backend error is logged by the backend and reads as a miss, so the
//! cache can never fail a request.

pub mod config;
pub mod lease;
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

/// A passed signature check of a manifest under one `verify` rule (its key set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictEntry {
    /// Fingerprint of the key that verified the signature.
    pub key: String,
    /// The index whose signature covers this manifest; None: its own signature.
    pub via: Option<Digest>,
}

#[async_trait]
pub trait DescriptorCache: Send + Sync + 'static {
    /// `repo` is the upstream-qualified repository key.
    async fn tag(&self, repo: &str, tag: &str) -> Option<TagEntry>;
    async fn set_tag(&self, repo: &str, tag: &str, entry: TagEntry);
    async fn manifest(&self, digest: &Digest) -> Option<ManifestEntry>;
    async fn set_manifest(&self, digest: &Digest, entry: ManifestEntry);
    /// `rule` identifies a `verify` rule with its key set and the repository (a new key set is a
    /// new `rule`).
    async fn verdict(&self, rule: &str, digest: &Digest) -> Option<VerdictEntry>;
    async fn set_verdict(&self, rule: &str, digest: &Digest, entry: VerdictEntry);
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

        verdicts(c).await;
        qualified_repos(c).await;
        values_round_trip(c).await;
        concurrent_use(c).await;
    }

    /// Verdicts are kept per rule: another rule (key set) has none of them.
    async fn verdicts(c: &dyn DescriptorCache) {
        let d = Digest::sha256_of(b"signed");
        assert_eq!(c.verdict("r1", &d).await, None);
        let v = VerdictEntry {
            key: "SHA256:ab".into(),
            via: Some(Digest::sha256_of(b"index")),
        };
        c.set_verdict("r1", &d, v.clone()).await;
        assert_eq!(c.verdict("r1", &d).await, Some(v));
        assert_eq!(c.verdict("r2", &d).await, None);
        let own = VerdictEntry {
            key: "SHA256:cd".into(),
            via: None,
        };
        c.set_verdict("r2", &d, own.clone()).await;
        assert_eq!(c.verdict("r2", &d).await, Some(own));
    }

    /// Repository keys are upstream-qualified (`docker.io/library/alpine`, `localhost:5000/x`):
    /// kept apart exactly, whatever `/` and `:` they hold.
    async fn qualified_repos(c: &dyn DescriptorCache) {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000);
        let entry = |s: &str| TagEntry {
            digest: Digest::sha256_of(s.as_bytes()),
            checked_at: at,
        };
        let repos = [
            "docker.io/library/alpine",
            "docker.io/library/alpine/sub",
            "docker.io/library",
            "localhost:5000/team/app",
            "localhost:5001/team/app",
        ];
        for r in repos {
            c.set_tag(r, "3.20", entry(r)).await;
        }
        for r in repos {
            assert_eq!(c.tag(r, "3.20").await, Some(entry(r)), "{r}");
            assert_eq!(c.tag(r, "3.2").await, None, "{r}");
        }
        assert_eq!(c.tag("docker.io/library/alpine:3.20", "latest").await, None);
    }

    /// What callers put in comes back: a tag's confirmation time to the millisecond, any size.
    async fn values_round_trip(c: &dyn DescriptorCache) {
        let now = SystemTime::now();
        c.set_tag(
            "precision",
            "now",
            TagEntry {
                digest: Digest::sha256_of(b"now"),
                checked_at: now,
            },
        )
        .await;
        let got = c
            .tag("precision", "now")
            .await
            .expect("just set")
            .checked_at;
        let lost = now.duration_since(got).expect("not later than set");
        assert!(lost < Duration::from_millis(1), "{lost:?} lost");

        for (i, size) in [0, 5 << 30, u64::MAX].into_iter().enumerate() {
            let d = Digest::sha256_of(&i.to_be_bytes());
            let m = ManifestEntry {
                media_type: "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
                size,
            };
            c.set_manifest(&d, m.clone()).await;
            assert_eq!(c.manifest(&d).await, Some(m));
        }
        let d = Digest::sha256_of(b"replaced");
        for size in [1, 2] {
            let m = ManifestEntry {
                media_type: format!("application/x-{size}"),
                size,
            };
            c.set_manifest(&d, m.clone()).await;
            assert_eq!(c.manifest(&d).await, Some(m));
        }
    }

    /// Many requests use one cache at once.
    async fn concurrent_use(c: &dyn DescriptorCache) {
        let entry = |i: u32| ManifestEntry {
            media_type: format!("application/x-{i}"),
            size: i.into(),
        };
        let digests: Vec<Digest> = (0..64u32)
            .map(|i| Digest::sha256_of(format!("concurrent {i}").as_bytes()))
            .collect();
        futures_util::future::join_all(
            (0..64).map(|i| c.set_manifest(&digests[i], entry(i as u32))),
        )
        .await;
        let got = futures_util::future::join_all(digests.iter().map(|d| c.manifest(d))).await;
        for (i, got) in (0..64).zip(got) {
            assert_eq!(got, Some(entry(i)), "{i}");
        }
    }
}
