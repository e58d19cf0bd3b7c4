//! Storage down under the registry, behind the real breaker: misses pass through from the
//! scripted upstream uncommitted (one fetch for concurrent clients), tags resolve from the cache
//! and memory, nothing waits on the store once the read circuit is open, and the next miss after
//! the store is back is committed. Also a store that only refuses writes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::rules_tests::{
    Fake, Fault, concurrent_reads, get_range, latest, name, pull, read_all, registry_on,
};
use super::*;
use crate::layout;
use crate::storage::breaker::{Breaker, BreakerPolicy};
use crate::storage::faulty::Faulty;

struct Rig {
    registry: Arc<Registry>,
    store: Faulty,
    breaker: Arc<Breaker>,
    fake: Arc<Fake>,
    _spool: tempfile::TempDir,
}

fn rig(size: usize, offline: bool, open_for: Duration) -> Rig {
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
    let fake = Fake::new(size);
    let registry = Arc::new(registry_on(
        breaker.clone(),
        1000,
        fake.clone(),
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
