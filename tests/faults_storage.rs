//! Storage that fails under the mirror: the filesystem backend's disk full (a small tmpfs) and a
//! directory of the storage root turned read-only (a read-only bind mount: `chmod` does not stop
//! root). Both need root and mount(2); without them the tests skip (fail with
//! `OCIMIRROR_REQUIRE_ALL`). S3 and Redis outages: see tests/fleet.rs and docs/reliability.md.

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
