//! Living within the upstream's limits: after a 429 the mirror leaves the upstream alone for
//! manifest requests until `Retry-After` has passed, serving cached tags meanwhile; quota headers
//! become metrics; and no more than `max_concurrent_requests` requests are in flight upstream.
//! The upstream is the shared fake (`common::upstream`), since a real registry cannot be made to
//! rate-limit.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

/// Six small blobs the fake serves, by digest.
fn blobs() -> Vec<Bytes> {
    (0..6u8)
        .map(|i| Bytes::from(vec![i; 1000 + i as usize]))
        .collect()
}

/// A fake serving `team/app:v1` and `:v2` (one manifest over [`blobs`]) with Docker Hub's quota
/// headers, and blob bodies held back 400 ms so that requests overlap.
async fn start_fake() -> (FakeUpstream, Vec<u8>) {
    let f = FakeUpstream::start().await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(&blobs()[0]), "size": blobs()[0].len()},
        "layers": blobs()[1..].iter().map(|b| serde_json::json!({
            "mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(b), "size": b.len()
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    for b in blobs() {
        f.add_blob(b);
    }
    for tag in ["v1", "v2"] {
        f.add_manifest("team/app", tag, OCI_MANIFEST, &manifest);
    }
    f.on(Route::Manifest)
        .header("ratelimit-limit", "100;w=21600")
        .header("ratelimit-remaining", "99;w=21600");
    f.on(Route::Blob).body_delay(Duration::from_millis(400));
    (f, manifest)
}

/// From now on, manifests answer 429 (`Retry-After: 3`, quota exhausted) until the rule is
/// removed.
fn limit(f: &FakeUpstream) -> Rule<'_> {
    f.on(Route::Manifest)
        .reply(429, "TOOMANYREQUESTS")
        .header("retry-after", "3")
        .header("ratelimit-remaining", "0;w=21600")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_429_manifests_are_left_alone_until_retry_after_and_cached_tags_stay_served() {
    let (fake, manifest) = start_fake().await;
    let m = Mirror::start(MirrorOpts::upstream(&fake.url()).tag_ttl("0s")).await;
    let get = |tag: &str| m.get_manifest("team/app", tag).send();

    let r = get("v1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        m.metric("ocimirror_upstream_ratelimit_limit", &[]).await,
        100.0
    );
    assert_eq!(
        m.metric("ocimirror_upstream_ratelimit_remaining", &[])
            .await,
        99.0
    );

    let limited = limit(&fake);
    // The revalidation meets the 429: the cached tag is served.
    let r = get("v1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest);
    let asked = fake.count_route(Route::Manifest, "");
    assert_eq!(
        m.metric("ocimirror_upstream_ratelimit_remaining", &[])
            .await,
        0.0
    );

    // During the cooldown: cached tags are served, uncached ones are refused with Retry-After,
    // and the upstream hears nothing.
    for _ in 0..5 {
        let r = get("v1").await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = get("v2").await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&wait), "retry-after {wait}");
    assert_eq!(fake.count_route(Route::Manifest, ""), asked);
    assert!(m.metric("ocimirror_upstream_cooldowns_total", &[]).await >= 1.0);
    assert!(
        m.metric(
            "ocimirror_upstream_requests_total",
            &["status=\"cooldown\""]
        )
        .await
            >= 6.0
    );

    // Blobs are not counted by the upstream's limit: they are still fetched.
    let layer = sha256_digest(&blobs()[1]);
    let r = m.get_blob("team/app", &layer).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), blobs()[1]);

    // Once Retry-After has passed, the upstream is asked again.
    limited.remove();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.count_route(Route::Manifest, "") == asked {
        assert!(
            Instant::now() < deadline,
            "never asked again:\n{}",
            m.log_text()
        );
        let _ = get("v1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(get("v2").await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requests_in_flight_are_capped() {
    let (fake, _) = start_fake().await;
    // No slots kept for manifests: blob downloads may take both.
    let m = Mirror::start(
        MirrorOpts::upstream(&fake.url())
            .up("max_concurrent_requests", "2")
            .up("manifest_slots", "0"),
    )
    .await;
    assert_eq!(
        m.get_manifest("team/app", "v1")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let gets = blobs().into_iter().map(|b| {
        let req = m.get_blob("team/app", &sha256_digest(&b)).send();
        async move {
            let r = req.await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.bytes().await.unwrap(), b);
        }
    });
    futures_util::future::join_all(gets).await;
    let max = fake.max_in_flight(Route::Blob);
    assert_eq!(
        max, 2,
        "at most 2 blob requests at once, and the cap was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_their_rate_get_429_with_retry_after_and_others_are_unaffected() {
    let m = Mirror::start(
        MirrorOpts::upstream(&closed_url())
            .extra("limits:\n  requests_per_second: 1\n  burst: 3\n  real_ip_header: x-real-ip\n  trusted_proxies: [127.0.0.1]\n"),
    )
    .await;
    let get = |ip: &'static str| m.get("/v2/").header("x-real-ip", ip).send();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get("192.0.2.1").await.unwrap());
    }
    let ok = statuses.iter().filter(|r| r.status() == 200).count();
    assert!(
        (3..=5).contains(&ok),
        "{ok} of 8 allowed with burst 3 at 1/s"
    );
    let limited = statuses
        .into_iter()
        .find(|r| r.status() == 429)
        .expect("a 429");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    expect_oci_error(limited, 429, &["TOOMANYREQUESTS"]).await;
    // Another client has its own bucket; health checks are never limited.
    assert_eq!(get("192.0.2.2").await.unwrap().status(), 200);
    for _ in 0..5 {
        assert_eq!(m.get("/healthz").send().await.unwrap().status(), 200);
    }
    assert!(m.metric("ocimirror_client_rate_limited_total", &[]).await >= 3.0);
}
