//! The descriptor cache and fleet leases on the Redis deployments managed Redis comes as: a
//! Sentinel group that fails its master over in the middle of a run, and a three-node Cluster
//! that loses a node and gets it back. Real `redis-server` processes (Sentinels are
//! `redis-server --sentinel`), real mirrors (the binary) in front of a real Distribution
//! registry, and the library's own Redis client for the leases.
//!
//! Without `redis-server` the tests skip with a message; with `OCIMIRROR_REQUIRE_ALL` set they
//! fail instead.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ocimirror::cache::lease::{LeaseOutcome, Leases};
use ocimirror::cache::{DescriptorCache, ManifestEntry, RedisCache, RedisConfig};
use ocimirror::oci::Digest;

const ROOT: &str = "mirror";
const LEASE_TTL: Duration = Duration::from_secs(60);

/// Pull `img` (manifest by tag, every blob) through `m` over HTTP; what went wrong, if anything.
async fn pull(m: &Mirror, img: &Image) -> Result<(), String> {
    let r = m
        .get_manifest(&img.name, &img.tag)
        .send()
        .await
        .map_err(|e| format!("{}: manifest: {e}", img.name))?;
    if r.status() != 200 {
        return Err(format!("{}: manifest status {}", img.name, r.status()));
    }
    if r.bytes().await.map_err(|e| e.to_string())? != img.manifest {
        return Err(format!("{}: manifest bytes differ", img.name));
    }
    for d in img.all_blobs() {
        let r = m
            .get_blob(&img.name, &d.digest)
            .send()
            .await
            .map_err(|e| format!("{}: blob: {e}", img.name))?;
        if r.status() != 200 {
            return Err(format!("{}: blob status {}", img.name, r.status()));
        }
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        if sha256_digest(&body) != d.digest {
            return Err(format!("{}: blob {} bytes differ", img.name, d.digest));
        }
    }
    Ok(())
}

/// `img` pulled through every replica at once; panics naming what failed.
async fn pull_everywhere(replicas: &[&Mirror], img: &Image, when: &str) {
    let results = futures_util::future::join_all(replicas.iter().map(|m| pull(m, img))).await;
    for (i, r) in results.into_iter().enumerate() {
        if let Err(e) = r {
            panic!("pull {when} through replica {i} failed: {e}");
        }
    }
}

fn cache(url: &str, cluster: Vec<String>) -> RedisCache {
    RedisCache::new(&RedisConfig {
        url: url.into(),
        cluster,
        ..RedisConfig::default()
    })
    .unwrap()
}

/// Two replicas on one bucket, their cache and leases on a Sentinel group's master. The master
/// is killed while both pull: no pull fails, each blob comes from the upstream at most twice
/// (one duplicate fill while no lease store answers), the cache then works on the promoted
/// replica, and a lease taken before the failover is still its holder's afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_mid_run() {
    let Some(mut group) = RedisSentinels::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let mut imgs = Vec::new();
    for i in 0..8 {
        imgs.push(
            reg.pusher()
                .push_oci_image(&format!("ha/sentinel{i}"), "v1", 900 + i)
                .await,
        );
    }
    let s3 = S3Server::start().await;
    let opts = MirrorOpts::upstream(&reg.url())
        .tag_ttl("5m")
        .storage_yaml(&s3.storage_yaml(ROOT))
        .extra(&group.cache_yaml());
    let (a, b) = tokio::join!(Mirror::start(opts.clone()), Mirror::start(opts.clone()));
    let replicas = [&a, &b];

    let holder = cache(&group.url(), Vec::new());
    let lease = "fill:sha256:held-across-the-failover";
    let LeaseOutcome::Acquired(token) = holder.try_acquire(lease, LEASE_TTL, None).await else {
        panic!("no lease from the Sentinel group's master");
    };
    for img in &imgs[..2] {
        pull_everywhere(&replicas, img, "before the failover").await;
    }
    assert!(
        !group.master.keys("ocimirror:tag:*").await.is_empty(),
        "the mirrors wrote nothing to the master"
    );

    // Killed while pulls run; more pulls while the Sentinels elect, and after.
    let old_master = group.master.port;
    group.master.stop();
    let during = async {
        for img in &imgs[2..5] {
            pull_everywhere(&replicas, img, "during the failover").await;
        }
    };
    tokio::join!(during, group.wait_master(group.replica.port));
    assert_ne!(group.master_port().await, old_master);
    for img in &imgs[5..] {
        pull_everywhere(&replicas, img, "after the failover").await;
    }

    for img in &imgs {
        for d in img.all_blobs() {
            let n = reg
                .count_requests("GET", &format!("/blobs/{}", d.digest))
                .await;
            assert!(
                (1..=2).contains(&n),
                "blob {} of {} fetched {n} times from the upstream",
                d.digest,
                img.name
            );
        }
    }

    // The mirrors use the new master (within the reconnect back-off): a tag they have not
    // resolved before is cached there.
    let name = &imgs.last().unwrap().name;
    let deadline = Instant::now() + Duration::from_secs(15);
    for probe in 0.. {
        let img = reg
            .pusher()
            .push_oci_image(name, &format!("p{probe}"), 950 + probe)
            .await;
        pull(&a, &img).await.unwrap();
        if !group
            .replica
            .keys(&format!("ocimirror:tag:*{name}:p*"))
            .await
            .is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no tag written to the promoted master; its keys: {:?}",
            group.replica.keys("*").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The lease is still the holder's: replicated, or taken again on renewal.
    let key = format!("ocimirror:{lease}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(holder.renew(lease, &token, LEASE_TTL).await);
        if group.replica.get(&key).await.as_deref() == Some(token.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease is not its holder's on the new master"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let other = cache(&group.url(), Vec::new());
    assert_eq!(
        other.try_acquire(lease, LEASE_TTL, None).await,
        LeaseOutcome::HeldElsewhere(token.clone())
    );
    // Release is best effort (skipped while the holder backs off from the failover).
    let deadline = Instant::now() + Duration::from_secs(15);
    while group.replica.get(&key).await.is_some() {
        assert!(Instant::now() < deadline, "the lease was never released");
        holder.release(lease, &token).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        other.try_acquire(lease, LEASE_TTL, None).await,
        LeaseOutcome::Acquired(_)
    ));
}

/// A lease that vanished (a failover lost the write that took it) is taken again by its holder
/// on renewal, and one that another replica took meanwhile is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_lease_is_retaken_by_its_holder_only() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let holder = cache(&redis.url(), Vec::new());
    let LeaseOutcome::Acquired(token) = holder.try_acquire("fill:x", LEASE_TTL, None).await else {
        panic!("no lease");
    };
    let mut raw = redis.conn().await;
    let _: i64 = redis::cmd("DEL")
        .arg("ocimirror:fill:x")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(holder.renew("fill:x", &token, LEASE_TTL).await);
    assert_eq!(redis.get("ocimirror:fill:x").await, Some(token.clone()));

    let _: () = redis::cmd("SET")
        .arg("ocimirror:fill:x")
        .arg("someone-else")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!holder.renew("fill:x", &token, LEASE_TTL).await);
    assert_eq!(
        redis.get("ocimirror:fill:x").await.as_deref(),
        Some("someone-else")
    );
}

/// A mirror and the lease client on a three-node Cluster: keys land on every node (each on its
/// slot's), leases are exclusive and released, and with one node killed and started again pulls
/// never fail and the cache writes to that node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_spreads_keys_and_survives_a_node_restart() {
    let Some(mut cluster) = RedisCluster::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let mut imgs = Vec::new();
    for i in 0..6 {
        imgs.push(
            reg.pusher()
                .push_oci_image(&format!("ha/cluster{i}"), "v1", 800 + i)
                .await,
        );
    }
    let s3 = S3Server::start().await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("5m")
            .storage_yaml(&s3.storage_yaml(ROOT))
            .extra(&cluster.cache_yaml()),
    )
    .await;
    for img in &imgs {
        pull(&m, img).await.unwrap();
    }
    // Fill leases come and go (the last fill may still be committing): descriptors only.
    let mut per_node = cluster.keys_per_node("ocimirror:*").await;
    for keys in &mut per_node {
        keys.retain(|k| !k.starts_with("ocimirror:fill:"));
    }
    let total: usize = per_node.iter().map(Vec::len).sum();
    assert_eq!(
        total,
        2 * imgs.len(),
        "a tag and a manifest entry per image: {per_node:#?}"
    );
    assert!(
        per_node.iter().all(|k| !k.is_empty()),
        "keys not on every node: {per_node:#?}"
    );
    assert_eq!(m.metric("ocimirror_cache_errors_total", &[]).await, 0.0);

    let nodes: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://{}", n.addr()))
        .collect();
    let one = cache("", nodes.clone());
    let two = cache("", nodes.clone());
    let names: Vec<String> = (0..24).map(|i| format!("fill:sha256:{i:064x}")).collect();
    let mut tokens = Vec::new();
    for n in &names {
        match one.try_acquire(n, LEASE_TTL, None).await {
            LeaseOutcome::Acquired(t) => tokens.push(t),
            o => panic!("{n}: {o:?}"),
        }
        assert_eq!(
            two.try_acquire(n, LEASE_TTL, None).await,
            LeaseOutcome::HeldElsewhere(tokens.last().cloned().unwrap_or_default())
        );
    }
    let leases = cluster.keys_per_node("ocimirror:fill:*").await;
    assert!(leases.iter().all(|k| !k.is_empty()), "{leases:#?}");
    for (n, t) in names.iter().zip(&tokens) {
        assert!(one.renew(n, t, LEASE_TTL).await, "{n}");
        assert!(!two.renew(n, "not-the-token", LEASE_TTL).await, "{n}");
        one.release(n, t).await;
    }
    // Only this test's leases: the mirror's own fill leases may still be being released.
    let mut leases = cluster.keys_per_node("ocimirror:fill:sha256:0*").await;
    for keys in &mut leases {
        keys.retain(|k| names.iter().any(|n| k.ends_with(n.as_str())));
    }
    assert!(leases.iter().all(Vec::is_empty), "{leases:#?}");

    // One node down (its slots unserved), then back, empty.
    cluster.nodes[1].stop();
    for img in &imgs {
        pull(&m, img).await.unwrap();
    }
    cluster.nodes[1].run().await;
    cluster.wait_ok().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0u64;
    loop {
        let d = Digest::sha256_of(format!("after the restart {i}").as_bytes());
        let e = ManifestEntry {
            media_type: "application/x-probe".into(),
            size: i,
        };
        one.set_manifest(&d, e.clone()).await;
        if one.manifest(&d).await == Some(e)
            && !cluster.nodes[1]
                .keys("ocimirror:manifest:*")
                .await
                .is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache never wrote to the restarted node"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The mirror's own connection found the node again too.
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.nodes[1].keys("ocimirror:tag:*").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the mirror never wrote to the restarted node"
        );
        let n = i % imgs.len() as u64;
        let img = reg
            .pusher()
            .push_oci_image(&format!("ha/cluster{n}"), &format!("p{i}"), 850 + i)
            .await;
        i += 1;
        pull(&m, &img).await.unwrap();
    }
}
