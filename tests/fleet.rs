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

/// Wait (up to 10 s) until every object of `img` is in the bucket with the right bytes, and
/// each blob is linked into its repository: a fill commits to storage after its clients got
/// their last byte, and links the blob after its commit.
async fn wait_blobs_on_disk(root: &Path, img: &Image) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let link = |d: &str| {
        root.join("docker/registry/v2/repositories")
            .join(&img.name)
            .join("_layers/sha256")
            .join(hex_of(d))
            .join("link")
    };
    let complete = || {
        let blobs = img.all_blobs();
        std::iter::once(img.digest.clone())
            .chain(blobs.iter().map(|d| d.digest.clone()))
            .all(|d| fs::read(blob_data_path(root, &d)).is_ok_and(|b| sha256_digest(&b) == d))
            && blobs.iter().all(|d| link(&d.digest).is_file())
    };
    while !complete() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_blobs_on_disk(root, img);
    for d in img.all_blobs() {
        let l = link(&d.digest);
        assert!(l.is_file(), "{} not linked at {}", d.digest, l.display());
    }
}

/// The S3 keys (relative to the mirror's root) of `img`'s manifest and blobs.
fn blob_keys(img: &Image) -> Vec<String> {
    let mut v = vec![img.digest.clone()];
    v.extend(img.all_blobs().into_iter().map(|d| d.digest));
    v.iter().map(|d| blob_key(d)).collect()
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

on_backends!(replicas_share_content_through_the_store_and_redis: s3s, fake_gcs, azurite);

/// Replica A pulls from the upstream; B then pulls everything from the store and Redis, and C
/// resolves the tag through Redis alone (its links removed from the store): the upstream is
/// asked nothing after A.
async fn replicas_share_content_through_the_store_and_redis(backend: Backend) {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let Some(store) = Store::start(backend).await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("fleet/shared", "v1", 201).await;
    let opts = fleet_opts(&reg, &store.storage_yaml(ROOT), Some(&redis));
    let a = Mirror::start(opts.clone()).await;
    pull_and_check_oci(&a.hostport(), &img, None).await;
    assert!(
        reg.count_requests("GET", "/v2/fleet/shared/blobs/").await >= 4,
        "replica A did not fetch from the upstream"
    );

    let before = reg.requests().await.len();
    let b = Mirror::start(opts.clone()).await;
    let c = Mirror::start(opts.clone()).await;

    // B: tag from Redis, manifest and blobs from the store; nothing from the upstream.
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

    // C, with the tag's links gone from the store: only Redis knows the tag now.
    let (_, v) = redis_tag(&redis, "fleet/shared", "v1").await;
    assert!(v.contains(&img.digest), "tag value {v}");
    let op = store.operator(ROOT);
    let tags = "docker/registry/v2/repositories/fleet/shared/_manifests/tags/";
    let links = s3_keys(&op, tags).await;
    assert!(
        links.iter().any(|k| k.ends_with("/v1/current/link")),
        "no tag link under {tags}: {links:#?}"
    );
    for k in &links {
        op.delete(k).await.unwrap();
    }
    assert_eq!(s3_keys(&op, tags).await, Vec::<String>::new());
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

// ---------------------------------------------------------------------------------------------
// One upstream fetch per blob across the fleet (a Redis lease per digest)
// ---------------------------------------------------------------------------------------------

const FILLS_STARTED: &str = "ocimirror_fills_started_total";
const CACHE_MISSES: &str = "ocimirror_cache_misses_total";
const REMOTE_WAITS: &str = "ocimirror_fill_remote_waits_total";
const UPSTREAM_BLOB_GETS: (&str, &str) = ("ocimirror_upstream_requests_total", "op=\"blob_get\"");

/// sha256 and length of a file, read 1 MiB at a time; `None` when it does not exist.
fn hash_file(path: &Path) -> Option<(u64, String)> {
    use std::io::Read;
    let mut f = fs::File::open(path).ok()?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        ctx.update(&buf[..k]);
        n += k as u64;
    }
    Some((n, format!("sha256:{}", hex::encode(ctx.finish().as_ref()))))
}

/// GET `name@digest` from `m` and hash the body as it streams: (bytes, digest) or what went
/// wrong, as text.
async fn get_and_hash(m: &Mirror, name: &str, digest: &str) -> Result<(u64, String), String> {
    fetch_hash(m.get_blob(name, digest)).await
}

/// Each replica's manifest GET of `img` answers 200 with the upstream's bytes (and writes the
/// layer links, so the blob GETs that follow need no upstream HEAD).
async fn fetch_manifest_everywhere(replicas: &[&Mirror], img: &Image) {
    for (i, m) in replicas.iter().enumerate() {
        let r = m.get_manifest(&img.name, &img.tag).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "manifest from replica {i}");
        assert_eq!(
            r.bytes().await.unwrap(),
            img.manifest,
            "manifest bytes, replica {i}"
        );
    }
}

on_backends!(three_replicas_sixteen_clients_each_one_upstream_fetch: s3s, fake_gcs, azurite);

/// `N` replicas of `reg` on `storage` and `redis`, started together, each having fetched the
/// manifest of a new single-layer image `name:v1` of `size` bytes (so the layer GETs that
/// follow need no upstream HEAD): the replicas, the image and its layer's digest.
async fn replicas_with_big_image<const N: usize>(
    reg: &Registry,
    storage: &str,
    redis: &RedisServer,
    (name, size, seed): (&str, u64, u64),
) -> ([Mirror; N], Image, String) {
    let (img, _) = reg.pusher().push_big_image(name, "v1", size, seed).await;
    let opts = fleet_opts(reg, storage, Some(redis));
    let replicas: Vec<Mirror> =
        futures_util::future::join_all((0..N).map(|_| Mirror::start(opts.clone()))).await;
    fetch_manifest_everywhere(&replicas.iter().collect::<Vec<_>>(), &img).await;
    let digest = img.layers[0].digest.clone();
    let replicas = replicas
        .try_into()
        .unwrap_or_else(|_| unreachable!("{N} replicas started"));
    (replicas, img, digest)
}

/// 3 replicas on one store and one Redis, 16 concurrent cold clients of one 16 MiB blob on
/// each: every client gets every byte right, and the upstream sends the blob once. The commit
/// to the store is slowed down so that the other two replicas are certainly waiting while the
/// first one fills. (16 MiB rather than more: the 48 responses all pass through this test's
/// process, which also serves or forwards to the store, and on a loaded machine gigabytes of
/// that made the test slow, not any more telling. 7 MiB on fake-gcs-server, which takes no
/// object over one upload part.)
async fn three_replicas_sixteen_clients_each_one_upstream_fetch(backend: Backend) {
    const CLIENTS: usize = 16;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let Some(store) = Store::start_slowable(backend).await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let size: u64 = (16 << 20).min(store.max_object());
    let storage = store.storage_yaml(ROOT);
    let ([a, b, c], _, digest) =
        replicas_with_big_image(&reg, &storage, &redis, ("fleet/big", size, 701)).await;
    let replicas = [&a, &b, &c];
    let blob_path = format!("/blobs/{digest}");
    assert_eq!(reg.count_requests("GET", &blob_path).await, 0);

    store.set_slow_big_writes(Duration::from_secs(3));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (r, m) in replicas.iter().enumerate() {
        for i in 0..CLIENTS {
            let url = m.url();
            let digest = digest.clone();
            tasks.push((
                r,
                i,
                tokio::spawn(async move {
                    fetch_hash(client().get(format!("{url}/v2/fleet/big/blobs/{digest}"))).await
                }),
            ));
        }
    }
    let mut wrong = Vec::new();
    for (r, i, t) in tasks {
        let got = t.await.unwrap();
        if got != Ok((size, digest.clone())) {
            wrong.push(format!("replica {r} client {i}: {got:?}"));
        }
    }
    let took = started.elapsed();
    assert!(
        wrong.is_empty(),
        "{} of {} clients did not get the blob:\n{}",
        wrong.len(),
        3 * CLIENTS,
        wrong.join("\n")
    );
    eprintln!("{} clients served in {took:?}", 3 * CLIENTS);

    let gets = reg.count_requests("GET", &blob_path).await;
    let per_replica: Vec<(f64, f64, f64)> = {
        let mut v = Vec::new();
        for m in replicas {
            v.push((
                m.metric(FILLS_STARTED, &[]).await,
                m.metric(REMOTE_WAITS, &["result=\"stored\""]).await,
                m.metric(REMOTE_WAITS, &["result=\"took_over\""]).await,
            ));
        }
        v
    };
    assert_eq!(
        gets, 1,
        "the upstream sent the blob {gets} times to a fleet of 3 (fills started, remote waits \
         stored, took over, per replica: {per_replica:?})"
    );
    let mut fills: Vec<f64> = per_replica.iter().map(|p| p.0).collect();
    fills.sort_by(f64::total_cmp);
    assert_eq!(fills, [0.0, 0.0, 1.0], "fills started per replica");
    for (r, (f, stored, took_over)) in per_replica.iter().enumerate() {
        assert_eq!(*took_over, 0.0, "replica {r} took over a live fill");
        if *f == 0.0 {
            assert!(
                *stored >= 1.0,
                "replica {r} neither filled nor waited for the fleet's fill: {per_replica:?}"
            );
        }
    }
    let mut upstream_gets = 0.0;
    for m in replicas {
        upstream_gets += m
            .metric(UPSTREAM_BLOB_GETS.0, &[UPSTREAM_BLOB_GETS.1])
            .await;
    }
    assert_eq!(
        upstream_gets, 1.0,
        "upstream blob GETs counted by the fleet"
    );

    // The store holds the blob; a later GET on any replica is served from it.
    assert_eq!(
        store.stored(ROOT, &blob_key(&digest)).await,
        Some((size, digest.clone())),
        "stored blob"
    );
    store.set_slow_big_writes(Duration::ZERO);
    assert_eq!(
        get_and_hash(&c, "fleet/big", &digest).await,
        Ok((size, digest.clone()))
    );
    assert_eq!(reg.count_requests("GET", &blob_path).await, 1);
    // Every lease was released.
    assert_eq!(redis.keys("ocimirror:fill:*").await, Vec::<String>::new());
}

/// The replica filling a blob is SIGKILLed while its commit to the bucket hangs: nothing is
/// committed, and a client waiting on another replica gets the blob once the dead holder's
/// lease expired and that replica fetched it itself; the bucket then holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_lease_holder_is_taken_over() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let size: u64 = 64 << 20;
    let s3 = S3Server::start().await;
    let storage = s3.storage_yaml(ROOT);
    let ([mut a, b], img, digest) =
        replicas_with_big_image(&reg, &storage, &redis, ("fleet/tko", size, 702)).await;
    let blob_path = format!("/blobs/{digest}");

    // A's commit will not finish while A lives.
    s3.set_slow_big_writes(Duration::from_secs(120));
    // A's client is served from A's spool: the bytes are verified before the commit.
    assert_eq!(
        get_and_hash(&a, "fleet/tko", &digest).await,
        Ok((size, digest.clone())),
        "A's client"
    );
    assert_eq!(reg.count_requests("GET", &blob_path).await, 1);
    let lease_key = format!("ocimirror:fill:{digest}");
    assert_eq!(
        redis.keys("ocimirror:fill:*").await,
        vec![lease_key.clone()],
        "A holds the fill lease while it commits"
    );
    let data = blob_data_path(&s3.bucket_dir().join(ROOT), &digest);
    assert!(!data.exists(), "committed despite the slow store");

    // B's client waits for A's fill.
    let b_url = b.url();
    let d = digest.clone();
    let waiting = tokio::spawn(async move {
        fetch_hash(
            client()
                .get(format!("{b_url}/v2/fleet/tko/blobs/{d}"))
                .timeout(Duration::from_secs(90)),
        )
        .await
    });
    // B has taken the request in (counted it a miss) and is waiting for the fleet's fill.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.metric(CACHE_MISSES, &["kind=\"blob\""]).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "B did not take its client's request in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !waiting.is_finished(),
        "B answered while A held the lease: {:?}",
        waiting.await
    );
    assert_eq!(
        reg.count_requests("GET", &blob_path).await,
        1,
        "B fetched the blob while A held the lease"
    );

    a.kill();
    let killed = Instant::now();
    s3.set_slow_big_writes(Duration::ZERO);
    // Nothing of A's fill under the data key, on disk or through the S3 API.
    assert!(!data.exists(), "A's fill is visible at {}", data.display());
    let op = s3_operator(&s3.endpoint, ROOT);
    let key = &blob_keys(&img)[2];
    assert!(key.ends_with(&format!("{}/data", hex_of(&digest))), "{key}");
    let st = op.stat(key).await;
    assert!(
        st.as_ref()
            .is_err_and(|e| e.kind() == opendal::ErrorKind::NotFound),
        "{key} after A died: {st:?}"
    );

    let got = tokio::time::timeout(Duration::from_secs(45), waiting)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "B's client had nothing 45 s after A died; B's log:\n{}",
                b.log_text()
            )
        })
        .unwrap();
    let took = killed.elapsed();
    assert_eq!(got, Ok((size, digest.clone())), "B's client");
    eprintln!("B served the blob {took:?} after A died");

    // The bucket holds the blob B fetched, once B's fill (its commit) is over.
    let deadline = Instant::now() + Duration::from_secs(120);
    while b.metric("ocimirror_fills_in_flight", &[]).await > 0.0 {
        assert!(Instant::now() < deadline, "B's fill never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        hash_file(&data),
        Some((size, digest.clone())),
        "stored blob"
    );
    let gets = reg.count_requests("GET", &blob_path).await;
    assert_eq!(gets, 2, "upstream GETs of the blob: A's, then B's takeover");
    assert_eq!(
        b.metric(REMOTE_WAITS, &["result=\"took_over\""]).await,
        1.0,
        "B's takeovers"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.get(&lease_key).await.is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis.get(&lease_key).await, None, "B released its lease");
    // Served from the bucket now.
    assert_eq!(
        get_and_hash(&b, "fleet/tko", &digest).await,
        Ok((size, digest.clone()))
    );
    assert_eq!(reg.count_requests("GET", &blob_path).await, 2);
}

/// examples/fleet.yaml passes `config check`, and a replica started from it, pointed at the
/// test's S3, Redis and upstream through the environment, serves a pull of a repository its
/// allow list names (and refuses one it does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_example_config_checks_and_serves() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet.yaml");
    let check = |env: &[(&str, String)]| {
        let mut cmd = std::process::Command::new(common::ocimirror_bin());
        cmd.args(["config", "check"]).arg(&example);
        for (k, _) in std::env::vars() {
            if k.starts_with("OCIMIRROR_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "config check {} with {env:?}: {}\n{}",
            example.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    };
    check(&[]);

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let img = p.push_oci_image("myorg/app", "v1", 801).await;
    p.push_oci_image("other/app", "v1", 802).await;
    let s3 = S3Server::start().await;
    // The example's cluster section, on loopback, with a secret of the test's.
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("cluster-secret");
    fs::write(&secret, "fleet-example-secret-0123456789\n").unwrap();
    let peer_port = free_port();
    let env = vec![
        ("OCIMIRROR_STORAGE__S3__ENDPOINT", s3.endpoint.clone()),
        ("OCIMIRROR_STORAGE__S3__BUCKET", S3_BUCKET.to_string()),
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_string()),
        ("OCIMIRROR_CACHE__REDIS__URL", redis.url()),
        ("OCIMIRROR_UPSTREAM__URL", reg.url()),
        (
            "OCIMIRROR_CLUSTER__LISTEN",
            format!("127.0.0.1:{peer_port}"),
        ),
        (
            "OCIMIRROR_CLUSTER__ADVERTISE",
            format!("http://127.0.0.1:{peer_port}"),
        ),
        (
            "OCIMIRROR_CLUSTER__SECRET_FILE",
            secret.display().to_string(),
        ),
    ];
    check(&env);
    let mut opts = MirrorOpts::cli(&["--config", &example.display().to_string()]);
    for (k, v) in &env {
        opts = opts.env(k, v);
    }
    // `listen` and `data_dir` come from the harness's --listen and --data-dir.
    let m = Mirror::start(opts).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;

    // The content is at the bucket's top (root: /), the tag in Redis under the example's prefix.
    wait_blobs_on_disk(&s3.bucket_dir(), &img).await;
    let (_, v) = redis_tag(&redis, "myorg/app", "v1").await;
    assert!(v.contains(&img.digest), "tag value {v}");
    assert!(
        files_under(&m.data_dir())
            .iter()
            .all(|p| !p.to_string_lossy().contains("docker/registry")),
        "registry content on the replica's local disk"
    );
    // The example's allow list is in force: other/app is not mirrored.
    let before = reg.requests().await.len();
    let r = m.get_manifest("other/app", "v1").send().await.unwrap();
    let status = r.status().as_u16();
    assert!(
        status == 403 || status == 404,
        "other/app (outside the allow list) answered {status}"
    );
    let asked: Vec<_> = new_requests(&reg, before)
        .await
        .into_iter()
        .filter(|(_, u)| u.contains("/v2/other/app/"))
        .collect();
    assert!(
        asked.is_empty(),
        "the upstream was asked for other/app: {asked:?}"
    );
}

/// A replica that learnt "not in storage" just before the holder committed and released its
/// lease finds the lease free: it must serve the committed blob, not fetch it again. Made
/// deterministic with a store whose "not found" answers arrive late: B's request looks for the
/// blob while A's commit is under way and hears "absent" after A committed and released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_freed_by_a_commit_is_not_a_second_fetch() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let size: u64 = 16 << 20;
    let s3 = S3Server::start().await;
    let storage = s3.storage_yaml(ROOT);
    let ([a, b], _, digest) =
        replicas_with_big_image(&reg, &storage, &redis, ("fleet/race", size, 703)).await;
    let blob_path = format!("/blobs/{digest}");

    // A fills; its commit takes 3 s, during which it holds the lease.
    s3.set_slow_big_writes(Duration::from_secs(3));
    assert_eq!(
        get_and_hash(&a, "fleet/race", &digest).await,
        Ok((size, digest.clone())),
        "A's client"
    );
    let lease_key = format!("ocimirror:fill:{digest}");
    assert!(redis.get(&lease_key).await.is_some(), "A holds the lease");
    let data = blob_data_path(&s3.bucket_dir().join(ROOT), &digest);
    assert!(!data.exists(), "committed before the slow commit");

    // B asks while A commits; the store's "absent" reaches B only once A has committed and
    // released its lease (held back until then, however long the commit takes).
    s3.set_slow_missing_heads(Duration::from_secs(120));
    let b_url = b.url();
    let d = digest.clone();
    let waiting = tokio::spawn(async move {
        fetch_hash(client().get(format!("{b_url}/v2/fleet/race/blobs/{d}"))).await
    });
    // A commits and releases while B's answer is on its way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (!data.exists() || redis.get(&lease_key).await.is_some()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(data.exists(), "A's commit did not land within 60 s");
    assert_eq!(redis.get(&lease_key).await, None, "A released its lease");
    assert!(!waiting.is_finished(), "B answered before its stat did");
    s3.set_slow_missing_heads(Duration::ZERO);

    let got = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("B's client had nothing in 30 s")
        .unwrap();
    assert_eq!(got, Ok((size, digest.clone())), "B's client");
    let gets = reg.count_requests("GET", &blob_path).await;
    assert_eq!(
        gets,
        1,
        "the upstream sent the blob {gets} times: B found the lease free after A's commit and \
         fetched again instead of serving the committed blob (B's fills started: {}, upstream \
         blob GETs: {})",
        b.metric(FILLS_STARTED, &[]).await,
        b.metric(UPSTREAM_BLOB_GETS.0, &[UPSTREAM_BLOB_GETS.1])
            .await
    );
}
