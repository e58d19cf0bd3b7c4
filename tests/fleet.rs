//! Replicas of ocimirror sharing their state: S3 storage (s3s-fs in-process, SeaweedFS as a
//! child process) and a Redis descriptor cache (a real `redis-server`), in front of a real
//! Distribution registry. Black-box: only the binary, its config, its HTTP API and what it leaves
//! in the bucket and in Redis are looked at.
//!
//! Without `redis-server` (or `weed` for the SeaweedFS test) the tests that need it skip with a
//! message; with `OCIMIRROR_REQUIRE_ALL` set they fail instead.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Key prefix of the mirrors in the bucket (Distribution's `rootdirectory`).
const ROOT: &str = "mirror";
const CACHE_ERRORS: &str = "ocimirror_cache_errors_total";
const REDIS: &str = "backend=\"redis\"";

/// A mirror of `reg` on the S3 `storage` section, with `redis` as its cache (or the in-memory
/// one), tag_ttl 5m.
fn fleet_opts(reg: &Registry, storage_yaml: &str, redis: Option<&RedisServer>) -> MirrorOpts {
    let o = MirrorOpts::upstream(&reg.url())
        .tag_ttl("5m")
        .storage_yaml(storage_yaml);
    match redis {
        Some(r) => o.extra(&r.cache_yaml()),
        None => o,
    }
}

/// `<bucket>/<ROOT>/docker/registry/v2/repositories/<name>`, on s3s-fs's disk.
fn repo_dir(s3: &S3Server, name: &str) -> PathBuf {
    s3.bucket_dir()
        .join(ROOT)
        .join("docker/registry/v2/repositories")
        .join(name)
}

/// Every (method, uri) the upstream completed after the first `since`.
async fn new_requests(reg: &Registry, since: usize) -> Vec<(String, String)> {
    reg.requests().await.split_off(since)
}

/// The manifest and every blob of `img` are objects in the bucket (s3s-fs's files under `root`),
/// each holding the right bytes.
fn assert_blobs_on_disk(root: &Path, img: &Image) {
    let manifest = blob_data_path(root, &img.digest);
    let got = fs::read(&manifest).unwrap_or_else(|e| {
        panic!(
            "manifest {} not in the bucket at {} ({e}); objects there: {:#?}",
            img.digest,
            manifest.display(),
            files_under(root)
        )
    });
    assert_eq!(got, img.manifest, "stored manifest bytes");
    for d in img.all_blobs() {
        let p = blob_data_path(root, &d.digest);
        let data = fs::read(&p).unwrap_or_else(|e| {
            panic!(
                "blob {} not in the bucket at {} ({e})",
                d.digest,
                p.display()
            )
        });
        assert_eq!(data.len() as u64, d.size, "size of stored {}", d.digest);
        assert_eq!(
            sha256_digest(&data),
            d.digest,
            "stored bytes of {}",
            d.digest
        );
    }
}

/// Wait (up to 10 s) until every object of `img` is in the bucket with the right bytes: a fill
/// commits to storage after its clients got their last byte.
async fn wait_blobs_on_disk(root: &Path, img: &Image) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let complete = || {
        std::iter::once(img.digest.clone())
            .chain(img.all_blobs().into_iter().map(|d| d.digest))
            .all(|d| fs::read(blob_data_path(root, &d)).is_ok_and(|b| sha256_digest(&b) == d))
    };
    while !complete() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_blobs_on_disk(root, img);
}

/// The S3 keys (relative to the mirror's root) of `img`'s manifest and blobs.
fn blob_keys(img: &Image) -> Vec<String> {
    let mut v = vec![img.digest.clone()];
    v.extend(img.all_blobs().into_iter().map(|d| d.digest));
    v.iter()
        .map(|d| {
            let hex = hex_of(d);
            format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
        })
        .collect()
}

/// The Redis key and value of `name:tag`'s tag entry; panics (listing the keys) when absent.
async fn redis_tag(redis: &RedisServer, name: &str, tag: &str) -> (String, String) {
    let keys = redis.keys(&format!("ocimirror:tag:*{name}:{tag}")).await;
    let all = redis.keys("*").await;
    assert_eq!(
        keys.len(),
        1,
        "one Redis tag key for {name}:{tag} expected; all keys: {all:#?}"
    );
    let v = redis.get(&keys[0]).await.expect("tag value");
    (keys[0].clone(), v)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_on_s3_and_redis_serves_pulls() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("fleet/app", "v1", 101).await;
    let s3 = S3Server::start().await;
    let m = Mirror::start(fleet_opts(&reg, &s3.storage_yaml(ROOT), Some(&redis))).await;

    pull_and_check_oci(&m.hostport(), &img, None).await;
    let raw = skopeo_inspect_raw(&format!("{}/fleet/app:v1", m.hostport()), None)
        .await
        .unwrap();
    assert_eq!(raw, img.manifest);

    // Content is in the bucket, in Distribution's layout under the root, byte for byte.
    let root = s3.bucket_dir().join(ROOT);
    wait_blobs_on_disk(&root, &img).await;
    let link = repo_dir(&s3, "fleet/app").join("_manifests/tags/v1/current/link");
    assert_eq!(
        fs::read_to_string(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display())),
        img.digest,
        "tag link in the bucket"
    );
    for d in img.layers.iter() {
        let l = repo_dir(&s3, "fleet/app")
            .join("_layers/sha256")
            .join(hex_of(&d.digest))
            .join("link");
        assert!(l.is_file(), "layer link {} missing", l.display());
    }
    // The same through the S3 API.
    let op = s3_operator(&s3.endpoint, ROOT);
    let keys = s3_keys(&op, "docker/registry/v2/blobs/").await;
    for k in blob_keys(&img) {
        assert!(keys.contains(&k), "{k} not listed in the bucket: {keys:#?}");
    }
    // Nothing went to local storage: the data dir only holds the spool.
    let local: Vec<PathBuf> = files_under(&m.data_dir());
    assert!(
        local
            .iter()
            .all(|p| !p.to_string_lossy().contains("docker/registry")),
        "registry content on the local disk: {local:#?}"
    );

    // The descriptors are in Redis.
    let (_, v) = redis_tag(&redis, "fleet/app", "v1").await;
    assert!(v.contains(&img.digest), "tag value {v}");
    let mv = redis
        .get(&format!("ocimirror:manifest:{}", img.digest))
        .await
        .unwrap_or_else(|| panic!("no manifest entry in Redis"));
    assert!(mv.contains(OCI_MANIFEST), "manifest value {mv}");
    assert_eq!(m.metric(CACHE_ERRORS, &[]).await, 0.0);

    // Each blob came from the upstream once.
    for d in img.all_blobs() {
        let n = reg
            .count_requests("GET", &format!("/blobs/{}", d.digest))
            .await;
        assert_eq!(n, 1, "blob {} fetched {n} times from upstream", d.digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_content_through_s3_and_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("fleet/shared", "v1", 201).await;
    let s3 = S3Server::start().await;
    let opts = fleet_opts(&reg, &s3.storage_yaml(ROOT), Some(&redis));
    let a = Mirror::start(opts.clone()).await;
    pull_and_check_oci(&a.hostport(), &img, None).await;
    assert!(
        reg.count_requests("GET", "/v2/fleet/shared/blobs/").await >= 4,
        "replica A did not fetch from the upstream"
    );

    let before = reg.requests().await.len();
    let b = Mirror::start(opts.clone()).await;
    let c = Mirror::start(opts.clone()).await;

    // B: tag from Redis, manifest and blobs from S3; nothing from the upstream.
    pull_and_check_oci(&b.hostport(), &img, None).await;
    let raw = skopeo_inspect_raw(&format!("{}/fleet/shared:v1", b.hostport()), None)
        .await
        .unwrap();
    assert_eq!(raw, img.manifest);
    let fresh = new_requests(&reg, before).await;
    assert!(
        fresh.is_empty(),
        "replica B sent the upstream {} request(s): {fresh:#?}",
        fresh.len()
    );

    // C, with the tag's links gone from the bucket: only Redis knows the tag now.
    let (_, v) = redis_tag(&redis, "fleet/shared", "v1").await;
    assert!(v.contains(&img.digest), "tag value {v}");
    let tags = repo_dir(&s3, "fleet/shared").join("_manifests/tags");
    assert!(tags.is_dir(), "no tag links at {}", tags.display());
    fs::remove_dir_all(&tags).unwrap();
    pull_and_check_oci(&c.hostport(), &img, None).await;
    let fresh = new_requests(&reg, before).await;
    assert!(
        fresh.is_empty(),
        "replica C sent the upstream {} request(s) (the tag was not resolved through Redis): \
         {fresh:#?}",
        fresh.len()
    );
    for m in [&a, &b, &c] {
        assert_eq!(m.metric(CACHE_ERRORS, &[]).await, 0.0, "cache errors");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_does_not_fail_pulls() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let img1 = p.push_oci_image("fleet/down", "v1", 301).await;
    let img2 = p.push_oci_image("fleet/down", "v2", 302).await;
    let img3 = p.push_oci_image("fleet/down", "v3", 303).await;
    let s3 = S3Server::start().await;
    let m = Mirror::start(fleet_opts(&reg, &s3.storage_yaml(ROOT), Some(&redis))).await;
    pull_and_check_oci(&m.hostport(), &img1, None).await;
    let errors0 = m.metric(CACHE_ERRORS, &[REDIS]).await;
    assert_eq!(errors0, 0.0, "cache errors with Redis up");

    redis.stop();
    // Warm: the tag resolves from the bucket's link; no upstream request, no slowness.
    let before = reg.requests().await.len();
    let t = Instant::now();
    pull_and_check_oci(&m.hostport(), &img1, None).await;
    let took = t.elapsed();
    let fresh = new_requests(&reg, before).await;
    assert!(
        fresh.is_empty(),
        "warm pull with Redis down went to the upstream: {fresh:#?}"
    );
    assert!(took < Duration::from_secs(15), "warm pull took {took:?}");
    // Cold: fetched from the upstream and stored.
    pull_and_check_oci(&m.hostport(), &img2, None).await;
    wait_blobs_on_disk(&s3.bucket_dir().join(ROOT), &img2).await;
    let errors1 = m.metric(CACHE_ERRORS, &[REDIS]).await;
    assert!(
        errors1 > errors0,
        "{CACHE_ERRORS} did not increase with Redis down ({errors1})"
    );

    // Redis back (empty) on the same port: errors stop increasing once it reconnected.
    redis.run().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let e0 = m.metric(CACHE_ERRORS, &[REDIS]).await;
        let r = m.get_manifest("fleet/down", "v1").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let e1 = m.metric(CACHE_ERRORS, &[REDIS]).await;
        if e1 == e0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{CACHE_ERRORS} still increasing 15 s after Redis came back ({e1})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the cache is written again: a cold pull records its tag in Redis, without errors.
    let e0 = m.metric(CACHE_ERRORS, &[REDIS]).await;
    pull_and_check_oci(&m.hostport(), &img3, None).await;
    assert_eq!(
        m.metric(CACHE_ERRORS, &[REDIS]).await,
        e0,
        "errors after recovery"
    );
    let (_, v) = redis_tag(&redis, "fleet/down", "v3").await;
    assert!(v.contains(&img3.digest), "tag value {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_replica_serves_from_s3() {
    let mut reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("fleet/off", "v1", 401).await;
    let s3 = S3Server::start().await;
    let mut a = Mirror::start(fleet_opts(&reg, &s3.storage_yaml(ROOT), None)).await;
    pull_and_check_oci(&a.hostport(), &img, None).await;
    wait_blobs_on_disk(&s3.bucket_dir().join(ROOT), &img).await;
    a.kill();
    reg.stop();

    // A fresh replica, memory cache, no upstream: everything comes from the bucket.
    let off = Mirror::start(
        MirrorOpts::default()
            .mode("offline")
            .storage_yaml(&s3.storage_yaml(ROOT)),
    )
    .await;
    pull_and_check_oci(&off.hostport(), &img, None).await;
    let out = tempfile::TempDir::new().unwrap();
    skopeo_copy(
        &format!("{}/fleet/off@{}", off.hostport(), img.digest),
        &format!("oci:{}:t", out.path().display()),
        false,
        None,
    )
    .await
    .unwrap();
    assert_image_in(&read_oci_layout(out.path()), &img);
    // What was never pulled is unknown, not an error of the store.
    expect_oci_error(
        off.get_manifest("fleet/off", "v2").send().await.unwrap(),
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
}

/// A replica stopped with SIGTERM right after serving a pull (a rolling update, a scale-down)
/// still stores what it served: the blobs whose clients are done but whose commit to a slow S3
/// is under way are committed before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_pending_blob_commits_finish() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("fleet/term", "v1", 601).await;
    let s3 = S3Server::start().await;
    let mut a = Mirror::start(fleet_opts(&reg, &s3.storage_yaml(ROOT), None)).await;
    // Only the 3 MiB layer is a big write.
    s3.set_slow_big_writes(Duration::from_secs(2));
    pull_and_check_oci(&a.hostport(), &img, None).await;
    let status = a.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let big = img.biggest_layer();
    let p = blob_data_path(&s3.bucket_dir().join(ROOT), &big.digest);
    assert!(
        p.is_file(),
        "the {} byte layer {} was served but is not in the bucket after a graceful stop: the \
         process exited before its fill committed; mirror log:\n{}",
        big.size,
        big.digest,
        a.log_text()
    );
    assert_blobs_on_disk(&s3.bucket_dir().join(ROOT), &img);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_backend_end_to_end() {
    let Some(weed) = Weed::start().await else {
        return;
    };
    let mut reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("fleet/weed", "v1", 501).await;
    let opts = fleet_opts(&reg, &weed.storage_yaml(ROOT), None);
    let mut m = Mirror::start(opts.clone()).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;

    let op = s3_operator(&weed.endpoint, ROOT);
    let wanted = blob_keys(&img);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut keys = s3_keys(&op, "docker/registry/v2/").await;
    while !wanted.iter().all(|k| keys.contains(k)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        keys = s3_keys(&op, "docker/registry/v2/").await;
    }
    for k in wanted {
        assert!(keys.contains(&k), "{k} not in SeaweedFS: {keys:#?}");
        let data = op.read(&k).await.unwrap().to_vec();
        assert_eq!(format!("sha256:{}", sha256_hex(&data)), k_digest(&k));
    }
    let link = "docker/registry/v2/repositories/fleet/weed/_manifests/tags/v1/current/link";
    assert_eq!(op.read(link).await.unwrap().to_vec(), img.digest.as_bytes());

    // Restarted with the upstream gone: the fresh tag and the content come from SeaweedFS.
    reg.stop();
    m.restart(None).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    // And offline.
    m.restart(Some(opts.mode("offline"))).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    expect_oci_error(
        m.get_manifest("fleet/weed", "v2").send().await.unwrap(),
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
}

/// `.../blobs/sha256/<aa>/<hex>/data` -> `sha256:<hex>`.
fn k_digest(key: &str) -> String {
    let parts: Vec<&str> = key.rsplit('/').collect();
    format!("sha256:{}", parts[1])
}
