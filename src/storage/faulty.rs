//! A memory store for tests that fails, hangs or refuses bytes on demand, counting the calls
//! that reach it: the one misbehaving store behind every test of what ocimirror does when
//! storage fails (the breaker's circuits, the registry's pass-through).

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteStream, MemoryStorage, ObjectMeta, ObjectWriter, Storage, StorageError};

/// Cheap to clone: every clone is the same store.
#[derive(Clone, Default)]
pub(crate) struct Faulty(Arc<Faults>);

/// What [`Faulty`] does now; flip the flags from the test.
#[derive(Default)]
pub(crate) struct Faults {
    /// What it holds, reachable without faults or counting.
    pub inner: MemoryStorage,
    /// Look-ups, reads and listings fail.
    pub reads_fail: AtomicBool,
    /// Puts, opening writers and deletes fail.
    pub writes_fail: AtomicBool,
    /// Look-ups never answer (a stopped store process).
    pub reads_hang: AtomicBool,
    /// Streamed writes fail though writers open (a full disk).
    pub chunks_fail: AtomicBool,
    /// Calls that reached the store.
    pub calls: AtomicUsize,
}

impl Deref for Faulty {
    type Target = Faults;
    fn deref(&self) -> &Faults {
        &self.0
    }
}

impl Faulty {
    /// Every operation fails (`true`: the store is down) or none does.
    pub fn set_down(&self, down: bool) {
        self.reads_fail.store(down, Ordering::SeqCst);
        self.writes_fail.store(down, Ordering::SeqCst);
    }

    fn check(&self, flag: &AtomicBool, key: &str) -> Result<(), StorageError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if flag.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                key: key.into(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "store down"),
            });
        }
        Ok(())
    }
}

struct FaultyWriter {
    inner: Box<dyn ObjectWriter>,
    store: Faulty,
}

#[async_trait]
impl ObjectWriter for FaultyWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        if self.store.chunks_fail.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                key: "writer".into(),
                source: std::io::Error::other("no space left on device"),
            });
        }
        self.inner.write(chunk).await
    }
    fn local_file(&self) -> Option<std::fs::File> {
        self.inner.local_file()
    }
    async fn commit(self: Box<Self>) -> Result<(), StorageError> {
        self.inner.commit().await
    }
}

#[async_trait]
impl Storage for Faulty {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        if self.reads_hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.check(&self.reads_fail, key)?;
        self.inner.stat(key).await
    }
    async fn read(&self, key: &str) -> Result<Bytes, StorageError> {
        self.check(&self.reads_fail, key)?;
        self.inner.read(key).await
    }
    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        self.check(&self.reads_fail, key)?;
        self.inner.read_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.check(&self.writes_fail, key)?;
        self.inner.put(key, data).await
    }
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.check(&self.writes_fail, key)?;
        Ok(Box::new(FaultyWriter {
            inner: self.inner.writer(key).await?,
            store: self.clone(),
        }))
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.check(&self.writes_fail, key)?;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.check(&self.reads_fail, prefix)?;
        self.inner.list(prefix).await
    }
}
