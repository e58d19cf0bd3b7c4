//! Storage outages and a mirror killed in the middle of deleting: the S3 server stopped and
//! restarted under a running mirror (a TCP proxy between them is cut and restored), and SIGKILL
//! during expiry passes, then a restart. Each test checks what clients saw and what storage held.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// One request's outcome, for the log of what a client saw.
#[derive(Debug)]
#[allow(dead_code)] // the fields are for the log (Debug)
enum Seen {
    /// 200 (or 206) and every byte right.
    Whole(u16),
    /// An error status with an OCI error body: the codes.
    OciError(u16, Vec<String>),
    /// A 200 whose body ended in an error after this many bytes (never a clean short end).
    BodyError(u64),
}

/// GET `path` and judge the answer: bytes equal to `want` on success, an OCI error JSON on an
/// error status, a body error rather than a clean short end. Anything else panics.
async fn get_judged(m: &Mirror, path: &str, want: &[u8], manifest: bool) -> Seen {
    let mut rb = m.get(path);
    if manifest {
        rb = rb.header("accept", ACCEPT_MANIFESTS);
    }
    let r = rb.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = r.status().as_u16();
    if status == 200 {
        return match stream_hash(r).await {
            Ok((n, d)) => {
                assert_eq!(
                    (n, d),
                    (want.len() as u64, sha256_digest(want)),
                    "{path}: a 200 that ended cleanly with the wrong bytes"
                );
                Seen::Whole(status)
            }
            Err((n, _)) => Seen::BodyError(n),
        };
    }
    assert_eq!(status, 503, "{path}: neither success nor 503");
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = r.bytes().await.unwrap();
    assert!(ct.starts_with("application/json"), "{path}: {status} {ct}");
    let codes = error_codes(&body);
    assert_eq!(codes, ["UNAVAILABLE"], "{path}");
    Seen::OciError(status, codes)
}

/// Pull `img` by tag over HTTP and check every byte; the first failure.
async fn pull_http(m: &Mirror, img: &Image) -> Result<(), String> {
    let r = m
        .get_manifest(&img.name, "v1")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("manifest: {}", r.status()));
    }
    if r.bytes().await.map_err(|e| e.to_string())?.as_ref() != img.manifest.as_slice() {
        return Err("manifest bytes differ".into());
    }
    for d in img.all_blobs() {
        let r = m
            .get_blob(&img.name, &d.digest)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != 200 {
            return Err(format!("blob {}: {}", d.digest, r.status()));
        }
        match stream_hash(r).await {
            Ok((_, got)) if got == d.digest => {}
            other => return Err(format!("blob {}: {other:?}", d.digest)),
        }
    }
    Ok(())
}

/// Wait (up to 60 s) until every blob of `img` and its manifest are stored under `dir`.
async fn wait_stored(dir: &std::path::Path, img: &Image) {
    let mut want: Vec<String> = img.all_blobs().into_iter().map(|d| d.digest).collect();
    want.push(img.digest.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have: Vec<String> = stored_blob_files(dir).into_iter().map(|(d, _)| d).collect();
        if want.iter().all(|d| have.contains(d)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not stored within 60 s (have {have:?})",
            img.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_stopped_and_restarted_mid_run_fails_cleanly_and_recovers_without_a_restart() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let layers = [6 << 20, 64 << 10];
    let cached = p
        .push_image(
            "out/a",
            "v1",
            &build_image(Kind::Oci, 901, &layers, "amd64", "linux"),
        )
        .await;
    let cold = p
        .push_image(
            "out/b",
            "v1",
            &build_image(Kind::Oci, 902, &layers, "amd64", "linux"),
        )
        .await;
    let s3 = S3Server::start().await;
    let mut proxy = TcpProxy::start(&s3.endpoint).await;
    let bucket = s3.bucket_dir();
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .short_timeouts()
            .storage_yaml(&format!(
                "{}  breaker:\n    failures: 3\n    open_for: 2s\n",
                s3_storage_yaml(&proxy.url(), "mirror")
            )),
    )
    .await;

    pull_http(&m, &cached).await.expect("warm pull");
    wait_stored(&bucket, &cached).await;
    let big = cached.biggest_layer();
    let small = cached
        .all_blobs()
        .into_iter()
        .find(|d| d.digest != big.digest)
        .unwrap();

    // A cached blob being streamed from S3 when the server goes: the body completes whole or
    // ends in an error, never cleanly short.
    let r = m.get_blob(&cached.name, &big.digest).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let first = futures_util::StreamExt::next(&mut s)
        .await
        .unwrap()
        .unwrap();
    proxy.cut();
    let mut n = first.len() as u64;
    let mut ctx = Vec::from(first.as_ref());
    let mut ended_in_error = false;
    while let Some(c) = futures_util::StreamExt::next(&mut s).await {
        match c {
            Ok(b) => {
                n += b.len() as u64;
                ctx.extend_from_slice(&b);
            }
            Err(_) => {
                ended_in_error = true;
                break;
            }
        }
    }
    if !ended_in_error {
        assert_eq!(
            sha256_digest(&ctx),
            big.digest,
            "a cached blob cut mid-stream ended cleanly after {n} bytes"
        );
    }
    eprintln!("cached blob streaming when S3 went: body error {ended_in_error} after {n} bytes");

    // During the outage: cached and cold content, manifests and blobs, GET and HEAD, all
    // answered (a failed look-up is a miss, passed through from the upstream).
    let cold_big = cold.biggest_layer();
    let mut seen = Vec::new();
    for (what, path, want, manifest) in [
        (
            "cached manifest by tag",
            format!("/v2/{}/manifests/v1", cached.name),
            cached.manifest.clone(),
            true,
        ),
        (
            "cached small blob",
            format!("/v2/{}/blobs/{}", cached.name, small.digest),
            cached.blob(&small.digest).to_vec(),
            false,
        ),
        (
            "cached big blob",
            format!("/v2/{}/blobs/{}", cached.name, big.digest),
            cached.blob(&big.digest).to_vec(),
            false,
        ),
        (
            "cold manifest by tag",
            format!("/v2/{}/manifests/v1", cold.name),
            cold.manifest.clone(),
            true,
        ),
        (
            "cold big blob",
            format!("/v2/{}/blobs/{}", cold.name, cold_big.digest),
            cold.blob(&cold_big.digest).to_vec(),
            false,
        ),
    ] {
        let t = Instant::now();
        let got = get_judged(&m, &path, &want, manifest).await;
        eprintln!("S3 down: {what}: {got:?} after {:?}", t.elapsed());
        assert!(matches!(got, Seen::Whole(200)), "S3 down: {what}: {got:?}");
        seen.push(got);
    }
    let r = m
        .head(&format!("/v2/{}/blobs/{}", cached.name, small.digest))
        .send()
        .await
        .unwrap();
    let head = r.status().as_u16();
    eprintln!("S3 down: HEAD cached small blob: {head}");
    assert_eq!(head, 200, "HEAD during the outage");
    assert!(m.pid().is_some());

    // The breaker opened after the failures above: from then on a request that needs storage
    // does not ask the store, except one probe per `open_for`, and is passed through. Counted,
    // not timed: the store's own failures grow by at most the probes let through meanwhile.
    let read = ["circuit=\"read\""];
    assert!(
        m.metric(
            "ocimirror_storage_breaker_transitions_total",
            &["to=\"open\""]
        )
        .await
            >= 1.0,
        "the read circuit never opened:\n{}",
        m.log_text()
    );
    let failures_before = m.metric("ocimirror_storage_errors_total", &[]).await;
    let probes_before = m
        .metric(
            "ocimirror_storage_breaker_transitions_total",
            &["to=\"half-open\""],
        )
        .await;
    let refused_before = m
        .metric("ocimirror_storage_breaker_refused_total", &read)
        .await;
    let want = cold.blob(&cold_big.digest).to_vec();
    let path = format!("/v2/{}/blobs/{}", cold.name, cold_big.digest);
    for _ in 0..10 {
        let got = get_judged(&m, &path, &want, false).await;
        assert!(matches!(got, Seen::Whole(200)), "{got:?}");
    }
    let failures = m.metric("ocimirror_storage_errors_total", &[]).await - failures_before;
    let probes = m
        .metric(
            "ocimirror_storage_breaker_transitions_total",
            &["to=\"half-open\""],
        )
        .await
        - probes_before;
    let refused = m
        .metric("ocimirror_storage_breaker_refused_total", &read)
        .await
        - refused_before;
    assert!(
        failures <= probes * 2.0,
        "{failures} store failures during 10 requests with only {probes} probes let through"
    );
    assert!(refused >= 10.0 - probes, "only {refused} refused at once");
    assert!(
        m.metric("ocimirror_degraded_served_total", &["kind=\"blob\""])
            .await
            >= 10.0
    );
    let ready = m.get("/readyz").send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let detail = ready.text().await.unwrap();
    assert!(detail.contains("storage read circuit"), "{detail}");
    let page: serde_json::Value = serde_json::from_str(
        &m.get("/status.json")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_ne!(page["storage"], "ok", "{page}");
    // The mirror still answers its own endpoints.
    let r = m.get("/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Nothing partial in the bucket: every blob there is whole, and none of the cold image's
    // blobs was committed (S3 was unreachable throughout its fill).
    let stored = assert_stored_blobs_whole(&bucket);
    for d in cold.all_blobs() {
        assert!(
            !stored.contains(&d.digest),
            "{} stored while S3 was down?",
            d.digest
        );
    }

    // Restored: both images pull whole throughout; once a probe has closed the circuit (no
    // restart), the next pull stores the cold image: its blobs by their fills, and its manifest,
    // passed through during the outage and resolved from memory since, from memory.
    proxy.restore().await;
    let pid = m.pid();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = pull_http(&m, &cached).await;
        let b = pull_http(&m, &cold).await;
        let closed = circuit_state(&m, "read").await == 0.0;
        if a.is_ok() && b.is_ok() && closed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "60 s after S3 came back: {a:?} {b:?}, read circuit closed: {closed}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pull_http(&m, &cold).await.unwrap();
    wait_stored(&bucket, &cold).await;
    assert_stored_blobs_whole(&bucket);
    assert_eq!(m.pid(), pid, "the mirror was not restarted");
    // The probe closed the circuit again.
    let ready = m.get("/readyz").send().await.unwrap().text().await.unwrap();
    assert_eq!(ready, "ready");
    assert_eq!(
        m.metric("ocimirror_storage_breaker_state", &["circuit=\"read\""])
            .await,
        0.0
    );
}

/// An expiry policy that evicts nearly everything as soon as it has been idle for a second.
const AGGRESSIVE: &str = "expiry:\n  max_size: 1KB\n  interval: 1s\n  min_idle: 1s\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_expiry_passes_leaves_whole_blobs_and_pulls_succeed() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let mut imgs = Vec::new();
    for i in 0..6u64 {
        let img = build_image(
            Kind::Oci,
            950 + i,
            &[256 << 10, 32 << 10, 4 << 10],
            "amd64",
            "linux",
        );
        imgs.push(p.push_image(&format!("kill/app{i}"), "v1", &img).await);
    }
    let opts = MirrorOpts::upstream(&reg.url())
        .tag_ttl("1h")
        .extra(AGGRESSIVE);
    let mut m = Mirror::start(opts.clone()).await;
    let root = m.storage_root();
    // Each round: fill everything, let a pass start deleting, and SIGKILL at a different depth:
    // round 0 as soon as the first tag link is gone (phase 1: manifests), the others once 3, 6,
    // ... blobs are gone (phase 2).
    let tag_links = |root: &std::path::Path| {
        files_under(root)
            .into_iter()
            .filter(|p| {
                p.ends_with("current/link") && p.to_string_lossy().contains("/_manifests/tags/")
            })
            .count()
    };
    let mut removed_any = false;
    for round in 0..6usize {
        if round > 0 {
            m.restart(Some(opts.clone())).await;
        }
        for img in &imgs {
            pull_http(&m, img)
                .await
                .unwrap_or_else(|e| panic!("round {round}, {}: {e}", img.name));
        }
        let blobs0 = stored_blob_files(&root).len();
        let tags0 = tag_links(&root);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hit = if round == 0 {
                tag_links(&root) < tags0
            } else {
                stored_blob_files(&root).len() + 3 * round <= blobs0
            };
            if hit {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no pass got that far in 30 s:\n{}",
                m.log_text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        m.kill();
        let after = stored_blob_files(&root).len();
        removed_any |= after < blobs0;
        eprintln!(
            "round {round}: {blobs0} blobs and {tags0} tags stored, {after} blobs and {} tags at the kill",
            tag_links(&root)
        );
        // What a killed pass leaves: whole blobs only.
        assert_stored_blobs_whole(&root);
    }
    assert!(
        removed_any,
        "no pass deleted anything before a kill:\n{}",
        m.log_text()
    );

    // Restart without expiry: every tag link still in storage points at a manifest that is
    // there whole or is fetched again, and every image pulls whole.
    let mut m2 = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_root(&root),
    )
    .await;
    for img in &imgs {
        pull_http(&m2, img)
            .await
            .unwrap_or_else(|e| panic!("after the kills, {}: {e}", img.name));
    }
    for img in &imgs {
        wait_stored(&root, img).await;
    }
    assert_stored_blobs_whole(&root);
    m2.kill();
}
