//! Expiry passes over a storage laid out as the registry writes it, with the pass's clock set
//! by the test (memory storage stamps objects with the real time, so "now" is moved ahead).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::cache::lease::LocalLeases;
use crate::oci::{RepoName, Tag};
use crate::storage::MemoryStorage;

const DAY: Duration = Duration::from_secs(86_400);

struct Image {
    manifest: Digest,
    layers: Vec<Digest>,
}

/// Store an image as a pull through the registry leaves it: blobs, manifest, links, tag.
async fn store_image(s: &dyn Storage, repo: &str, tag: &str, layers: &[&[u8]]) -> Image {
    let name = RepoName::parse(repo).unwrap();
    let mut descs = Vec::new();
    let mut digests = Vec::new();
    for l in layers {
        let d = Digest::sha256_of(l);
        s.put(&layout::blob_data(&d), Bytes::copy_from_slice(l))
            .await
            .unwrap();
        s.put(&layout::layer_link(&name, &d), Bytes::from(d.to_string()))
            .await
            .unwrap();
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(),
            "size": l.len(),
        }));
        digests.push(d);
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descs[0],
        "layers": descs[1..],
    }))
    .unwrap();
    let m = Digest::sha256_of(&body);
    s.put(&layout::blob_data(&m), Bytes::from(body))
        .await
        .unwrap();
    let t = Tag::parse(tag).unwrap();
    for key in [
        layout::revision_link(&name, &m),
        layout::tag_current(&name, &t),
        layout::tag_index(&name, &t, &m),
    ] {
        s.put(&key, Bytes::from(m.to_string())).await.unwrap();
    }
    Image {
        manifest: m,
        layers: digests,
    }
}

async fn record_pull(s: &dyn Storage, d: &Digest, at: SystemTime) {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    s.put(&layout::access_marker(d), Bytes::from(secs.to_string()))
        .await
        .unwrap();
}

async fn exists(s: &dyn Storage, key: &str) -> bool {
    s.stat(key).await.unwrap().is_some()
}

fn collector(s: &Arc<MemoryStorage>, now: SystemTime, policy: ExpiryPolicy) -> Collector {
    Collector::new(s.clone(), Arc::new(LocalLeases), policy)
        .with_clock(Arc::new(move || now))
        .with_settle_time(Duration::ZERO)
}

fn by_age(days: u32) -> ExpiryPolicy {
    ExpiryPolicy {
        max_age: Some(DAY * days),
        ..ExpiryPolicy::default()
    }
}

#[tokio::test]
async fn a_pass_removes_expired_images_and_their_links_and_nothing_shared() {
    let s = Arc::new(MemoryStorage::new());
    let old = store_image(
        s.as_ref(),
        "library/old",
        "1",
        &[b"cfg-old", b"base", b"old-layer"],
    )
    .await;
    let new = store_image(
        s.as_ref(),
        "library/new",
        "1",
        &[b"cfg-new", b"base", b"new-layer"],
    )
    .await;
    let now = SystemTime::now() + 40 * DAY;
    // `new` was pulled yesterday (its manifest only: the client had the layers).
    record_pull(s.as_ref(), &new.manifest, now - DAY).await;

    let report = collector(&s, now, by_age(30)).pass(false).await.unwrap();
    assert_eq!(report.removed_manifests, 1);
    // The old manifest, its config and its own layer; not the shared base.
    assert_eq!(report.removed_blobs, 3, "{report:?}");
    assert_eq!(report.removed_by_age, 3);
    assert_eq!(report.errors, 0);
    let old_repo = RepoName::parse("library/old").unwrap();
    let t1 = Tag::parse("1").unwrap();
    assert!(!exists(s.as_ref(), &layout::blob_data(&old.manifest)).await);
    assert!(!exists(s.as_ref(), &layout::blob_data(&old.layers[2])).await);
    assert!(!exists(s.as_ref(), &layout::tag_current(&old_repo, &t1)).await);
    assert!(!exists(s.as_ref(), &layout::revision_link(&old_repo, &old.manifest)).await);
    assert!(!exists(s.as_ref(), &layout::layer_link(&old_repo, &old.layers[2])).await);
    for d in std::iter::once(&new.manifest).chain(&new.layers) {
        assert!(exists(s.as_ref(), &layout::blob_data(d)).await, "{d} kept");
    }
    assert!(exists(s.as_ref(), layout::LAST_EXPIRY_PASS).await);

    // Nothing more to do.
    let again = collector(&s, now, by_age(30)).pass(false).await.unwrap();
    assert_eq!(again.removed_blobs, 0);
    assert_eq!(again.blobs, 4);
}

#[tokio::test]
async fn a_dry_run_reports_and_deletes_nothing() {
    let s = Arc::new(MemoryStorage::new());
    let img = store_image(s.as_ref(), "a", "1", &[b"c", b"l"]).await;
    let now = SystemTime::now() + 40 * DAY;
    let report = collector(&s, now, by_age(30)).pass(true).await.unwrap();
    assert!(report.dry_run);
    assert_eq!(report.removed_blobs, 3);
    assert!(report.removed.contains(&img.manifest.to_string()));
    assert!(exists(s.as_ref(), &layout::blob_data(&img.manifest)).await);
    assert!(!exists(s.as_ref(), layout::LAST_EXPIRY_PASS).await);
}

#[tokio::test]
async fn a_pull_between_the_choice_and_the_deletion_spares_the_image() {
    let s = Arc::new(MemoryStorage::new());
    let img = store_image(s.as_ref(), "a", "1", &[b"c", b"l1", b"l2"]).await;
    let loose = Digest::sha256_of(b"loose");
    s.put(&layout::blob_data(&loose), Bytes::from_static(b"loose"))
        .await
        .unwrap();
    let now = SystemTime::now() + 40 * DAY;
    let c = collector(&s, now, by_age(30)).with_settle_time(Duration::from_millis(300));
    let s2 = s.clone();
    let m = img.manifest.clone();
    // Another replica serves the manifest while the pass settles.
    let puller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        record_pull(s2.as_ref(), &m, now).await;
    });
    let report = c.pass(false).await.unwrap();
    puller.await.unwrap();
    assert_eq!(report.spared, 4, "{report:?}");
    assert_eq!(report.removed_blobs, 1);
    for d in std::iter::once(&img.manifest).chain(&img.layers) {
        assert!(exists(s.as_ref(), &layout::blob_data(d)).await, "{d} kept");
    }
    assert!(!exists(s.as_ref(), &layout::blob_data(&loose)).await);
}

#[tokio::test]
async fn pulls_noted_in_this_process_are_spared_before_their_records_are_written() {
    let s = Arc::new(MemoryStorage::new());
    let img = store_image(s.as_ref(), "a", "1", &[b"c", b"l"]).await;
    let now = SystemTime::now() + 40 * DAY;
    let log = AccessLog::new(s.clone(), &by_age(30));
    // A stream in progress: held, so its record cannot be older than the hold.
    let _hold = log.hold(&img.layers[1]);
    let report = collector(&s, now, by_age(30))
        .with_access_log(log)
        .pass(false)
        .await
        .unwrap();
    // The manifest and config go; the layer being streamed stays.
    assert_eq!(report.removed_blobs, 2, "{report:?}");
    assert!(exists(s.as_ref(), &layout::blob_data(&img.layers[1])).await);
}

#[tokio::test]
async fn a_size_cap_evicts_the_least_recently_pulled() {
    let s = Arc::new(MemoryStorage::new());
    let a = store_image(s.as_ref(), "a", "1", &[b"ca", &[1u8; 1000]]).await;
    let b = store_image(s.as_ref(), "b", "1", &[b"cb", &[2u8; 1000]]).await;
    let now = SystemTime::now() + 40 * DAY;
    record_pull(s.as_ref(), &a.manifest, now - 2 * DAY).await;
    record_pull(s.as_ref(), &b.manifest, now - DAY).await;
    let policy = ExpiryPolicy {
        max_size: Some(1500),
        ..ExpiryPolicy::default()
    };
    let report = collector(&s, now, policy).pass(false).await.unwrap();
    assert_eq!(report.removed_by_size, 3, "{report:?}");
    assert!(report.kept_bytes <= 1500);
    assert!(!exists(s.as_ref(), &layout::blob_data(&a.manifest)).await);
    assert!(exists(s.as_ref(), &layout::blob_data(&b.layers[1])).await);
}

#[tokio::test]
async fn orphaned_records_are_removed() {
    let s = Arc::new(MemoryStorage::new());
    let gone = Digest::sha256_of(b"gone");
    record_pull(s.as_ref(), &gone, SystemTime::now()).await;
    let report = collector(&s, SystemTime::now(), by_age(30))
        .pass(false)
        .await
        .unwrap();
    assert_eq!(report.removed_records, 1);
    assert!(!exists(s.as_ref(), &layout::access_marker(&gone)).await);
}

struct Taken;

#[async_trait]
impl Leases for Taken {
    async fn try_acquire(&self, _: &str, _: Duration, _: Option<&str>) -> LeaseOutcome {
        LeaseOutcome::HeldElsewhere(String::new())
    }
    async fn renew(&self, _: &str, _: &str, _: Duration) -> bool {
        false
    }
    async fn release(&self, _: &str, _: &str) {}
}

#[tokio::test]
async fn one_pass_at_a_time_across_the_fleet() {
    let s = Arc::new(MemoryStorage::new());
    let img = store_image(s.as_ref(), "a", "1", &[b"c", b"l"]).await;
    let c = Collector::new(s.clone(), Arc::new(Taken), by_age(30))
        .with_clock(Arc::new(|| SystemTime::now() + 40 * DAY));
    assert!(matches!(c.pass(false).await, Err(PassError::Busy)));
    assert!(exists(s.as_ref(), &layout::blob_data(&img.manifest)).await);
    // A dry run needs no lease.
    assert_eq!(c.pass(true).await.unwrap().removed_blobs, 3);
}

#[tokio::test]
async fn a_pass_is_due_once_per_interval_for_the_fleet() {
    let s = Arc::new(MemoryStorage::new());
    let now = SystemTime::now();
    let c = collector(&s, now, by_age(30));
    assert!(c.due(Duration::from_secs(3600)).await, "never ran");
    c.pass(false).await.unwrap();
    assert!(!c.due(Duration::from_secs(3600)).await, "just ran");
    let later = collector(&s, now + Duration::from_secs(3601), by_age(30));
    assert!(later.due(Duration::from_secs(3600)).await);
}
