//! Storage down under the registry, behind the real breaker: misses pass through from the
//! scripted upstream uncommitted (one fetch for concurrent clients), tags resolve from the cache
//! and memory, nothing waits on the store once the read circuit is open, and the next miss after
//! the store is back is committed. Also a store that only refuses writes; tag lists, the
//! catalog and referrers with storage down; a manifest passed through stored once the store is
//! back; and coalesced callers sharing one error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::rules_tests::{
    Fake, Fault, concurrent_reads, get_range, latest, name, pull, read_all, registry_on,
};
use super::*;
use crate::layout;
use crate::storage::breaker::{Breaker, BreakerPolicy};
use crate::storage::faulty::Faulty;
use crate::upstream::{BlobResponse, FetchedManifest, ManifestHead, TagsResponse, Upstream};

struct Rig {
    registry: Arc<Registry>,
    store: Faulty,
    breaker: Arc<Breaker>,
    fake: Arc<Fake>,
    _spool: tempfile::TempDir,
}

fn rig(size: usize, offline: bool, open_for: Duration) -> Rig {
    let fake = Fake::new(size);
    rig_with(fake.clone(), fake, offline, open_for)
}

/// A rig whose registry asks `upstream` (which serves what `fake` does).
fn rig_with(
    fake: Arc<Fake>,
    upstream: Arc<dyn Upstream>,
    offline: bool,
    open_for: Duration,
) -> Rig {
    let spool = tempfile::tempdir().unwrap();
    let store = Faulty::default();
    let breaker = Arc::new(Breaker::new(
        Arc::new(store.clone()),
        &BreakerPolicy {
            failures: 2,
            open_for,
            timeout: Duration::from_secs(3600),
        },
    ));
    let registry = Arc::new(registry_on(
        breaker.clone(),
        1000,
        upstream,
        Duration::from_secs(300),
        offline,
        spool.path(),
    ));
    Rig {
        registry,
        store,
        breaker,
        fake,
        _spool: spool,
    }
}

impl Rig {
    /// Take the store down and let requests open the read circuit.
    async fn down(&self) {
        self.store.set_down(true);
        while !self.breaker.reads_refused() {
            let _ = self.registry.manifest(&name(), &latest()).await;
        }
    }

    async fn blob_stored(&self) -> bool {
        let key = layout::blob_data(&self.fake.blob_digest);
        self.store.inner.stat(&key).await.unwrap().is_some()
    }
}

#[tokio::test]
async fn a_miss_passes_through_once_for_concurrent_clients_and_nothing_waits_on_the_store() {
    let r = rig(2 * 1024 * 1024, false, Duration::from_secs(3600));
    r.down().await;
    let calls = r.store.calls.load(Ordering::SeqCst);
    concurrent_reads(std::slice::from_ref(&r.registry), &r.fake, 8).await;
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 1);
    // A range, and a HEAD, also from the upstream.
    let d = r.fake.blob_digest.clone();
    let reply = get_range(&r.registry, &d, 10, 19).await;
    assert_eq!(read_all(reply).await.unwrap(), &r.fake.blob[10..20]);
    let head = r.registry.blob(&name(), &d, None, true).await.unwrap();
    assert_eq!(head.size, r.fake.blob.len() as u64);
    // The tag, fetched while the circuit opened, resolves from the cache and memory.
    r.registry.manifest(&name(), &latest()).await.unwrap();
    r.registry.wait_for_fills().await;
    assert_eq!(
        r.store.calls.load(Ordering::SeqCst),
        calls,
        "a request waited on the store with the read circuit open"
    );
    assert!(!r.blob_stored().await);
}

#[tokio::test]
async fn tags_resolve_from_the_cache_and_memory_while_storage_is_down() {
    let r = rig(1024, false, Duration::from_secs(3600));
    let m = r.registry.manifest(&name(), &latest()).await.unwrap();
    r.store.set_down(true);
    let (gets, heads) = (
        r.fake.manifest_gets.load(Ordering::SeqCst),
        r.fake.manifest_heads.load(Ordering::SeqCst),
    );
    for _ in 0..4 {
        let again = r.registry.manifest(&name(), &latest()).await.unwrap();
        assert_eq!(again.digest, m.digest);
    }
    assert_eq!(
        (
            r.fake.manifest_gets.load(Ordering::SeqCst),
            r.fake.manifest_heads.load(Ordering::SeqCst)
        ),
        (gets, heads),
        "a fresh cached tag asked the upstream"
    );
}

#[tokio::test]
async fn offline_or_an_unavailable_upstream_with_storage_down_names_both() {
    for offline in [true, false] {
        let r = rig(1024, offline, Duration::from_secs(3600));
        if !offline {
            r.fake.set(Fault::Down);
        }
        r.store.set_down(true);
        let d = r.fake.blob_digest.clone();
        let errors = [
            r.registry
                .blob(&name(), &d, None, false)
                .await
                .err()
                .unwrap(),
            r.registry.manifest(&name(), &latest()).await.err().unwrap(),
            r.registry
                .manifest(&name(), &Reference::Digest(d.clone()))
                .await
                .err()
                .unwrap(),
        ];
        for e in errors {
            assert!(
                matches!(e, RegistryError::StorageAndUpstreamDown(_)),
                "offline {offline}: {e:?}"
            );
            let api = crate::error::ApiError::from(e);
            assert_eq!(api.status, 503);
            assert!(
                api.message.contains("storage is unavailable"),
                "{}",
                api.message
            );
            let other = if offline { "offline" } else { "upstream" };
            assert!(api.message.contains(other), "{}", api.message);
        }
    }
}

#[tokio::test]
async fn the_next_miss_after_the_store_is_back_is_committed() {
    let r = rig(256 * 1024, false, Duration::from_millis(50));
    r.down().await;
    let d = r.fake.blob_digest.clone();
    assert_eq!(pull(&r.registry, &name(), &d).await, r.fake.blob);
    r.registry.wait_for_fills().await;
    assert!(!r.blob_stored().await);
    r.store.set_down(false);
    tokio::time::sleep(Duration::from_millis(60)).await;
    // The probe rides on this request; it closes the circuit and the fill commits.
    assert_eq!(pull(&r.registry, &name(), &d).await, r.fake.blob);
    r.registry.wait_for_fills().await;
    assert!(!r.breaker.reads_refused());
    assert!(
        r.blob_stored().await,
        "the miss after recovery was not committed"
    );
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 2);
    // And served from storage from now on.
    assert_eq!(pull(&r.registry, &name(), &d).await, r.fake.blob);
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refused_writes_serve_what_is_stored_and_pass_new_content_through() {
    let r = rig(64 * 1024, false, Duration::from_secs(3600));
    r.registry.manifest(&name(), &latest()).await.unwrap();
    r.store.writes_fail.store(true, Ordering::SeqCst);
    let d = r.fake.blob_digest.clone();
    for _ in 0..4 {
        assert_eq!(pull(&r.registry, &name(), &d).await, r.fake.blob);
        r.registry.wait_for_fills().await;
    }
    assert_eq!(
        r.breaker.writes(),
        crate::storage::breaker::CircuitState::Open
    );
    assert!(
        !r.breaker.reads_refused(),
        "failing writes opened the read circuit"
    );
    assert!(!r.blob_stored().await);
    // The manifest stored before is still read from storage, not fetched again.
    let gets = r.fake.manifest_gets.load(Ordering::SeqCst);
    let by_digest = Reference::Digest(
        r.registry
            .manifest(&name(), &latest())
            .await
            .unwrap()
            .digest,
    );
    r.registry.manifest(&name(), &by_digest).await.unwrap();
    assert_eq!(r.fake.manifest_gets.load(Ordering::SeqCst), gets);
}

/// An upstream with the referrers API (the scripted one has none): each fetch counted and slow
/// enough that concurrent requests overlap, down on demand; the rest is the scripted upstream.
struct Referring {
    fake: Arc<Fake>,
    index: Bytes,
    fetches: AtomicUsize,
    down: AtomicBool,
}

impl Referring {
    fn new(fake: Arc<Fake>) -> Arc<Self> {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::manifest::OCI_INDEX,
            "manifests": [
                {"mediaType": crate::oci::manifest::OCI_MANIFEST, "size": 1, "artifactType": "sig",
                 "digest": Digest::sha256_of(b"sig").to_string()},
                {"mediaType": crate::oci::manifest::OCI_MANIFEST, "size": 1, "artifactType": "sbom",
                 "digest": Digest::sha256_of(b"sbom").to_string()},
            ],
        });
        Arc::new(Referring {
            fake,
            index: Bytes::from(serde_json::to_vec(&index).unwrap()),
            fetches: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl Upstream for Referring {
    fn canonical_name(&self, name: &RepoName) -> RepoName {
        self.fake.canonical_name(name)
    }
    fn own_name(&self, name: &RepoName) -> RepoName {
        self.fake.own_name(name)
    }
    fn blob_bounds(&self, name: &RepoName) -> crate::upstream::bounds::BlobBounds {
        self.fake.blob_bounds(name)
    }
    async fn head_manifest(
        &self,
        n: &RepoName,
        r: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        self.fake.head_manifest(n, r).await
    }
    async fn get_manifest(
        &self,
        n: &RepoName,
        r: &Reference,
    ) -> Result<FetchedManifest, UpstreamError> {
        self.fake.get_manifest(n, r).await
    }
    async fn head_blob(&self, n: &RepoName, d: &Digest) -> Result<u64, UpstreamError> {
        self.fake.head_blob(n, d).await
    }
    async fn get_blob(
        &self,
        n: &RepoName,
        d: &Digest,
        from: u64,
    ) -> Result<BlobResponse, UpstreamError> {
        self.fake.get_blob(n, d, from).await
    }
    async fn tags(
        &self,
        n: &RepoName,
        count: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagsResponse, UpstreamError> {
        self.fake.tags(n, count, last).await
    }
    async fn referrers(&self, _: &RepoName, _: &Digest) -> Result<Bytes, UpstreamError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(UpstreamError::Unavailable("down".into()));
        }
        Ok(self.index.clone())
    }
}

/// The error's status and OCI code, as a client sees it.
fn seen(e: RegistryError) -> (u16, &'static str, String) {
    let api = crate::error::ApiError::from(e);
    (api.status.as_u16(), api.code.as_str(), api.message)
}

fn assert_names_both(e: RegistryError, other: &str) {
    assert!(
        matches!(e, RegistryError::StorageAndUpstreamDown(_)),
        "{e:?}"
    );
    let (status, code, message) = seen(e);
    assert_eq!((status, code), (503, "UNAVAILABLE"));
    assert!(message.contains("storage is unavailable"), "{message}");
    assert!(message.contains(other), "{message}");
}

#[tokio::test]
async fn tag_lists_pass_through_while_storage_is_down_and_name_both_causes_when_they_cannot() {
    let r = rig(1024, false, Duration::from_secs(3600));
    r.down().await;
    let calls = r.store.calls.load(Ordering::SeqCst);
    let page = r.registry.tags(&name(), None, None).await.unwrap();
    assert_eq!(page.list.tags, ["latest"]);
    // The upstream unreachable too: both named, at once (the open circuit is not waited on).
    r.fake.set(Fault::Down);
    assert_names_both(
        r.registry.tags(&name(), None, None).await.err().unwrap(),
        "upstream is unavailable",
    );
    // Any other answer of the upstream is its own to report, as when storage works.
    r.fake.set(Fault::RateLimited);
    let e = r.registry.tags(&name(), Some(1), None).await.err().unwrap();
    assert_eq!(seen(e).0, 429);
    // The catalog lists what storage holds: unavailable until it is back.
    let e = r.registry.catalog(None, None).await.err().unwrap();
    assert_eq!(seen(e).0, 503);
    assert_eq!(
        r.store.calls.load(Ordering::SeqCst),
        calls,
        "a request waited on the store with the read circuit open"
    );

    let offline = rig(1024, true, Duration::from_secs(3600));
    offline.store.set_down(true);
    assert_names_both(
        offline
            .registry
            .tags(&name(), None, None)
            .await
            .err()
            .unwrap(),
        "offline",
    );
}

#[tokio::test]
async fn referrers_pass_through_while_storage_is_down_once_for_concurrent_clients() {
    let fake = Fake::new(1024);
    let up = Referring::new(fake.clone());
    let r = rig_with(fake, up.clone(), false, Duration::from_secs(3600));
    r.down().await;
    let calls = r.store.calls.load(Ordering::SeqCst);
    let subject = r.fake.manifest_digest.clone();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (reg, d) = (r.registry.clone(), subject.clone());
            tokio::spawn(async move { reg.referrers(&name(), &d, None).await })
        })
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap(), up.index);
    }
    assert_eq!(up.fetches.load(Ordering::SeqCst), 1, "one fetch for all");
    let sigs = r
        .registry
        .referrers(&name(), &subject, Some("sig"))
        .await
        .unwrap();
    let sigs: serde_json::Value = serde_json::from_slice(&sigs).unwrap();
    assert_eq!(sigs["manifests"].as_array().unwrap().len(), 1);
    up.down.store(true, Ordering::SeqCst);
    assert_names_both(
        r.registry
            .referrers(&name(), &subject, None)
            .await
            .err()
            .unwrap(),
        "upstream is unavailable",
    );
    assert_eq!(
        r.store.calls.load(Ordering::SeqCst),
        calls,
        "a request waited on the store with the read circuit open"
    );
    let key = layout::referrers(&repo_of(&r), &subject);
    assert!(r.store.inner.stat(&key).await.unwrap().is_none());

    // Offline, nothing stored can be told from a store that cannot be read.
    let offline = rig(1024, true, Duration::from_secs(3600));
    offline.store.set_down(true);
    assert_names_both(
        offline
            .registry
            .referrers(&name(), &subject, None)
            .await
            .err()
            .unwrap(),
        "offline",
    );
}

fn repo_of(r: &Rig) -> RepoName {
    r.registry.upstream.canonical_name(&name())
}

#[tokio::test]
async fn a_manifest_passed_through_is_stored_by_the_first_pull_once_the_store_is_back() {
    let r = rig(1024, false, Duration::from_millis(50));
    // Its tag is first asked for while the store is down: passed through, stored nowhere.
    r.down().await;
    let m = r.registry.manifest(&name(), &latest()).await.unwrap();
    let (data, revision) = (
        layout::blob_data(&m.digest),
        layout::revision_link(&repo_of(&r), &m.digest),
    );
    assert!(r.store.inner.stat(&data).await.unwrap().is_none());
    // Back; any storage read after `open_for` is the probe that closes the circuit.
    r.store.set_down(false);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let d = r.fake.blob_digest.clone();
    read_all(r.registry.blob(&name(), &d, None, false).await.unwrap())
        .await
        .unwrap();
    assert!(!r.breaker.reads_refused());
    let gets = r.fake.manifest_gets.load(Ordering::SeqCst);
    // The tag is still fresh and resolves from memory, and the pull stores what it serves.
    let again = r.registry.manifest(&name(), &latest()).await.unwrap();
    assert_eq!(again.body, m.body);
    assert_eq!(r.store.inner.read(&data).await.unwrap(), m.body);
    assert!(r.store.inner.stat(&revision).await.unwrap().is_some());
    assert_eq!(
        r.fake.manifest_gets.load(Ordering::SeqCst),
        gets,
        "stored from memory, not fetched again"
    );
    // Served by digest from storage from now on.
    r.registry
        .manifest(&name(), &Reference::Digest(m.digest.clone()))
        .await
        .unwrap();
    assert_eq!(r.fake.manifest_gets.load(Ordering::SeqCst), gets);
}

#[tokio::test]
async fn a_manifest_whose_storing_fails_is_stored_by_a_later_pull() {
    let r = rig(1024, false, Duration::from_millis(50));
    r.store.writes_fail.store(true, Ordering::SeqCst);
    let m = r.registry.manifest(&name(), &latest()).await.unwrap();
    let data = layout::blob_data(&m.digest);
    assert!(r.store.inner.stat(&data).await.unwrap().is_none());
    r.registry.manifest(&name(), &latest()).await.unwrap();
    assert!(r.store.inner.stat(&data).await.unwrap().is_none());
    assert!(!r.breaker.reads_refused(), "only writes fail");
    r.store.writes_fail.store(false, Ordering::SeqCst);
    // After the write circuit's `open_for`, the write is its probe.
    tokio::time::sleep(Duration::from_millis(60)).await;
    r.registry.manifest(&name(), &latest()).await.unwrap();
    assert_eq!(r.store.inner.read(&data).await.unwrap(), m.body);
    assert_eq!(r.fake.manifest_gets.load(Ordering::SeqCst), 1);
}

/// Coalesced callers share one error; each gets its own copy of the same kind, so every one of
/// them answers with the status the caller that ran the work answers with (an S3 outage is a
/// 503 for all, not a 503 for one and 500s for the joiners).
#[test]
fn a_shared_error_keeps_its_status_for_every_caller() {
    use crate::storage::StorageError;
    let errors = || {
        vec![
            RegistryError::Storage(StorageError::Io {
                key: "k".into(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
            }),
            RegistryError::Storage(StorageError::Unavailable("circuit open".into())),
            RegistryError::Storage(StorageError::NotFound("k".into())),
            RegistryError::Storage(StorageError::InvalidKey("../k".into())),
            RegistryError::StorageAndUpstreamDown("the mirror is offline".into()),
            RegistryError::Upstream(UpstreamError::Unavailable("refused".into())),
            RegistryError::Upstream(UpstreamError::RateLimited {
                retry_after: Some("7".into()),
            }),
            RegistryError::BlobUnknown,
            RegistryError::ManifestUnknown("m".into()),
            RegistryError::NameUnknown,
            RegistryError::ManifestInvalid("m".into()),
            RegistryError::Range(crate::oci::RangeError::Multiple),
            RegistryError::Internal("i".into()),
            RegistryError::Unverified(crate::verify::Refusal::NoSignature { digest: "d".into() }),
        ]
    };
    for (original, shared) in errors().into_iter().zip(errors()) {
        let shared = Arc::new(shared);
        let _first_caller = shared.clone();
        let joiner = unshare(shared);
        assert_eq!(seen(joiner), seen(original));
    }
}
