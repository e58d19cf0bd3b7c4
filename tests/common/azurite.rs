//! Azurite (`azurite-blob`, from npm) as a real Azure Blob Storage on a loopback port, with the
//! test container, signed with the well-known development account's key.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{S3_BUCKET, free_port, q, tail, tool_or_skip};

/// Azurite's development account and key (public, in Microsoft's documentation).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite with the test container; killed on drop.
pub struct Azurite {
    child: Child,
    dir: TempDir,
    /// `http://127.0.0.1:<port>/devstoreaccount1`.
    pub endpoint: String,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- azurite log tail ----\n{}",
                tail(&self.dir.path().join("log"), 30)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    /// `None` (skip) when `azurite-blob` is not on PATH, unless `OCIMIRROR_REQUIRE_ALL`.
    pub async fn start() -> Option<Azurite> {
        let bin = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("azurite-blob"))
                .find(|p| p.is_file())
        });
        if !tool_or_skip(bin.is_some(), "azurite-blob", "npm install -g azurite") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ocim-azurite")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::write(dir.path().join("account-key"), format!("{AZURITE_KEY}\n")).unwrap();
        let log = fs::File::create(dir.path().join("log")).unwrap();
        let port = free_port();
        let child = Command::new(bin.unwrap())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(&data)
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start azurite-blob");
        let az = Azurite {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match create_container(&az.endpoint, S3_BUCKET).await {
                Ok(()) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "Azurite did not come up: {e}\n{}",
                    tail(&az.dir.path().join("log"), 30)
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(az)
    }

    /// The lines under `storage:` for this container, key prefix `root`.
    pub fn storage_yaml(&self, root: &str) -> String {
        format!(
            "  backend: azblob\n  azblob:\n    endpoint: {}\n    account_name: {}\n    \
             container: {}\n    root: {}\n    account_key_file: {}\n",
            q(&self.endpoint),
            q(AZURITE_ACCOUNT),
            q(S3_BUCKET),
            q(root),
            q(&self.dir.path().join("account-key").display().to_string()),
        )
    }
}

/// `PUT ?restype=container`, signed with the account key (Shared Key).
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
        &b64.decode(AZURITE_KEY).unwrap(),
    );
    let sig = b64.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
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
