//! A decorator that counts the failures of the storage it wraps in
//! `ocimirror_storage_errors_total{op}` (a missing key is an answer, not a failure). The registry
//! works through it, so every failing storage operation of a request or a fill is counted once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{ByteStream, ObjectMeta, ObjectWriter, Storage, StorageError};

pub struct Counted(pub Arc<dyn Storage>);

fn counted<T>(op: &'static str, r: Result<T, StorageError>) -> Result<T, StorageError> {
    if let Err(e) = &r
        && !e.is_not_found()
        && !matches!(e, StorageError::Unavailable(_))
    {
        metrics::counter!(crate::metrics::STORAGE_ERRORS, "op" => op).increment(1);
    }
    r
}

#[async_trait]
impl Storage for Counted {
    fn reads_refused(&self) -> bool {
        self.0.reads_refused()
    }
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        counted("stat", self.0.stat(key).await)
    }
    async fn read(&self, key: &str) -> Result<Bytes, StorageError> {
        counted("read", self.0.read(key).await)
    }
    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let s = counted("read", self.0.read_range(key, offset, len).await)?;
        Ok(s.map(|r| counted("read", r)).boxed())
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        counted("put", self.0.put(key, data).await)
    }
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let w = counted("write", self.0.writer(key).await)?;
        Ok(Box::new(CountedWriter(w)))
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        counted("delete", self.0.delete(key).await)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        counted("list", self.0.list(prefix).await)
    }
    async fn remove_abandoned(&self, age: Duration) -> Result<usize, StorageError> {
        counted("delete", self.0.remove_abandoned(age).await)
    }
    async fn presign_read(
        &self,
        key: &str,
        expiry: Duration,
    ) -> Result<Option<String>, StorageError> {
        counted("presign", self.0.presign_read(key, expiry).await)
    }

    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.0.local_path(key)
    }
}

struct CountedWriter(Box<dyn ObjectWriter>);

#[async_trait]
impl ObjectWriter for CountedWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        counted("write", self.0.write(chunk).await)
    }
    fn local_file(&self) -> Option<std::fs::File> {
        self.0.local_file()
    }
    async fn commit(self: Box<Self>) -> Result<(), StorageError> {
        counted("commit", self.0.commit().await)
    }
}
