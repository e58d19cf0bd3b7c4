//! Storage down under a running mirror, with SeaweedFS as the store: killed (SIGKILL) and
//! started again, or stopped (SIGSTOP, a hung store) and continued. Cached and uncached images
//! keep pulling through skopeo with the right digests: once the breaker's read circuit is open
//! misses are passed through from the upstream uncommitted, and no request waits on the store
//! but the breaker's probes; concurrent clients of one uncached blob cost one upstream fetch;
//! once the store is back the next miss is committed, then served from storage.

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

/// Wait (up to 60 s) until every blob of `img` is in the bucket.
async fn wait_in_bucket(bucket: &opendal::Operator, img: &Image) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for d in img.all_blobs() {
        while !in_bucket(bucket, &d.digest).await {
            assert!(
                Instant::now() < deadline,
                "{} of {} not in the bucket after 60 s",
                d.digest,
                img.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
