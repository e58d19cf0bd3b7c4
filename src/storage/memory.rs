//! In-memory backend, for tests and for the behaviour suite's reference semantics.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{ByteStream, ObjectMeta, ObjectWriter, Storage, StorageError, check_key};

#[derive(Default, Clone)]
pub struct MemoryStorage {
    objects: Arc<RwLock<BTreeMap<String, (Bytes, SystemTime)>>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        check_key(key)?;
        self.objects
            .read()
            .expect("lock")
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| StorageError::NotFound(key.to_owned()))
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        check_key(key)?;
        Ok(self
            .objects
            .read()
            .expect("lock")
            .get(key)
            .map(|(b, t)| ObjectMeta {
                size: b.len() as u64,
                modified: Some(*t),
            }))
    }

    async fn read(&self, key: &str) -> Result<Bytes, StorageError> {
        self.get(key)
    }

    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let data = self.get(key)?;
        let start = (offset as usize).min(data.len());
        let end = len.map_or(data.len(), |l| (start + l as usize).min(data.len()));
        let slice = data.slice(start..end);
        Ok(futures_util::stream::once(async move { Ok(slice) }).boxed())
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        check_key(key)?;
        self.objects
            .write()
            .expect("lock")
            .insert(key.to_owned(), (data, SystemTime::now()));
        Ok(())
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        check_key(key)?;
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            key: key.to_owned(),
            buf: Vec::new(),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        check_key(key)?;
        self.objects.write().expect("lock").remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        check_key(prefix)?;
        let dir = format!("{prefix}/");
        let objects = self.objects.read().expect("lock");
        let mut names: Vec<String> = objects
            .range(dir.clone()..)
            .take_while(|(k, _)| k.starts_with(&dir))
            .filter_map(|(k, _)| k[dir.len()..].split('/').next().map(str::to_owned))
            .collect();
        names.dedup();
        Ok(names)
    }
}

struct MemoryWriter {
    store: MemoryStorage,
    key: String,
    buf: Vec<u8>,
}

#[async_trait]
impl ObjectWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StorageError> {
        let MemoryWriter { store, key, buf } = *self;
        store.put(&key, Bytes::from(buf)).await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn behaviour_suite() {
        super::super::suite::run(&super::MemoryStorage::new()).await;
    }
}
