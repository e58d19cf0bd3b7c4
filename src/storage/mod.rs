//! The storage seam: a small object-store interface (keys are `/`-separated paths) that the
//! registry layer writes Distribution's layout through. A write becomes visible only on commit,
//! and a writer dropped before commit publishes nothing.

pub mod breaker;
mod cloud;
pub mod config;
mod counted;
#[cfg(test)]
pub(crate) mod faulty;
mod fs;
mod memory;
mod object;
mod presign;
mod s3;
mod transport;

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub use cloud::{AzblobConfig, GcsConfig};
pub use counted::Counted;
pub use fs::FsStorage;
pub(crate) use fs::file_stream;
pub use memory::MemoryStorage;
pub use object::ObjectStorage;
pub use s3::S3Config;

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("storage I/O error on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid storage key {0:?}")]
    InvalidKey(String),
    /// Not tried: the store failed repeatedly and the breaker is open (`breaker.rs`).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }

    /// The store failed or was not asked (the breaker is open): no answer about the key.
    pub fn is_outage(&self) -> bool {
        matches!(self, StorageError::Io { .. } | StorageError::Unavailable(_))
    }

    /// A copy of the same kind, for an error shared by several callers (`io::Error` is not
    /// `Clone`: its kind and message are kept).
    pub fn duplicate(&self) -> StorageError {
        match self {
            StorageError::NotFound(k) => StorageError::NotFound(k.clone()),
            StorageError::Io { key, source } => StorageError::Io {
                key: key.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StorageError::InvalidKey(k) => StorageError::InvalidKey(k.clone()),
            StorageError::Unavailable(m) => StorageError::Unavailable(m.clone()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// Temporary objects older than this belong to no running writer (fills take minutes, not
/// hours): a process killed mid-write left them. Start-up and expiry passes remove them.
pub const ABANDONED_TEMP_AGE: Duration = Duration::from_secs(6 * 3600);

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Whether reads are refused at once for now (the breaker's read circuit is not closed):
    /// nothing is written meanwhile, and misses pass through from the upstream uncommitted.
    fn reads_refused(&self) -> bool {
        false
    }
    /// Size and modification time, or `None` when the key does not exist.
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;
    /// A whole small object (links, manifests).
    async fn read(&self, key: &str) -> Result<Bytes, StorageError>;
    /// Stream `len` bytes (or to the end) from `offset`.
    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError>;
    /// Write a whole object atomically.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError>;
    /// Start a streamed write that becomes visible under `key` only on [`ObjectWriter::commit`].
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Delete an object; deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Names of the immediate children of the "directory" `prefix` (no trailing slash), sorted.
    /// A missing prefix lists as empty.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Remove what writers killed before commit or clean-up left behind, older than `age` (so
    /// that writers still running, in any process, are untouched). Returns how many.
    async fn remove_abandoned(&self, age: Duration) -> Result<usize, StorageError> {
        let _ = age;
        Ok(0)
    }
    /// A URL that reads `key` without credentials until `expiry` has passed (a presigned
    /// request), for clients sent to the store itself (`storage.redirect`). `None`: this store
    /// cannot hand out such URLs (a filesystem), and the bytes go through the mirror.
    async fn presign_read(
        &self,
        key: &str,
        expiry: Duration,
    ) -> Result<Option<String>, StorageError> {
        let _ = (key, expiry);
        Ok(None)
    }

    /// Where `key`'s object is, when the store is a local filesystem: a connection can then
    /// send a blob from the file itself. `None` for every other store.
    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        let _ = key;
        None
    }
}

#[async_trait]
pub trait ObjectWriter: Send {
    /// Append `chunk`. Once this returns, the bytes are readable through [`Self::local_file`].
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;
    /// A read handle on the local file this writer fills, when the store is a local filesystem.
    /// A fill then serves its clients from the writer's own file instead of writing every byte
    /// a second time into a spool of its own. `None` for every other store.
    fn local_file(&self) -> Option<std::fs::File> {
        None
    }
    /// Publish the object under its key, atomically.
    async fn commit(self: Box<Self>) -> Result<(), StorageError>;
}

/// Keys are built by the registry layer from validated names and digests; this is the last line
/// of defence against a key that would escape the storage root.
pub(crate) fn check_key(key: &str) -> Result<(), StorageError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\0')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(StorageError::InvalidKey(key.chars().take(200).collect()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod suite;
