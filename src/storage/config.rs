//! The `storage` section as written in the config file, and its check.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{AzblobConfig, GcsConfig, S3Config};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    pub filesystem: FilesystemConfig,
    /// An S3-compatible bucket (MinIO, SeaweedFS, Ceph, AWS), shared by replicas.
    pub s3: S3Config,
    /// A Google Cloud Storage bucket, shared by replicas.
    pub gcs: GcsConfig,
    /// An Azure Blob Storage container, shared by replicas.
    pub azblob: AzblobConfig,
    /// Never write: misses are streamed through from the upstream and not kept.
    pub read_only: bool,
    /// Stop waiting on a failing store (`breaker.rs`).
    pub breaker: super::breaker::BreakerConfig,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Filesystem,
    S3,
    Gcs,
    Azblob,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    /// The storage root (Distribution's `rootdirectory`); default `<data_dir>/storage`.
    pub root: Option<PathBuf>,
}

impl StorageConfig {
    /// Every problem of the configured backend, keyed within this section (`s3.bucket`).
    pub fn check(&self) -> Result<(), Vec<(String, String)>> {
        let mut problems: Vec<(String, String)> = Vec::new();
        if let Err(ps) = self.breaker.check() {
            problems.extend(ps.into_iter().map(|(k, m)| (format!("breaker.{k}"), m)));
        }
        let (section, checked) = match self.backend {
            StorageBackend::Filesystem => ("", Ok(())),
            StorageBackend::S3 => ("s3", self.s3.validate()),
            StorageBackend::Gcs => ("gcs", self.gcs.validate()),
            StorageBackend::Azblob => ("azblob", self.azblob.validate()),
        };
        if let Err(ps) = checked {
            problems.extend(ps.into_iter().map(|(k, m)| (format!("{section}.{k}"), m)));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The filesystem root: as configured, else under the replica's data directory.
    pub fn root(&self, data_dir: &Path) -> PathBuf {
        self.filesystem
            .root
            .clone()
            .unwrap_or_else(|| data_dir.join("storage"))
    }
}
