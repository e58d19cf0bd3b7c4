//! Azurite (`azurite-blob`, from npm) as a real Azure Blob Storage on a loopback port, with the
//! test container, signed with the well-known development account's key.

use std::fs;

use super::{S3_BUCKET, q, tool_or_skip};

#[path = "../parts/cloud_emulators.rs"]
mod emulators;

pub use emulators::{AZURITE_ACCOUNT, AZURITE_KEY};
use emulators::{Emulator, on_path, start_azurite};

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

    /// The lines under `storage:` for this container, key prefix `root`.
    pub fn storage_yaml(&self, root: &str) -> String {
        format!(
            "  backend: azblob\n  azblob:\n    endpoint: {}\n    account_name: {}\n    \
             container: {}\n    root: {}\n    account_key_file: {}\n",
            q(&self.endpoint),
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
}
