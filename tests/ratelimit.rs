//! Living within the upstream's limits: after a 429 the mirror leaves the upstream alone for
//! manifest requests until `Retry-After` has passed, serving cached tags meanwhile; quota headers
//! become metrics; and no more than `max_concurrent_requests` requests are in flight upstream.
//! The upstream is an in-process fake, since a real registry cannot be made to rate-limit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::*;

#[derive(Default)]
struct Fake {
    limited: AtomicBool,
    manifest_requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    manifest: Vec<u8>,
}

/// Decrements the in-flight count when the response body is done.
struct Flight(Arc<Fake>);

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(State(f): State<Arc<Fake>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/v2/" {
        return StatusCode::OK.into_response();
    }
    if path.contains("/manifests/") {
        f.manifest_requests.fetch_add(1, Ordering::SeqCst);
        if f.limited.load(Ordering::SeqCst) {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
            )
                .into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("3"));
            r.headers_mut()
                .insert("ratelimit-remaining", HeaderValue::from_static("0;w=21600"));
            return r;
        }
        let digest = sha256_digest(&f.manifest);
        let mut r = Response::new(Body::from(f.manifest.clone()));
        let h = r.headers_mut();
        h.insert("content-type", HeaderValue::from_static(OCI_MANIFEST));
        h.insert("docker-content-digest", digest.parse().unwrap());
        h.insert("ratelimit-limit", HeaderValue::from_static("100;w=21600"));
        h.insert(
            "ratelimit-remaining",
            HeaderValue::from_static("99;w=21600"),
        );
        h.insert("content-length", f.manifest.len().into());
        if req.method() == "HEAD" {
            *r.body_mut() = Body::empty();
        }
        return r;
    }
    if path.contains("/blobs/") {
        let now = f.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        f.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let flight = Flight(f.clone());
        // The mirror checks digests: serve the bytes that hash to the one asked for.
        let digest = path.rsplit('/').next().unwrap().to_owned();
        let data = blob_for(&digest);
        let stream = futures_util::stream::once(async move {
            // Hold the request open for a while, so requests overlap.
            tokio::time::sleep(Duration::from_millis(400)).await;
            drop(flight);
            Ok::<_, std::io::Error>(data)
        });
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut()
            .insert("content-length", blob_for(&digest).len().into());
        return r;
    }
    StatusCode::NOT_FOUND.into_response()
}

/// Six small blobs the fake serves, by digest.
fn blobs() -> Vec<Bytes> {
    (0..6u8)
        .map(|i| Bytes::from(vec![i; 1000 + i as usize]))
        .collect()
}

fn blob_for(digest: &str) -> Bytes {
    blobs()
        .into_iter()
        .find(|b| sha256_digest(b) == digest)
        .unwrap_or_default()
}

async fn start_fake() -> (Arc<Fake>, String) {
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(&blobs()[0]), "size": blobs()[0].len()},
        "layers": blobs()[1..].iter().map(|b| serde_json::json!({
            "mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(b), "size": b.len()
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let fake = Arc::new(Fake {
        manifest,
        ..Fake::default()
    });
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_429_manifests_are_left_alone_until_retry_after_and_cached_tags_stay_served() {
    let (fake, url) = start_fake().await;
    let m = Mirror::start(MirrorOpts::upstream(&url).tag_ttl("0s")).await;
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

    fake.limited.store(true, Ordering::SeqCst);
    // The revalidation meets the 429: the cached tag is served.
    let r = get("v1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), fake.manifest);
    let asked = fake.manifest_requests.load(Ordering::SeqCst);
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
    assert_eq!(fake.manifest_requests.load(Ordering::SeqCst), asked);
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
    fake.limited.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.manifest_requests.load(Ordering::SeqCst) == asked {
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
    let (fake, url) = start_fake().await;
    let m = Mirror::start(MirrorOpts::upstream(&url).up("max_concurrent_requests", "2")).await;
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
    let max = fake.max_in_flight.load(Ordering::SeqCst);
    assert_eq!(
        max, 2,
        "at most 2 blob requests at once, and the cap was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_their_rate_get_429_with_retry_after_and_others_are_unaffected() {
    let m = Mirror::start(
        MirrorOpts::upstream(&closed_url())
            .extra("limits:\n  requests_per_second: 1\n  burst: 3\n  real_ip_header: x-real-ip\n"),
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
