//! Storage that fails under the mirror: the filesystem backend's disk full (a small tmpfs), a
//! directory of the storage root or the whole root turned read-only (a read-only bind mount or
//! remount: `chmod` does not stop root), and the storage root gone (its path turned into a file,
//! so every access fails). The mounts need root and mount(2); without them those tests skip
//! (fail with `OCIMIRROR_REQUIRE_ALL`). S3 and Redis outages: see tests/faults_outage.rs,
//! tests/faults_passthru.rs, tests/fleet.rs and docs/reliability.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A mount made for a test, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str], target: &Path) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(args)
        .arg(target)
        .status()
        .is_ok_and(|s| s.success());
    if tool_or_skip(ok, "mount(2) as root", "run the tests as root") {
        Some(Mount(target.to_path_buf()))
    } else {
        None
    }
}

/// A full pull over HTTP; every byte checked.
async fn pull_ok(m: &Mirror, img: &Image) {
    let r = m.get_manifest(&img.name, &img.tag).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "manifest of {}", img.name);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    for d in img.all_blobs() {
        let r = m.get_blob(&img.name, &d.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", d.digest);
        assert_eq!(stream_hash(r).await, Ok((d.size, d.digest.clone())));
    }
}

/// Every blob file in storage holds the bytes of its digest (nothing partial or corrupt).
fn assert_stored_blobs_whole(root: &Path) {
    for p in files_under(&root.join("docker/registry/v2/blobs")) {
        if p.file_name().is_some_and(|n| n == "data") {
            let hex = p
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            let got = sha256_digest(&std::fs::read(&p).unwrap());
            assert_eq!(got, format!("sha256:{hex}"), "corrupt blob at {p:?}");
        }
    }
}

async fn wait_stored(root: &Path, digest: &str) -> bool {
    let data = blob_data_path(root, digest);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if data.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A mirror of `reg` on the filesystem store at `root`, tags trusted for an hour.
async fn mirror_on(reg: &Registry, root: &Path) -> Mirror {
    Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_root(root)
            .storage_yaml(&fs_storage_yaml(root)),
    )
    .await
}

/// skopeo pulls `img` through `m`, and every blob of it is then stored under `stored`.
async fn pull_stored(m: &Mirror, img: &Image, stored: &Path) {
    pull_and_check_oci(&m.hostport(), img, None).await;
    for d in img.all_blobs() {
        assert!(
            wait_stored(stored, &d.digest).await,
            "{} not stored",
            d.digest
        );
    }
}

/// Storage on an 8 MiB tmpfs; a 12 MiB blob does not fit. The client still gets every byte
/// (served from the spool), nothing partial is committed, the temp file is removed (the space
/// comes back), and smaller content is then stored as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_serves_the_client_commits_nothing_partial_and_recovers() {
    let dir = tempfile::Builder::new()
        .prefix("ocim-full")
        .tempdir()
        .unwrap();
    let root = dir.path().join("storage");
    std::fs::create_dir(&root).unwrap();
    let Some(_mnt) = mount(&["-t", "tmpfs", "-o", "size=8m", "tmpfs"], &root) else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let (big, _) = p.push_big_image("full/big", "v1", 12 << 20, 51).await;
    let small = p.push_oci_image("full/small", "v1", 52).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).storage_root(&root)).await;

    pull_ok(&m, &big).await;
    assert_eq!(
        circuit_state(&m, "read").await,
        0.0,
        "a write failure opened the read circuit"
    );
    let layer = &big.layers[0].digest;
    // Give the failed write time to clean up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !blob_data_path(&root, layer).exists(),
        "a blob bigger than the disk was committed"
    );
    let leftovers = files_under(&root.join("_ocimirror_tmp"));
    assert!(
        leftovers.is_empty(),
        "a failed write left its temp file, holding the space: {leftovers:?}"
    );
    assert_stored_blobs_whole(&root);

    // Serving goes on, and what fits is stored.
    pull_ok(&m, &small).await;
    for d in small.all_blobs() {
        assert!(
            wait_stored(&root, &d.digest).await,
            "{} not stored",
            d.digest
        );
    }
    pull_ok(&m, &big).await;
    assert_stored_blobs_whole(&root);
}

/// The blobs directory of the storage root made read-only (bind mount): pulls are still served
/// in full from the upstream (caching is lost, not the request), nothing partial is stored, and
/// once the directory is writable again the next pull is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_blob_directory_still_serves_and_recovers() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("ro/app", "v1", 53).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let blobs = m.storage_root().join("docker/registry/v2/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let Some(bind) = mount(&["--bind", blobs.to_str().unwrap()], &blobs) else {
        return;
    };
    let ok = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&blobs)
        .status()
        .unwrap();
    assert!(ok.success(), "remount read-only");
    assert!(
        std::fs::write(blobs.join("probe"), b"x").is_err(),
        "the directory is read-only even for root"
    );

    pull_ok(&m, &img).await;
    assert!(files_under(&blobs).is_empty(), "nothing could be stored");
    assert_stored_blobs_whole(&m.storage_root());
    let r = m.get("/healthz").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    drop(bind);
    pull_ok(&m, &img).await;
    for d in img.all_blobs() {
        assert!(
            wait_stored(&m.storage_root(), &d.digest).await,
            "{} not stored once writable again",
            d.digest
        );
    }
    assert_stored_blobs_whole(&m.storage_root());
}

/// The `storage:` lines of a filesystem store at `root` with a breaker that opens quickly.
fn fs_storage_yaml(root: &Path) -> String {
    format!(
        "  backend: filesystem\n  filesystem:\n    root: {}\n  breaker:\n    failures: 3\n    open_for: 2s\n",
        q(&root.display().to_string())
    )
}

/// Point the symlink `link` at `target`, atomically (a rename over it).
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Four images on a real registry: one pulled before the outage, two asked for during it, one
/// after it.
async fn four_images(reg: &Registry, prefix: &str, seed: u64) -> Vec<Image> {
    let p = reg.pusher();
    let mut images = Vec::new();
    for (i, name) in ["cached", "cold", "shared", "after"]
        .into_iter()
        .enumerate()
    {
        let img = build_image(
            Kind::Oci,
            seed + i as u64,
            &[3 << 20, 64 << 10],
            "amd64",
            "linux",
        );
        images.push(p.push_image(&format!("{prefix}/{name}"), "v1", &img).await);
    }
    images
}

/// The storage root's path turned into a file mid-run (as a root whose mount went away: every
/// access fails, here with ENOTDIR; no privileges needed), then back. Pulls pass through from
/// the upstream with the right digests once the read circuit is open, without the store being
/// asked; concurrent clients of one uncached blob cost one fetch; once the root is back, the
/// next miss is committed and then served from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_root_gone_passes_pulls_through_and_commits_again_once_it_is_back() {
    let dir = tempfile::Builder::new()
        .prefix("ocim-gone")
        .tempdir()
        .unwrap();
    let (real, gone, root) = (
        dir.path().join("real"),
        dir.path().join("gone"),
        dir.path().join("storage"),
    );
    std::fs::create_dir(&real).unwrap();
    std::fs::write(&gone, b"not a directory").unwrap();
    point(&root, &real);
    let reg = Registry::start(RegistryOpts::default()).await;
    let images = four_images(&reg, "gone", 1950).await;
    let [cached, cold, shared, after] = &images[..] else {
        unreachable!()
    };
    let m = mirror_on(&reg, &root).await;
    pull_stored(&m, cached, &real).await;

    point(&root, &gone);
    // The first look-ups fail on the store and open the read circuit; the pull goes on from
    // the upstream.
    pull_and_check_oci(&m.hostport(), cached, None).await;
    assert_eq!(circuit_state(&m, "read").await, 2.0, "{}", m.log_text());
    let before = StoreCounts::of(&m).await;
    pull_and_check_oci(&m.hostport(), cold, None).await;
    eight_clients_of_one_uncached_blob(&m, &reg, shared).await;
    pull_and_check_oci(&m.hostport(), shared, None).await;
    let during = StoreCounts::of(&m).await;
    eprintln!("root gone: before {before:?}, after the pulls {during:?}");
    assert!(
        during.store_failures - before.store_failures <= during.probes - before.probes,
        "the store was asked beyond the probes: {before:?} -> {during:?}"
    );
    assert!(during.degraded - before.degraded >= 8.0 + 2.0 * 4.0);

    point(&root, &real);
    let small = cached.config.digest.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while circuit_state(&m, "read").await != 0.0 {
        get_blob_checked(&m, cached, &small).await.unwrap();
        assert!(Instant::now() < deadline, "the read circuit did not close");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored: Vec<String> = stored_blob_files(&real)
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    for img in [cold, shared] {
        for d in img.all_blobs() {
            assert!(
                !stored.contains(&d.digest),
                "{} stored during the outage",
                d.digest
            );
        }
    }
    pull_and_check_oci(&m.hostport(), after, None).await;
    for d in after.all_blobs() {
        assert!(
            wait_stored(&real, &d.digest).await,
            "{} not stored",
            d.digest
        );
    }
    let fetched = reg.count_requests("GET", "/blobs/").await;
    pull_and_check_oci(&m.hostport(), after, None).await;
    assert_eq!(
        reg.count_requests("GET", "/blobs/").await,
        fetched,
        "a blob committed after the recovery was fetched again"
    );
    assert_stored_blobs_whole(&real);
}

/// The whole storage root remounted read-only (writes fail, reads work): what it holds is
/// served from it (no upstream fetch), new content passes through uncommitted, the write
/// circuit opens and the read circuit stays closed; remounted read-write, the next miss after
/// the write circuit's `open_for` is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_storage_root_serves_what_it_holds_and_passes_new_content_through() {
    let dir = tempfile::Builder::new()
        .prefix("ocim-rofs")
        .tempdir()
        .unwrap();
    let root = dir.path().join("storage");
    std::fs::create_dir(&root).unwrap();
    let Some(_mnt) = mount(&["-t", "tmpfs", "-o", "size=64m", "tmpfs"], &root) else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let images = four_images(&reg, "rofs", 1960).await;
    let [cached, fresh, ..] = &images[..] else {
        unreachable!()
    };
    let m = mirror_on(&reg, &root).await;
    pull_stored(&m, cached, &root).await;
    let remount = |opts: &str| {
        let ok = Command::new("mount")
            .args(["-o", opts])
            .arg(&root)
            .status()
            .unwrap();
        assert!(ok.success(), "mount -o {opts}");
    };
    remount("remount,ro");
    assert!(std::fs::write(root.join("probe"), b"x").is_err());

    let gets = reg.count_requests("GET", "/blobs/").await;
    pull_and_check_oci(&m.hostport(), cached, None).await;
    assert_eq!(
        reg.count_requests("GET", "/blobs/").await,
        gets,
        "stored content was fetched again"
    );
    let before = StoreCounts::of(&m).await;
    pull_and_check_oci(&m.hostport(), fresh, None).await;
    pull_and_check_oci(&m.hostport(), fresh, None).await;
    assert_eq!(circuit_state(&m, "write").await, 2.0, "{}", m.log_text());
    assert_eq!(circuit_state(&m, "read").await, 0.0);
    assert_eq!(
        StoreCounts::of(&m).await.degraded,
        before.degraded,
        "reads work: nothing is degraded"
    );
    for d in fresh.all_blobs() {
        assert!(!blob_data_path(&root, &d.digest).exists());
    }
    // What it holds is still served from it.
    let gets = reg.count_requests("GET", "/blobs/").await;
    pull_and_check_oci(&m.hostport(), cached, None).await;
    assert_eq!(reg.count_requests("GET", "/blobs/").await, gets);

    remount("remount,rw");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fresh
        .all_blobs()
        .iter()
        .all(|d| blob_data_path(&root, &d.digest).exists())
    {
        assert!(
            Instant::now() < deadline,
            "nothing stored once writable again"
        );
        pull_and_check_oci(&m.hostport(), fresh, None).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(circuit_state(&m, "write").await, 0.0);
    let gets = reg.count_requests("GET", "/blobs/").await;
    pull_and_check_oci(&m.hostport(), fresh, None).await;
    assert_eq!(reg.count_requests("GET", "/blobs/").await, gets);
    assert_stored_blobs_whole(&root);
}
