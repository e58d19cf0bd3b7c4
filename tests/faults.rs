//! ocimirror against the shared fake upstream (`common::upstream`) misbehaving on demand: rate
//! limits, 5xx, hangs, connections dropped or stalled mid-blob, wrong bytes, bearer-token auth,
//! blob redirects, slow blobs (to observe coalescing and disconnects).
//!
//! The mirror is the real binary; the fake is an axum server inside the test process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;

/// The faults these tests inject, each a script of the fake upstream (see [`set_fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// 429 with `Retry-After: 7` for every repository request.
    TooMany,
    Status500,
    Status503,
    /// Never answer repository requests.
    Hang,
    /// Blob GETs: send half the body (Content-Length says all), then close the connection.
    DropMidBlob,
    /// Blob GETs: send half the body, then send nothing more (connection kept open).
    StallMidBlob,
    /// Blob GETs: right length, wrong bytes.
    WrongBytes,
    /// Blob GETs: `Content-Length` 100 bytes short, and only that many bytes (a clean response).
    ShortLength,
    /// Blob GETs: `Content-Length` 100 bytes over the blob, which is sent whole (the connection
    /// closes before the announced end).
    LongLength,
    /// Blob GETs: no `Content-Length` (chunked) and only half the blob, ended cleanly.
    TruncatedChunked,
    /// Blob GETs: no `Content-Length` (chunked), the whole blob: nothing wrong.
    NoLength,
    /// Blob GETs: a redirect to the same URL, forever.
    RedirectLoop,
    /// The token endpoint answers 503.
    TokenDown,
    /// The token endpoint never answers.
    TokenHang,
}

/// Script `fault` on `f`, replacing every rule it had.
fn set_fault(f: &FakeUpstream, fault: Fault) {
    f.clear();
    let blob_get = || f.on(Route::Blob).get();
    match fault {
        Fault::None => {}
        Fault::TooMany => {
            f.on_repo()
                .reply(429, "TOOMANYREQUESTS")
                .header("retry-after", "7");
        }
        Fault::Status500 => {
            f.on_repo().reply(500, "UNKNOWN");
        }
        Fault::Status503 => {
            f.on_repo().reply(503, "UNAVAILABLE");
        }
        Fault::Hang => {
            f.on_repo().hang();
        }
        Fault::DropMidBlob => {
            blob_get().cut(BodyEnd::Drop);
        }
        Fault::StallMidBlob => {
            blob_get().cut(BodyEnd::Stall);
        }
        Fault::WrongBytes => {
            blob_get().corrupt();
        }
        Fault::ShortLength => {
            blob_get().length(Length::Short(100));
        }
        Fault::LongLength => {
            blob_get().length(Length::Long(100));
        }
        Fault::TruncatedChunked => {
            blob_get().length(Length::Chunked).cut(BodyEnd::Clean);
        }
        Fault::NoLength => {
            blob_get().length(Length::Chunked);
        }
        Fault::RedirectLoop => {
            blob_get().redirect(Redirect::Loop);
        }
        Fault::TokenDown => {
            f.on(Route::Token).reply(503, "UNAVAILABLE");
        }
        Fault::TokenHang => {
            f.on(Route::Token).hang();
        }
    }
}

// ---------------------------------------------------------------------------------------------

const NAME: &str = "fake/app";

async fn fake_with_image(creds: Option<(&str, &str)>) -> (FakeUpstream, Image) {
    let auth = creds.map_or_else(Auth::default, |(u, p)| Auth::bearer(u, p));
    let f = FakeUpstream::start_behind(auth).await;
    let img = f.add_image(NAME, "v1", &build_oci_image(500));
    (f, img)
}

/// What a client got for a blob whose fill broke: it must not look like a success.
/// Accepts: an error status, a failed request, or a 200 whose body ends in an error.
/// `size` is the blob's size, or `None` when the upstream announced a wrong length (which the
/// mirror may pass on: what matters then is that the response does not end cleanly).
async fn assert_broken_fetch(resp: reqwest::Result<reqwest::Response>, size: Option<u64>) {
    let resp = match resp {
        Err(_) => return,
        Ok(r) => r,
    };
    let status = resp.status().as_u16();
    if status != 200 {
        assert!(status >= 500, "broken fill answered {status}");
        return;
    }
    if let (Some(cl), Some(size)) = (resp.headers().get("content-length"), size) {
        assert_eq!(cl.to_str().unwrap(), size.to_string());
    }
    match tokio::time::timeout(Duration::from_secs(30), stream_hash(resp))
        .await
        .expect("broken fill: the response must end, not hang")
    {
        Err(_) => {}
        Ok((n, d)) => panic!(
            "broken upstream fill ended as a clean response ({n} of {size:?} bytes, {d}): \
             must end in an error"
        ),
    }
}

/// Wait (up to 30 s) until every fill the mirror started has ended, and check that each one
/// failed: after that, nothing can be committed any more.
async fn wait_fills_failed(m: &Mirror) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = m.metrics().await;
        let started = metric_sum(&text, "ocimirror_fills_started_total", &[]);
        let failed = metric_sum(&text, "ocimirror_fills_failed_total", &[]);
        let in_flight = metric_sum(&text, "ocimirror_fills_in_flight", &[]);
        if started >= 1.0 && in_flight == 0.0 && failed == started {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fills did not all end in failure: {started} started, {failed} failed, \
             {in_flight} in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn nothing_stored_for(m: &Mirror, digest: &str) {
    assert!(
        !blob_data_path(&m.storage_root(), digest).exists(),
        "blob data of a broken fill was committed"
    );
    // Nothing under blobs/ for the digest (a repository `_layers` link alone is not blob data).
    let hex = hex_of(digest);
    let leftovers: Vec<_> = files_under(&m.storage_root().join("docker/registry/v2/blobs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(hex))
        .collect();
    assert!(
        leftovers.is_empty(),
        "broken fill left blob files: {leftovers:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream errors for uncached content
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_is_relayed_with_retry_after() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    set_fault(&f, Fault::TooMany);
    // The first answer is the upstream's; then the mirror keeps off the upstream's manifests
    // for the rest of those 7 s and says how long is left. Blobs are not held back.
    let manifests0 = f.count("", "/manifests/");
    let h = expect_oci_error(
        m.get_manifest(NAME, "v1").send().await.unwrap(),
        429,
        &["TOOMANYREQUESTS"],
    )
    .await;
    assert_eq!(header(&h, "retry-after"), "7");
    let h = expect_oci_error(
        m.get_manifest(NAME, &img.digest).send().await.unwrap(),
        429,
        &["TOOMANYREQUESTS"],
    )
    .await;
    let left: u64 = header(&h, "retry-after").parse().unwrap();
    assert!((1..=7).contains(&left), "{left}");
    assert_eq!(
        f.count("", "/manifests/"),
        manifests0 + 1,
        "one manifest request upstream"
    );
    let h = expect_oci_error(
        m.get_blob(NAME, &img.layers[0].digest)
            .send()
            .await
            .unwrap(),
        429,
        &["TOOMANYREQUESTS"],
    )
    .await;
    assert_eq!(header(&h, "retry-after"), "7");
    assert!(
        m.metric("ocimirror_upstream_requests_total", &["status=\"429\""])
            .await
            >= 1.0,
        "upstream 429s are counted"
    );
    // Errors are not cached: once the cooldown is over, the manifest is fetched.
    set_fault(&f, Fault::None);
    let r = m
        .manifest_once_served(NAME, "v1", Some(429), "the cooldown")
        .await;
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_becomes_503_unavailable() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    for fault in [Fault::Status500, Fault::Status503] {
        set_fault(&f, fault);
        for r in [
            m.get_manifest(NAME, "v1"),
            m.get_manifest(NAME, &img.digest),
            m.get_blob(NAME, &img.layers[1].digest),
        ] {
            expect_oci_error(r.send().await.unwrap(), 503, &["UNAVAILABLE"]).await;
        }
        let r = m
            .head(&format!("/v2/{NAME}/blobs/{}", img.layers[1].digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503, "{fault:?}: HEAD blob");
    }
    set_fault(&f, Fault::None);
    let r = m
        .get_blob(NAME, &img.layers[1].digest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.blob(&img.layers[1].digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_404_is_relayed() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let r = m.get_manifest(NAME, "nope").send().await.unwrap();
    expect_oci_error(r, 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]).await;
    let missing = sha256_digest(b"missing");
    let r = m.get_manifest(NAME, &missing).send().await.unwrap();
    expect_oci_error(r, 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]).await;
    let r = m.get_blob(NAME, &missing).send().await.unwrap();
    expect_oci_error(r, 404, &["BLOB_UNKNOWN", "NAME_UNKNOWN"]).await;
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hang_times_out_with_503() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    set_fault(&f, Fault::Hang);
    for r in [
        m.get_manifest(NAME, "v1"),
        m.get_blob(NAME, &img.layers[0].digest),
    ] {
        let t = Instant::now();
        let resp = r.timeout(Duration::from_secs(20)).send().await.unwrap();
        expect_oci_error(resp, 503, &["UNAVAILABLE"]).await;
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "first_byte_timeout 1s, but the answer took {took:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Stale tags
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tag_served_when_upstream_fails() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .tag_ttl("0s"),
    )
    .await;
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), img.blob(&d.digest));
    }
    let stale0 = m.metric("ocimirror_stale_served_total", &[]).await;
    let gets0 = f.count("GET", "/manifests/");
    // A 429 starts a cooldown in which the upstream is not asked at all: it comes last.
    for fault in [
        Fault::Status500,
        Fault::Status503,
        Fault::Hang,
        Fault::TooMany,
    ] {
        set_fault(&f, fault);
        let heads = f.count("HEAD", "/manifests/v1");
        // The request's own timeout bounds the hang case: the mirror must answer, stale, well
        // before it (its first-byte timeout is 1 s).
        let r = m
            .get_manifest(NAME, "v1")
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "{fault:?}: stale tag must be served"
        );
        assert_eq!(header(r.headers(), "docker-content-digest"), img.digest);
        assert_eq!(r.bytes().await.unwrap(), img.manifest);
        assert!(
            f.count("HEAD", "/manifests/v1") > heads,
            "{fault:?}: the tag was revalidated with a HEAD"
        );
        // Cached blobs need nobody.
        let r = m
            .get_blob(NAME, &img.layers[0].digest)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    assert_eq!(
        f.count("GET", "/manifests/"),
        gets0,
        "a failing revalidation must not fall back to GET"
    );
    let stale = m.metric("ocimirror_stale_served_total", &[]).await;
    assert!(
        stale - stale0 >= 4.0,
        "stale_served_total grew by {}",
        stale - stale0
    );
}

// ---------------------------------------------------------------------------------------------
// Broken blob fills
// ---------------------------------------------------------------------------------------------

async fn broken_fill_case(fault: Fault) {
    let wrong_length = matches!(fault, Fault::ShortLength | Fault::LongLength);
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let layer = img.biggest_layer();
    set_fault(&f, fault);
    // A second client during the same breakage fares no better than the first.
    for _ in 0..2 {
        let resp = m
            .get_blob(NAME, &layer.digest)
            .timeout(Duration::from_secs(40))
            .send()
            .await;
        assert_broken_fetch(resp, (!wrong_length).then_some(layer.size)).await;
    }
    wait_fills_failed(&m).await;
    nothing_stored_for(&m, &layer.digest);
    let fetched = f.count("GET", &format!("/blobs/{}", layer.digest));
    assert!(fetched >= 1);

    // Healed: fetched again and served right.
    set_fault(&f, Fault::None);
    let r = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(stream_hash(r).await, Ok((layer.size, layer.digest.clone())));
    assert!(f.count("GET", &format!("/blobs/{}", layer.digest)) > fetched);
    wait_committed(&m, &layer.digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_drop_mid_blob_is_an_error_and_not_stored() {
    broken_fill_case(Fault::DropMidBlob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stall_mid_blob_hits_read_timeout_and_not_stored() {
    broken_fill_case(Fault::StallMidBlob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_wrong_bytes_are_an_error_and_not_stored() {
    broken_fill_case(Fault::WrongBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_with_wrong_digest_is_refused() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    // By digest, the upstream answers other bytes.
    let other = build_oci_image(501);
    f.add_manifest(NAME, &other.digest, OCI_MANIFEST, &img.manifest);
    let r = m.get_manifest(NAME, &other.digest).send().await.unwrap();
    let st = r.status().as_u16();
    assert_ne!(
        st, 200,
        "a manifest whose bytes do not match the requested digest was served"
    );
    let revs = m
        .storage_root()
        .join("docker/registry/v2/repositories/fake/app/_manifests/revisions/sha256");
    assert!(!revs.join(hex_of(&other.digest)).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifest_is_refused_with_size_or_manifest_invalid() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let revs = m
        .storage_root()
        .join("docker/registry/v2/repositories/fake/app/_manifests/revisions/sha256");
    // Over 4 MiB: refused (SIZE_INVALID or MANIFEST_INVALID, per the contract), not stored.
    let pad = "x".repeat(5 << 20);
    let huge = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": img.config.json(), "layers": [],
        "annotations": {"pad": pad},
    }))
    .unwrap();
    f.add_manifest(NAME, "huge", OCI_MANIFEST, &huge);
    let r = m.get_manifest(NAME, "huge").send().await.unwrap();
    let st = r.status().as_u16();
    assert!(st >= 400, "a >4 MiB manifest was served ({st})");
    let body = r.bytes().await.unwrap();
    let codes = error_codes(&body);
    assert!(
        codes
            .iter()
            .any(|c| c == "SIZE_INVALID" || c == "MANIFEST_INVALID"),
        "{codes:?}"
    );
    assert!(!revs.join(hex_of(&sha256_digest(&huge))).exists());
}

// ---------------------------------------------------------------------------------------------
// Token auth and redirects
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_fetched_once_for_many_requests() {
    let (f, img) = fake_with_image(Some(("alice", "wonder land"))).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .tag_ttl("0s")
            .login("alice", "wonder land"),
    )
    .await;
    for _ in 0..3 {
        let r = m.get_manifest(NAME, "v1").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap(), img.manifest);
    }
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap(), img.blob(&d.digest));
    }
    let authed: Vec<Seen> = f
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/v2/fake/app/"))
        .filter(|s| s.auth.as_deref() == Some("Bearer tok-0123456789abcdef"))
        .collect();
    assert!(
        authed.len() >= 3 + img.all_blobs().len(),
        "expected authorized upstream requests, saw {:?}",
        f.seen()
    );
    assert_eq!(
        f.tokens(),
        1,
        "one token (expires_in 300) must serve every request of the same scope: {:?}",
        f.seen()
    );
    let challenges = f
        .seen()
        .iter()
        .filter(|s| s.path != "/token" && s.auth.is_none())
        .count();
    assert!(
        challenges <= 2,
        "the mirror keeps getting challenged: {:?}",
        f.seen()
    );
    assert!(
        m.metric("ocimirror_upstream_requests_total", &["op=\"token\""])
            .await
            >= 1.0
    );

    // Wrong credentials: no content.
    let bad = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .login("alice", "wrong"),
    )
    .await;
    let r = bad.get_manifest(NAME, "v1").send().await.unwrap();
    assert_ne!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirect_does_not_forward_authorization() {
    let (f, img) = fake_with_image(Some(("bob", "builder"))).await;
    f.on(Route::Blob).get().redirect(Redirect::Cdn(307));
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .login("bob", "builder"),
    )
    .await;
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", d.digest);
        assert_eq!(r.bytes().await.unwrap(), img.blob(&d.digest));
    }
    let cdn = f.seen_cdn();
    assert!(
        cdn.iter().filter(|s| s.method == "GET").count() >= img.all_blobs().len(),
        "blob GETs followed the redirect: {cdn:?}"
    );
    assert!(
        cdn.iter().all(|s| s.auth.is_none()),
        "Authorization was forwarded to the redirect target: {cdn:?}"
    );
    assert!(
        f.seen()
            .iter()
            .any(|s| s.path.contains("/blobs/") && s.auth.is_some()),
        "the registry leg was authorized"
    );
}

// ---------------------------------------------------------------------------------------------
// Slow blobs: streaming, coalescing, disconnects
// ---------------------------------------------------------------------------------------------

/// A fake holding `NAME:tag`, an image of `layers` (their sizes) from `seed`, whose blobs it
/// sends `chunk` bytes at a time with `pause` between chunks.
async fn paced_fake(
    tag: &str,
    seed: u64,
    layers: &[usize],
    chunk: usize,
    pause: Duration,
) -> (FakeUpstream, Image) {
    let f = FakeUpstream::start().await;
    let img = f.add_image(
        NAME,
        tag,
        &build_image(Kind::Oci, seed, layers, "amd64", "linux"),
    );
    f.on(Route::Blob).chunks(chunk, pause);
    (f, img)
}

/// A fake with one image whose single layer is ~4 MiB, served at 128 KiB per 50 ms (~1.6 s).
async fn slow_fake() -> (FakeUpstream, Image, Descriptor) {
    let (f, img) = paced_fake(
        "slow",
        600,
        &[4 << 20],
        128 << 10,
        Duration::from_millis(50),
    )
    .await;
    let layer = img.layers[0].clone();
    (f, img, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_does_not_cancel_fill() {
    let (f, img, layer) = slow_fake().await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let data = img.blob(&layer.digest).clone();

    let r = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut s = r.bytes_stream();
    let mut got = Vec::new();
    while got.len() < 256 << 10 {
        got.extend_from_slice(&s.next().await.expect("body").unwrap());
    }
    assert_eq!(
        f.bodies_done(),
        0,
        "the client must get bytes while the upstream is still sending (streaming fill)"
    );
    assert_eq!(&got[..], &data[..got.len()]);
    drop(s);

    let path = blob_data_path(&m.storage_root(), &layer.digest);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "fill was cancelled by the client's disconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), data);
    assert_eq!(f.count("GET", &format!("/blobs/{}", layer.digest)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_gets_coalesce_into_one_upstream_fetch() {
    let (f, _img, layer) = slow_fake().await;
    // The fill stays in flight until the late requests below are in (however long the
    // machine takes to send them: the read timeout allows for it).
    f.on(Route::Blob).get().hold_after(256 << 10);
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .up("read_timeout", "30s"),
    )
    .await;
    let fills0 = m.metric("ocimirror_fills_started_total", &[]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let req = m.get_blob(NAME, &layer.digest);
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "client {i}");
            stream_hash(r).await
        }));
    }
    // A late joiner and a Range request while the fill is in flight.
    let blob_path = format!("/blobs/{}", layer.digest);
    f.wait_for("the fill's upstream GET", |f| {
        f.count("GET", &blob_path) >= 1
    })
    .await;
    let late = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    let ranged = m
        .get_blob(NAME, &layer.digest)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status().as_u16(), 206);
    assert_eq!(
        header(ranged.headers(), "content-range"),
        format!("bytes 0-99/{}", layer.size)
    );
    assert_eq!(ranged.bytes().await.unwrap().len(), 100);
    assert_eq!(f.bodies_done(), 0, "the fill was still in flight");
    f.release();
    assert_eq!(
        stream_hash(late).await,
        Ok((layer.size, layer.digest.clone()))
    );
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            t.await.unwrap(),
            Ok((layer.size, layer.digest.clone())),
            "client {i}"
        );
    }
    assert_eq!(
        f.count("GET", &format!("/blobs/{}", layer.digest)),
        1,
        "concurrent cold GETs must share one upstream fetch"
    );
    assert_eq!(
        m.metric("ocimirror_fills_started_total", &[]).await - fills0,
        1.0
    );
    assert!(m.metric("ocimirror_fill_joins_total", &[]).await >= 1.0);
}

// ---------------------------------------------------------------------------------------------
// Harness sanity: the fake behaves as intended for ordinary clients (no mirror involved).
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_fake_upstream_behaves() {
    // skopeo does the bearer-token dance with the fake and follows the blob redirect.
    let (f, img) = fake_with_image(Some(("alice", "pw"))).await;
    f.on(Route::Blob).get().redirect(Redirect::Cdn(307));
    let hp = f.hostport();
    pull_and_check_oci(&hp, &img, Some("alice:pw")).await;
    assert!(f.tokens() >= 1);
    assert!(!f.seen_cdn().is_empty());
    assert!(
        skopeo_inspect_raw(&format!("{hp}/{NAME}:v1"), Some("alice:nope"))
            .await
            .is_err()
    );

    let (g, img) = fake_with_image(None).await;
    let c = client();
    let layer = img.biggest_layer();
    let url = format!("{}/v2/{NAME}/blobs/{}", g.url(), layer.digest);
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(
        header(r.headers(), "content-length"),
        layer.size.to_string()
    );

    set_fault(&g, Fault::DropMidBlob);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        header(r.headers(), "content-length"),
        layer.size.to_string()
    );
    assert!(
        stream_hash(r).await.is_err(),
        "drop mid-blob is a body error"
    );

    set_fault(&g, Fault::WrongBytes);
    let r = c.get(&url).send().await.unwrap();
    let (n, d) = stream_hash(r).await.unwrap();
    assert_eq!(n, layer.size);
    assert_ne!(d, layer.digest);

    set_fault(&g, Fault::StallMidBlob);
    let r = c.get(&url).send().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), stream_hash(r))
            .await
            .is_err(),
        "stall mid-blob never ends"
    );

    set_fault(&g, Fault::TooMany);
    let r = c.get(&url).send().await.unwrap();
    let h = expect_oci_error(r, 429, &["TOOMANYREQUESTS"]).await;
    assert_eq!(header(&h, "retry-after"), "7");

    set_fault(&g, Fault::None);
    g.on(Route::Blob)
        .chunks(128 << 10, Duration::from_millis(20));
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(stream_hash(r).await, Ok((layer.size, layer.digest.clone())));
    assert_eq!(g.bodies_done(), 1);
}

// ---------------------------------------------------------------------------------------------
// Issue #7: more upstream faults
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_content_length_short_is_an_error_and_not_stored() {
    broken_fill_case(Fault::ShortLength).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_content_length_long_is_an_error_and_not_stored() {
    broken_fill_case(Fault::LongLength).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_chunked_body_ending_early_is_an_error_and_not_stored() {
    broken_fill_case(Fault::TruncatedChunked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_redirect_loop_is_an_error_and_not_stored() {
    broken_fill_case(Fault::RedirectLoop).await;
}

/// A blob without `Content-Length` (chunked) is fine: served and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_blob_without_content_length_is_served_and_stored() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    set_fault(&f, Fault::NoLength);
    served_whole_and_committed(&m, &img).await;
}

/// Every blob of `img` is served whole by `m`, and committed to its storage.
async fn served_whole_and_committed(m: &Mirror, img: &Image) {
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", d.digest);
        assert_eq!(
            stream_hash(r).await,
            Ok((d.size, d.digest.clone())),
            "{}",
            d.digest
        );
        wait_committed(m, &d.digest).await;
    }
}

/// Wait (up to 20 s) until `digest`'s data is in storage, and check its bytes.
async fn wait_committed(m: &Mirror, digest: &str) {
    let data = blob_data_path(&m.storage_root(), digest);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !data.exists() {
        assert!(Instant::now() < deadline, "{digest} never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sha256_digest(&std::fs::read(&data).unwrap()),
        digest,
        "committed blob has the wrong bytes"
    );
}

/// An upstream sending 1 KiB a second (slower than no client would notice, faster than the
/// read timeout): the client gets bytes as they come and the whole blob, and it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_at_one_kib_per_second_is_streamed_and_stored() {
    let (f, img) = paced_fake("crawl", 610, &[6 << 10], 1024, Duration::from_secs(1)).await;
    let layer = img.layers[0].clone();
    // Below the default minimum blob rate (16 KiB/s): this upstream is slow on purpose.
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .up("min_blob_rate", "256B"),
    )
    .await;
    let r = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut s = r.bytes_stream();
    let mut got = Vec::new();
    got.extend_from_slice(&s.next().await.expect("first bytes").unwrap());
    assert_eq!(
        f.bodies_done(),
        0,
        "first bytes reach the client while the upstream is still sending"
    );
    while let Some(b) = s.next().await {
        got.extend_from_slice(&b.expect("slow but steady upstream: no error"));
    }
    assert_eq!(sha256_digest(&got), layer.digest);
    wait_committed(&m, &layer.digest).await;
}

/// The upstream is down when the mirror starts (connection refused): uncached content is 503,
/// the mirror keeps running, and serves once the upstream comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_start_then_up() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let m = Mirror::start(MirrorOpts::upstream(&url).short_timeouts()).await;
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    expect_oci_error(r, 503, &["UNAVAILABLE"]).await;
    let f = FakeUpstream::start_with(FakeOpts {
        port,
        ..FakeOpts::default()
    })
    .await;
    let img = f.add_image(NAME, "v1", &build_oci_image(620));
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(stream_hash(r).await, Ok((d.size, d.digest.clone())));
    }
}

/// Token endpoint answering 503, or hanging: uncached content is 503 `UNAVAILABLE` (not a 401
/// the client could do nothing about), within the timeouts; nothing is stored; once it is back,
/// pulls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_or_hanging_is_503_then_recovers() {
    let (f, img) = fake_with_image(Some(("alice", "pw"))).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .login("alice", "pw"),
    )
    .await;
    for fault in [Fault::TokenDown, Fault::TokenHang] {
        set_fault(&f, fault);
        for r in [
            m.get_manifest(NAME, "v1"),
            m.get_blob(NAME, &img.layers[0].digest),
        ] {
            let resp = r.timeout(Duration::from_secs(30)).send().await;
            let resp = resp.unwrap_or_else(|e| panic!("{fault:?}: no answer: {e}"));
            let st = resp.status().as_u16();
            assert!(
                st == 503 || st == 502,
                "{fault:?}: uncached content with the token endpoint down answered {st}"
            );
        }
        nothing_stored_for(&m, &img.layers[0].digest);
    }
    set_fault(&f, Fault::None);
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    let r = m
        .get_blob(NAME, &img.layers[0].digest)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stream_hash(r).await,
        Ok((img.layers[0].size, img.layers[0].digest.clone()))
    );
}

/// 40 concurrent clients while the upstream answers 429 to everything: each gets 429 with a
/// `Retry-After` (or 503), the mirror does not multiply the storm (at most two upstream requests
/// per client request), nothing is stored, and pulls work again once the upstream does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_storm_is_relayed_not_amplified_and_not_stored() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    set_fault(&f, Fault::TooMany);
    let before = f.seen().len();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let req = match i % 3 {
            0 => m.get_manifest(NAME, "v1"),
            1 => m.get_manifest(NAME, &img.digest),
            _ => m.get_blob(NAME, &img.layers[i % img.layers.len()].digest),
        };
        tasks.push(tokio::spawn(async move {
            let r = req.timeout(Duration::from_secs(30)).send().await.unwrap();
            let st = r.status().as_u16();
            let ra = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (st, ra)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (st, ra) = t.await.unwrap();
        assert!(st == 429 || st == 503, "client {i}: {st}");
        if st == 429 {
            assert!(ra.is_some(), "client {i}: 429 without Retry-After");
        }
    }
    let upstream = f.seen().len() - before;
    assert!(
        upstream <= 80,
        "40 client requests made {upstream} upstream requests during a 429 storm"
    );
    for d in img.all_blobs() {
        nothing_stored_for(&m, &d.digest);
    }
    set_fault(&f, Fault::None);
    // The mirror may hold off for the upstream's Retry-After (7 s).
    let r = m
        .manifest_once_served(NAME, "v1", None, "after the storm")
        .await;
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
}

/// A client that goes away at each point of a fill — right after sending its request, after
/// the response head, after the first bytes, half-way, one byte before the end — never cancels
/// the fill or leaves a partial blob: each blob ends up in storage whole, and is served right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnecting_at_every_point_of_a_fill() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (f, img) = paced_fake(
        "cuts",
        630,
        &[1 << 20; 5],
        64 << 10,
        Duration::from_millis(20),
    )
    .await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    // The manifest first, so the blobs are linked to the repository.
    let r = m.get_manifest(NAME, "cuts").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let hp = m.hostport();
    for (i, layer) in img.layers.iter().enumerate() {
        let size = layer.size as usize;
        // Bytes of the response (head included) read before hanging up; None: none at all.
        let mut s = tokio::net::TcpStream::connect(&hp).await.unwrap();
        let req = format!(
            "GET /v2/{NAME}/blobs/{} HTTP/1.1\r\nHost: {hp}\r\n\r\n",
            layer.digest
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let body_bytes = match i {
            0 => None,
            1 => Some(0),
            2 => Some(1),
            3 => Some(size / 2),
            _ => Some(size - 1),
        };
        if let Some(want) = body_bytes {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 << 10];
            loop {
                let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                if let Some(h) = head_end
                    && buf.len() - (h + 4) >= want
                {
                    break;
                }
                let room = match head_end {
                    Some(h) => (h + 4 + want - buf.len()).min(chunk.len()),
                    None => 1,
                };
                let n = s.read(&mut chunk[..room]).await.unwrap();
                assert!(n > 0, "cut {i}: response ended early");
                buf.extend_from_slice(&chunk[..n]);
            }
            assert!(buf.starts_with(b"HTTP/1.1 200"), "cut {i}");
        } else {
            // Give the request time to reach the handler before hanging up.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(s);
        // Every cut after the response began means the fill is under way: it must commit.
        if body_bytes.is_some() {
            wait_committed(&m, &layer.digest).await;
        }
    }
    served_whole_and_committed(&m, &img).await;
    for l in &img.layers[1..] {
        assert_eq!(
            f.count("GET", &format!("/blobs/{}", l.digest)),
            1,
            "a client's disconnect cancelled the fill of {}",
            l.digest
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The mirror killed
// ---------------------------------------------------------------------------------------------

/// Set a file's modification time `hours` into the past (`touch -d`).
fn age_file(path: &std::path::Path, hours: u32) {
    let st = std::process::Command::new("touch")
        .arg("-d")
        .arg(format!("{hours} hours ago"))
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// SIGKILL while fills are streaming: nothing partial is ever readable (no blob data for the
/// interrupted digests, only temp files). After a restart the blobs are fetched again whole and
/// committed; temp files older than 6 h are removed at start-up, younger ones (a writer of
/// another process sharing the root may own them) are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_fills_then_restart_serves_whole_blobs_and_cleans_temp_files() {
    let layers = [4 << 20, 3 << 20];
    let (f, img) = paced_fake("kill", 640, &layers, 128 << 10, Duration::from_millis(50)).await;
    let mut m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let r = m.get_manifest(NAME, "kill").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut streams = Vec::new();
    for l in &img.layers {
        let r = m.get_blob(NAME, &l.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut s = r.bytes_stream();
        let mut n = 0;
        // Past the first 1 MiB storage batch, so the temp files have bytes in them.
        while n < (1 << 20) + (256 << 10) {
            n += s.next().await.expect("body").unwrap().len();
        }
        streams.push(s);
    }
    let tmp_dir = m.storage_root().join("_ocimirror_tmp");
    m.kill();
    for mut s in streams {
        // The killed mirror's responses end in an error, never cleanly.
        let mut clean = true;
        while let Some(b) = s.next().await {
            if b.is_err() {
                clean = false;
                break;
            }
        }
        assert!(!clean, "a response of a killed fill ended cleanly");
    }
    for l in &img.layers {
        assert!(
            !blob_data_path(&m.storage_root(), &l.digest).exists(),
            "a partial blob was committed"
        );
    }
    let abandoned = files_under(&tmp_dir);
    assert_eq!(
        abandoned.len(),
        img.layers.len(),
        "one temp file per interrupted fill: {abandoned:?}"
    );
    for p in &abandoned {
        age_file(p, 7);
    }
    let young = tmp_dir.join("young-writer");
    std::fs::write(&young, b"partial").unwrap();

    m.restart(None).await;
    let left = files_under(&tmp_dir);
    assert_eq!(
        left,
        vec![young.clone()],
        "start-up removes temp files older than 6 h, and only those"
    );
    served_whole_and_committed(&m, &img).await;
}
