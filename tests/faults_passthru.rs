//! Storage down under a running mirror, with SeaweedFS as the store: killed (SIGKILL) and
//! started again, or stopped (SIGSTOP, a hung store) and continued. Cached and uncached images
//! keep pulling through skopeo with the right digests, and tag lists (skopeo `list-tags`) and
//! referrers keep answering: once the breaker's read circuit is open misses are passed through
//! from the upstream uncommitted, and no request waits on the store but the breaker's probes;
//! concurrent clients of one uncached blob cost one upstream fetch; once the store is back the
//! next miss is committed, then served from storage, and a manifest passed through during the
//! outage is stored by its next pull. With the upstream stopped too, or offline, uncached content
//! is a 503 naming both causes, answered without asking the store. A store stopped while a fill
//! writes to it is left with nothing of that fill.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// SIGKILL: connections refused.
    Killed,
    /// SIGSTOP: connections accepted by the kernel, never answered.
    Stopped,
}

/// `docker/registry/v2/blobs/sha256/<aa>/<hex>/data`, relative to the mirror's root.
fn data_key(digest: &str) -> String {
    let hex = hex_of(digest);
    format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
}

async fn in_bucket(bucket: &opendal::Operator, digest: &str) -> bool {
    match bucket.stat(&data_key(digest)).await {
        Ok(_) => true,
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => false,
        Err(e) => panic!("{digest}: {e}"),
    }
}

/// Wait (up to 60 s) until the blob `digest` is in the bucket.
async fn wait_digest_in_bucket(bucket: &opendal::Operator, digest: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !in_bucket(bucket, digest).await {
        assert!(
            Instant::now() < deadline,
            "{digest} not in the bucket after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait (up to 60 s each) until every blob of `img` is in the bucket.
async fn wait_in_bucket(bucket: &opendal::Operator, img: &Image) {
    for d in img.all_blobs() {
        wait_digest_in_bucket(bucket, &d.digest).await;
    }
}

/// Every blob in the bucket hashes to its digest; the digests.
async fn assert_bucket_blobs_whole(bucket: &opendal::Operator) -> Vec<String> {
    let mut out = Vec::new();
    for key in s3_keys(bucket, "docker/registry/v2/blobs/").await {
        let Some(hex) = key.strip_suffix("/data").and_then(|k| k.rsplit('/').next()) else {
            continue;
        };
        let body = bucket.read(&key).await.unwrap().to_vec();
        let digest = format!("sha256:{hex}");
        assert_eq!(sha256_digest(&body), digest, "{key} is not whole");
        out.push(digest);
    }
    out
}

/// `skopeo list-tags docker://<hostport>/<name>`: the tags listed.
async fn skopeo_list_tags(hostport: &str, name: &str) -> Result<Vec<String>, String> {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(["list-tags", "--tls-verify=false", "--no-creds"])
        .arg(format!("docker://{hostport}/{name}"));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| "skopeo list-tags timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "skopeo list-tags {name}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v["Tags"]
        .as_array()
        .ok_or_else(|| format!("no Tags in {v}"))?
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_owned())
        .collect())
}

/// Push an artifact whose subject is `subject`, and the tag-schema index listing it (what an OCI
/// client pushes to a registry without the referrers API, such as Distribution 2.8): its digest.
async fn push_referrer(p: &Pusher, subject: &Image) -> String {
    let name = &subject.name;
    let empty = bytes::Bytes::from_static(b"{}");
    p.push_blob(name, empty.clone()).await;
    let payload = bytes::Bytes::from(format!("signature of {}", subject.digest));
    p.push_blob(name, payload.clone()).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(&empty), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256_digest(&payload), "size": payload.len()}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.manifest.len()},
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    p.push_manifest(name, &digest, OCI_MANIFEST, &manifest)
        .await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
                       "artifactType": "application/vnd.example.signature.v1"}],
    }))
    .unwrap();
    let tag = format!("sha256-{}", hex_of(&subject.digest));
    p.push_manifest(
        name,
        &tag,
        "application/vnd.oci.image.index.v1+json",
        &index,
    )
    .await;
    digest
}

/// The digests a referrers answer of the mirror lists; panics unless it is a 200 image index.
async fn referrers_of(m: &Mirror, img: &Image) -> Vec<String> {
    let r = m
        .get(&format!("/v2/{}/referrers/{}", img.name, img.digest))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "referrers of {}: {body}", img.name);
    index_digests(&serde_json::from_str(&body).unwrap())
}

async fn storage_outage(outage: Outage) {
    let Some(mut weed) = Weed::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let layers = [3 << 20, 64 << 10];
    let mut images = Vec::new();
    for (i, name) in ["pt/cached", "pt/cold", "pt/shared", "pt/after"]
        .into_iter()
        .enumerate()
    {
        let img = build_image(Kind::Oci, 1900 + i as u64, &layers, "amd64", "linux");
        images.push(p.push_image(name, "v1", &img).await);
    }
    let [cached, cold, shared, after] = &images[..] else {
        unreachable!()
    };
    let signature = push_referrer(&p, cold).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_yaml(&format!(
                "{}  breaker:\n    failures: 3\n    open_for: 20s\n    timeout: 1s\n",
                weed.storage_yaml("mirror")
            )),
    )
    .await;
    let bucket = s3_operator(&weed.endpoint, "mirror");
    pull_and_check_oci(&m.hostport(), cached, None).await;
    wait_in_bucket(&bucket, cached).await;

    match outage {
        Outage::Killed => weed.kill(),
        Outage::Stopped => weed.pause(),
    }
    // Requests open the read circuit: each waits on the store at most storage.breaker.timeout,
    // and is then answered from the upstream.
    let small = cached.config.digest.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while circuit_state(&m, "read").await != 2.0 {
        get_blob_checked(&m, cached, &small)
            .await
            .unwrap_or_else(|e| panic!("{outage:?}, before the circuit opened: {e}"));
        assert!(
            Instant::now() < deadline,
            "{outage:?}: the read circuit did not open:\n{}",
            m.log_text()
        );
    }
    let before = StoreCounts::of(&m).await;

    // Cached and uncached images pull whole, from the upstream.
    pull_and_check_oci(&m.hostport(), cached, None).await;
    pull_and_check_oci(&m.hostport(), cold, None).await;

    eight_clients_of_one_uncached_blob(&m, &reg, shared).await;
    pull_and_check_oci(&m.hostport(), shared, None).await;

    // Tag lists and referrers pass through too, with the upstream's answers; the catalog lists
    // what storage holds, so it is unavailable until storage is back.
    let tags = skopeo_list_tags(&m.hostport(), &cached.name).await;
    assert_eq!(tags.as_deref(), Ok(&["v1".to_owned()][..]), "{outage:?}");
    assert_eq!(referrers_of(&m, cold).await, [signature], "{outage:?}");
    let r = m.get("/v2/_catalog").send().await.unwrap();
    expect_oci_error(r, 503, &["UNAVAILABLE"]).await;
    for kind in ["tags", "referrers"] {
        let n = m
            .metric(
                "ocimirror_degraded_served_total",
                &[&format!("kind=\"{kind}\"")],
            )
            .await;
        assert!(
            n >= 1.0,
            "{outage:?}: {kind} not counted as served degraded"
        );
    }

    // No request waited on the store after the circuit opened: every failure that reached it
    // was a probe's (at most one per `open_for`), the rest were refused at once.
    let during = StoreCounts::of(&m).await;
    eprintln!("{outage:?}: before {before:?}, after the pulls {during:?}");
    assert!(
        during.store_failures - before.store_failures <= during.probes - before.probes,
        "{outage:?}: the store was asked beyond the probes: {before:?} -> {during:?}"
    );
    assert!(during.refused - before.refused >= 16.0 - (during.probes - before.probes));
    assert_eq!(circuit_state(&m, "read").await, 2.0);
    // Every blob and manifest request of the three pulls and the eight clients.
    assert!(
        during.degraded - before.degraded >= 8.0 + 3.0 * 3.0,
        "{before:?} -> {during:?}"
    );
    let ready = m.get("/readyz").send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("read circuit"));

    // The store is back: a probe closes the circuit without a restart.
    match outage {
        Outage::Killed => weed.restart().await,
        Outage::Stopped => weed.resume(),
    }
    // Within `open_for` (20 s) of the last refusal, the next request probes.
    let deadline = Instant::now() + Duration::from_secs(90);
    while circuit_state(&m, "read").await != 0.0 {
        get_blob_checked(&m, cached, &small).await.unwrap();
        assert!(
            Instant::now() < deadline,
            "{outage:?}: the read circuit did not close:\n{}",
            m.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing of the outage was committed; what is there is whole.
    let stored = assert_bucket_blobs_whole(&bucket).await;
    for img in [cold, shared] {
        for d in img.all_blobs() {
            assert!(
                !stored.contains(&d.digest),
                "{outage:?}: {} was stored during the outage",
                d.digest
            );
        }
    }
    // The manifest passed through during the outage is stored by its next pull, from memory (its
    // tag is still fresh: no upstream request for it), and its blobs by their fills.
    assert!(!in_bucket(&bucket, &cold.digest).await, "{outage:?}");
    let manifest_gets = reg.count_requests("GET", "/v2/pt/cold/manifests/").await;
    pull_and_check_oci(&m.hostport(), cold, None).await;
    assert!(
        in_bucket(&bucket, &cold.digest).await,
        "{outage:?}: the manifest passed through during the outage was not stored by its next pull"
    );
    let revision = format!(
        "docker/registry/v2/repositories/{}/_manifests/revisions/sha256/{}/link",
        cold.name,
        hex_of(&cold.digest)
    );
    assert!(
        bucket.stat(&revision).await.is_ok(),
        "{outage:?}: {revision}"
    );
    assert_eq!(
        reg.count_requests("GET", "/v2/pt/cold/manifests/").await,
        manifest_gets,
        "{outage:?}: the manifest was fetched again rather than stored from memory"
    );
    wait_in_bucket(&bucket, cold).await;
    // The next miss is committed, and then served from storage.
    pull_and_check_oci(&m.hostport(), after, None).await;
    wait_in_bucket(&bucket, after).await;
    let fetched = reg.count_requests("GET", "/blobs/").await;
    pull_and_check_oci(&m.hostport(), after, None).await;
    assert_eq!(
        reg.count_requests("GET", "/blobs/").await,
        fetched,
        "{outage:?}: a blob committed after the recovery was fetched again"
    );
    assert_bucket_blobs_whole(&bucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_killed_mid_run_pulls_pass_through_and_commit_again_once_it_is_back() {
    storage_outage(Outage::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_hung_mid_run_pulls_pass_through_and_commit_again_once_it_continues() {
    storage_outage(Outage::Stopped).await;
}

/// A mirror of `reg` on `weed`'s bucket `mirror`, tags trusted for an hour, whose read circuit
/// opens after three failures and stays open for the test (no probe), each store operation given
/// a second.
async fn mirror_on_weed(weed: &Weed, opts: MirrorOpts) -> Mirror {
    Mirror::start(opts.tag_ttl("1h").storage_yaml(&format!(
        "{}  breaker:\n    failures: 3\n    open_for: 1h\n    timeout: 1s\n",
        weed.storage_yaml("mirror")
    )))
    .await
}

/// GET `path` (a manifest path asks with the manifest types); expect a 503 `UNAVAILABLE` whose
/// message names the storage and `other`.
async fn expect_both_named(m: &Mirror, path: &str, other: &str) {
    let r = m
        .get(path)
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 503, "{path}: {text}");
    assert_eq!(error_codes(&body), ["UNAVAILABLE"], "{path}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let message = v["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("storage is unavailable"),
        "{path}: {message}"
    );
    assert!(message.contains(other), "{path}: {message}");
}

/// With the read circuit open: a pull of `img` (uncached: its manifest by tag and by digest,
/// its blobs, a HEAD), its tag list and its referrers each get a 503 naming the storage and
/// `other`, and none of them asks the store.
async fn uncached_pull_names_both(m: &Mirror, img: &Image, other: &str) {
    assert_eq!(circuit_state(m, "read").await, 2.0);
    let before = StoreCounts::of(m).await;
    let mut paths = vec![
        format!("/v2/{}/manifests/{}", img.name, img.tag),
        format!("/v2/{}/manifests/{}", img.name, img.digest),
        format!("/v2/{}/tags/list", img.name),
        format!("/v2/{}/referrers/{}", img.name, img.digest),
    ];
    for d in img.all_blobs() {
        paths.push(format!("/v2/{}/blobs/{}", img.name, d.digest));
    }
    for path in &paths {
        expect_both_named(m, path, other).await;
    }
    let big = img.biggest_layer().digest;
    let r = m
        .head(&format!("/v2/{}/blobs/{big}", img.name))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "HEAD {big}");
    // At once: every look-up was refused by the open circuit, none reached the store.
    let after = StoreCounts::of(m).await;
    eprintln!("{other}: before {before:?}, after {after:?}");
    assert_eq!(
        after.store_failures, before.store_failures,
        "a request waited on the store"
    );
    assert_eq!(after.probes, before.probes);
    assert!(
        after.refused - before.refused >= paths.len() as f64 + 1.0,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.degraded, before.degraded,
        "an error counted as served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_killed_and_the_upstream_stopped_uncached_content_is_503_naming_both_at_once() {
    let Some(mut weed) = Weed::start().await else {
        return;
    };
    let mut reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let layers = [1 << 20, 64 << 10];
    let cached = p
        .push_image(
            "both/cached",
            "v1",
            &build_image(Kind::Oci, 1960, &layers, "amd64", "linux"),
        )
        .await;
    let cold = p
        .push_image(
            "both/cold",
            "v1",
            &build_image(Kind::Oci, 1961, &layers, "amd64", "linux"),
        )
        .await;
    let m = mirror_on_weed(&weed, MirrorOpts::upstream(&reg.url())).await;
    pull_and_check_oci(&m.hostport(), &cached, None).await;

    weed.kill();
    // Requests open the read circuit, passed through from the upstream meanwhile.
    let small = cached.config.digest.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while circuit_state(&m, "read").await != 2.0 {
        get_blob_checked(&m, &cached, &small).await.unwrap();
        assert!(Instant::now() < deadline, "the read circuit did not open");
    }
    reg.stop();
    uncached_pull_names_both(&m, &cold, "the upstream is unavailable too").await;
    // What memory holds is still served: the cached tag.
    let r = m.get_manifest(&cached.name, "v1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), cached.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_killed_offline_uncached_content_is_503_naming_both_at_once() {
    let Some(mut weed) = Weed::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg
        .pusher()
        .push_image(
            "both/offline",
            "v1",
            &build_image(Kind::Oci, 1962, &[64 << 10], "amd64", "linux"),
        )
        .await;
    let pushed = reg.count_requests("", "/v2/").await;
    let m = mirror_on_weed(&weed, MirrorOpts::upstream(&reg.url()).mode("offline")).await;
    // Storage up: not cached, and offline says so.
    let r = m.get_manifest(&img.name, "v1").send().await.unwrap();
    expect_oci_error(r, 404, &["MANIFEST_UNKNOWN"]).await;

    weed.kill();
    let path = format!("/v2/{}/manifests/v1", img.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    while circuit_state(&m, "read").await != 2.0 {
        expect_both_named(&m, &path, "the mirror is offline").await;
        assert!(Instant::now() < deadline, "the read circuit did not open");
    }
    uncached_pull_names_both(&m, &img, "the mirror is offline").await;
    assert_eq!(
        reg.count_requests("", "/v2/").await,
        pushed,
        "the offline mirror asked its upstream"
    );
}

/// SeaweedFS stopped (SIGSTOP) while a fill is uploading a 64 MiB layer to it, the upstream held
/// meanwhile so that the upload is caught half-way: the client gets every byte (the fill drops
/// its writer once a write has waited `storage.breaker.timeout`, and serves from its spool);
/// once SeaweedFS continues nothing of that upload is in the bucket, and the next pull stores the
/// layer whole, then serves it from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_hung_mid_upload_leaves_nothing_half_written() {
    let Some(weed) = Weed::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg
        .pusher()
        .push_image(
            "pt/midfill",
            "v1",
            &build_image(Kind::Oci, 1970, &[64 << 20], "amd64", "linux"),
        )
        .await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_yaml(&format!(
                "{}  breaker:\n    failures: 3\n    open_for: 2s\n    timeout: 1s\n",
                weed.storage_yaml("mirror")
            )),
    )
    .await;
    let bucket = s3_operator(&weed.endpoint, "mirror");
    let big = img.biggest_layer();
    let r = m.get_blob(&img.name, &big.digest).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got = Vec::with_capacity(big.size as usize);
    // Two parts (8 MiB each) have been handed to the store's upload by now.
    while got.len() < 20 << 20 {
        let chunk = futures_util::StreamExt::next(&mut body)
            .await
            .expect("body ended early")
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    reg.pause();
    weed.pause();
    reg.resume();
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        got.extend_from_slice(&chunk.expect("the body broke while the store hung"));
    }
    assert_eq!(sha256_digest(&got), big.digest, "{} bytes", got.len());
    let failed_writes = m
        .metric("ocimirror_storage_errors_total", &["op=\"write\""])
        .await;
    assert!(
        failed_writes >= 1.0,
        "the store did not hang under the upload:\n{}",
        m.log_text()
    );

    weed.resume();
    // Once SeaweedFS answers again, what it accepted while stopped has been worked through.
    s3_operator(&weed.endpoint, "mirror")
        .write("after-sigcont", b"x".to_vec())
        .await
        .unwrap();
    assert!(
        !in_bucket(&bucket, &big.digest).await,
        "the upload cut by the outage was published"
    );
    assert_bucket_blobs_whole(&bucket).await;
    // The next pull stores it whole, and the one after is served from the bucket.
    get_blob_checked(&m, &img, &big.digest).await.unwrap();
    wait_digest_in_bucket(&bucket, &big.digest).await;
    assert_bucket_blobs_whole(&bucket).await;
    let fetched = reg
        .count_requests("GET", &format!("/blobs/{}", big.digest))
        .await;
    get_blob_checked(&m, &img, &big.digest).await.unwrap();
    assert_eq!(
        reg.count_requests("GET", &format!("/blobs/{}", big.digest))
            .await,
        fetched,
        "the blob stored after the outage was fetched again"
    );
}
