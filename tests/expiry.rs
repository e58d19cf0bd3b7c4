//! Expiry with real parts: eviction running under concurrent pulls through ocimirror in front of
//! a real Distribution registry, on the filesystem and on S3, and `ocimirror gc`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;

/// An expiry policy that evicts nearly everything as soon as it has been idle for a second.
const AGGRESSIVE: &str = "expiry:\n  max_size: 1KB\n  interval: 1s\n  min_idle: 1s\n";

async fn push_images(p: &Pusher, n: u64) -> Vec<Image> {
    let mut out = Vec::new();
    for i in 0..n {
        let img = build_image(
            Kind::Oci,
            700 + i,
            &[1024 * 1024, 100 * 1024],
            "amd64",
            "linux",
        );
        out.push(p.push_image(&format!("evict/app{i}"), "v1", &img).await);
    }
    out
}

/// Pull `img` by tag over HTTP, pausing `pause` after each chunk of a blob (a slow client keeps
/// streams open across passes), and check every byte. Returns the first failure, and whether
/// it came after the manifest was served (a pull broken in progress).
async fn pull(m: &str, img: &Image, pause: Duration) -> Result<(), (bool, String)> {
    pull_steps(m, img, pause).await
}

async fn pull_steps(m: &str, img: &Image, pause: Duration) -> Result<(), (bool, String)> {
    let before = |e: String| (false, e);
    let after = |e: String| (true, e);
    let c = client();
    let r = c
        .get(format!("{m}/v2/{}/manifests/v1", img.name))
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .map_err(|e| before(format!("manifest: {e}")))?;
    if r.status() != 200 {
        return Err(before(format!("manifest: {}", r.status())));
    }
    let body = r
        .bytes()
        .await
        .map_err(|e| before(format!("manifest body: {e}")))?;
    if body.as_ref() != img.manifest.as_slice() {
        return Err(before("manifest bytes differ".into()));
    }
    for d in img.all_blobs() {
        let r = c
            .get(format!("{m}/v2/{}/blobs/{}", img.name, d.digest))
            .send()
            .await
            .map_err(|e| after(format!("blob {}: {e}", d.digest)))?;
        if r.status() != 200 {
            return Err(after(format!("blob {}: {}", d.digest, r.status())));
        }
        let mut got = Vec::new();
        let mut s = r.bytes_stream();
        while let Some(chunk) = s.next().await {
            got.extend_from_slice(
                &chunk.map_err(|e| after(format!("blob {} body: {e}", d.digest)))?,
            );
            tokio::time::sleep(pause).await;
        }
        if sha256_digest(&got) != d.digest {
            return Err(after(format!(
                "blob {}: {} bytes with the wrong digest",
                d.digest,
                got.len()
            )));
        }
    }
    Ok(())
}

/// Four clients pulling eight images in turn, with idle gaps, while passes evict whatever has
/// been idle for a second; one client reads so slowly that its streams span passes. They run
/// until the test has seen what it waits for (never for a fixed time: on a loaded machine a
/// pull takes longer), up to `CAP`.
struct Pullers {
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<(bool, String)>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How long the pullers may take to show what a test waits for before it fails.
const CAP: Duration = Duration::from_secs(120);

impl Pullers {
    fn start(m: &Mirror, images: &[Image]) -> Pullers {
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for client_no in 0..4 {
            let (url, images) = (m.url(), images.to_vec());
            let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = client_no;
                while !stop.load(Ordering::Relaxed) {
                    let img = &images[i % images.len()];
                    let pause = Duration::from_millis(if client_no == 0 { 40 } else { 1 });
                    match pull(&url, img, pause).await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    i += 1;
                    // Idle gaps, so that content is evicted between pulls.
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
            }));
        }
        Pullers {
            ok,
            failures,
            stop,
            tasks,
        }
    }

    fn pulls(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn failures(&self) -> Vec<(bool, String)> {
        self.failures.lock().unwrap().clone()
    }

    /// Poll `seen` until it holds (or `CAP` passes), then let every pull in progress finish:
    /// how many succeeded, and the failures.
    async fn run_until<F, Fut>(self, mut seen: F) -> (usize, Vec<(bool, String)>)
    where
        F: FnMut(usize, Vec<(bool, String)>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let until = Instant::now() + CAP;
        while Instant::now() < until && !seen(self.pulls(), self.failures()).await {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

/// Online: every pull succeeds, while content is evicted and fetched again.
async fn evict_under_pulls(m: &Mirror, reg: &Registry, images: &[Image]) {
    let layer = &images[0].layers[0].digest;
    let refetched = || async {
        let removed = m.metric("ocimirror_expiry_removed_blobs_total", &[]).await;
        let fetches = reg.count_requests("GET", &format!("/blobs/{layer}")).await;
        (removed, fetches)
    };
    let (pulls, failures) = Pullers::start(m, images)
        .run_until(|pulls, failures| async move {
            if !failures.is_empty() || pulls < 8 {
                return !failures.is_empty();
            }
            let (removed, fetches) = refetched().await;
            removed > 0.0 && fetches >= 2
        })
        .await;
    assert!(
        failures.is_empty(),
        "failed pulls: {failures:?}\n{}",
        m.log_text()
    );
    assert!(pulls >= 8, "only {pulls} pulls completed");
    let (removed, fetches) = refetched().await;
    assert!(removed > 0.0, "no pass removed anything:\n{}", m.log_text());
    // Evicted content was fetched again: the upstream served some layer more than once.
    assert!(
        fetches >= 2,
        "the layer was fetched {fetches} times; nothing was evicted under the pulls"
    );
}

/// With the upstream gone nothing evicted comes back, so a pull that was given its manifest
/// and then lost a blob to a pass would fail: none may. (Pulls of images already evicted fail
/// at the manifest, which is expected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_never_breaks_a_pull_in_progress_without_an_upstream() {
    let mut reg = Registry::start(RegistryOpts::default()).await;
    let images = push_images(&reg.pusher(), 8).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .short_timeouts()
            .extra(AGGRESSIVE),
    )
    .await;
    for img in &images {
        pull(&m.url(), img, Duration::ZERO).await.unwrap();
    }
    reg.stop();
    // Until pulls have both succeeded and met evicted images, and for at least the time the
    // slow client needs to span a few passes.
    let started = Instant::now();
    let (pulls, failures) = Pullers::start(&m, &images)
        .run_until(|pulls, failures| async move {
            pulls >= 4
                && failures.iter().any(|(after, _)| !after)
                && started.elapsed() >= Duration::from_secs(10)
        })
        .await;
    let broken: Vec<_> = failures.iter().filter(|(after, _)| *after).collect();
    assert!(
        broken.is_empty(),
        "pulls broken in progress: {broken:?}\n{}",
        m.log_text()
    );
    assert!(pulls >= 4, "only {pulls} pulls completed: {failures:?}");
    assert!(
        failures.iter().any(|(after, _)| !after),
        "nothing was evicted: every pull found its manifest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_concurrent_pulls_fails_no_pull_filesystem() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let images = push_images(&reg.pusher(), 8).await;
    let mut m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .extra(AGGRESSIVE),
    )
    .await;
    evict_under_pulls(&m, &reg, &images).await;
    // Passes keep removing while the mirror runs; walk the store once nothing moves.
    m.stop();
    // Whatever is left in storage is whole: every blob's bytes match its address. A directory
    // without `data` is a removal cut short by the stop, which is never served.
    let blobs = m.storage_root().join("docker/registry/v2/blobs/sha256");
    for prefix in std::fs::read_dir(&blobs).into_iter().flatten() {
        for dir in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let dir = dir.unwrap();
            let data = match std::fs::read(dir.path().join("data")) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", dir.path().display()),
            };
            let name = dir.file_name().into_string().unwrap();
            assert_eq!(sha256_hex(&data), name, "blob {name} is corrupt");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_concurrent_pulls_fails_no_pull_s3() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let images = push_images(&reg.pusher(), 8).await;
    let s3 = S3Server::start().await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_yaml(&s3.storage_yaml("cache"))
            .extra(AGGRESSIVE),
    )
    .await;
    evict_under_pulls(&m, &reg, &images).await;
}

fn gc(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(common::ocimirror_bin())
        .arg("gc")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn stored_blobs(m: &Mirror) -> HashSet<String> {
    let blobs = m.storage_root().join("docker/registry/v2/blobs/sha256");
    let mut out = HashSet::new();
    for prefix in std::fs::read_dir(&blobs).into_iter().flatten() {
        for dir in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            out.insert(format!(
                "sha256:{}",
                dir.unwrap().file_name().into_string().unwrap()
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_command_reports_removes_and_the_mirror_fetches_again() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let old = p.push_oci_image("gc/old", "v1", 801).await;
    let fresh = p.push_oci_image("gc/fresh", "v1", 802).await;
    // Passes only on demand; records are written within a second.
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .extra("expiry:\n  max_age: 5s\n  interval: 0s\n  min_idle: 1s\n"),
    )
    .await;
    pull_and_check_oci(&m.hostport(), &old, None).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    pull_and_check_oci(&m.hostport(), &fresh, None).await;
    // Let the pull's records reach storage.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = stored_blobs(&m);
    let old_digests: HashSet<String> = std::iter::once(old.digest.clone())
        .chain(old.all_blobs().into_iter().map(|d| d.digest))
        .collect();
    assert!(old_digests.is_subset(&before));

    let (ok, out, err) = gc(&m.config_path(), &["--dry-run", "--json"]);
    assert!(ok, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dry_run"], true);
    let listed: HashSet<String> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, old_digests, "{out}");
    assert_eq!(report["removed_manifests"], 1);
    assert_eq!(stored_blobs(&m), before, "a dry run removes nothing");

    let (ok, out, err) = gc(&m.config_path(), &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("removed: 1 manifests, 5 blobs"), "{out}");
    let after = stored_blobs(&m);
    assert_eq!(&before - &after, old_digests);
    let repo = m
        .storage_root()
        .join("docker/registry/v2/repositories/gc/old/_manifests/tags/v1");
    assert!(!repo.exists(), "the tag's links went with the manifest");

    // The running mirror pulls it again from the upstream, whole.
    let gets = reg.count_requests("GET", "/v2/gc/old/blobs/").await;
    pull_and_check_oci(&m.hostport(), &old, None).await;
    assert!(reg.count_requests("GET", "/v2/gc/old/blobs/").await > gets);
    // And the fresh image was never touched.
    assert!(fresh.all_blobs().iter().all(|d| after.contains(&d.digest)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_command_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!("data_dir: {}\n", q(&dir.path().display().to_string())),
    )
    .unwrap();
    let (ok, _, err) = gc(&cfg, &["--max-size", "huge"]);
    assert!(!ok);
    assert!(err.contains("\"huge\" is not a size"), "{err}");
    let (ok, _, err) = gc(&cfg, &["--max-age", "forever"]);
    assert!(!ok);
    assert!(err.contains("--max-age"), "{err}");
    // An empty store: nothing to do, and it says so.
    let (ok, out, err) = gc(&cfg, &["--max-age", "1d"]);
    assert!(ok, "{err}");
    assert!(out.contains("removed: 0 manifests, 0 blobs"), "{out}");
}
