//! Filesystem backend. Objects are plain files under a root, so the root of a Distribution
//! registry (`rootdirectory`) is read and written as it is. Commits are temp file + rename.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::os::unix::fs::FileExt;

use super::{ByteStream, ObjectMeta, ObjectWriter, Storage, StorageError, check_key};

/// Read size for streamed objects: large enough to amortise the blocking-pool hop per read,
/// small enough that many concurrent downloads keep memory flat.
const READ_CHUNK: usize = 128 * 1024;
/// Temp files live beside, not inside, `docker/`, so Distribution never sees them.
const TMP_DIR: &str = "_ocimirror_tmp";

pub struct FsStorage {
    root: PathBuf,
}

impl FsStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsStorage { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// Remove temp files older than `age`: writes abandoned by a process that was killed before
    /// it could commit or clean up. Returns how many were removed. The age keeps files of
    /// writers still running (in this or another process sharing the root) out of reach.
    pub async fn remove_abandoned_temp_files(&self, age: std::time::Duration) -> usize {
        let dir = self.root.join(TMP_DIR);
        let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
            return 0;
        };
        let mut removed = 0;
        while let Ok(Some(entry)) = rd.next_entry().await {
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e >= age);
            if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
                removed += 1;
            }
        }
        removed
    }

    async fn temp_path(&self) -> Result<PathBuf, StorageError> {
        let dir = self.root.join(TMP_DIR);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io(TMP_DIR, e))?;
        Ok(dir.join(uuid::Uuid::new_v4().to_string()))
    }
}

/// `len` bytes (or all) of `file` from `offset`, as chunks each read on the blocking pool straight
/// into the buffer it is sent in: `tokio::fs::File` reads into a buffer of its own and copies
/// out of it, a copy of every byte served. A file shorter than asked ends the stream early, as a
/// reader would.
pub(crate) fn file_stream(
    file: std::sync::Arc<std::fs::File>,
    offset: u64,
    len: Option<u64>,
    key: String,
) -> ByteStream {
    let end = len.map(|l| offset.saturating_add(l));
    futures_util::stream::try_unfold(offset, move |at| {
        let (file, key) = (file.clone(), key.clone());
        async move {
            let want = end.map_or(READ_CHUNK as u64, |e| {
                e.saturating_sub(at).min(READ_CHUNK as u64)
            });
            if want == 0 {
                return Ok(None);
            }
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(want as usize);
                rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut buf), at)
                    .map(|_| buf)
                    .map_err(std::io::Error::from)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| io(&key, e))?;
            if read.is_empty() {
                return Ok(None);
            }
            let next = at + read.len() as u64;
            Ok(Some((Bytes::from(read), next)))
        }
    })
    .boxed()
}

fn io(key: &str, source: std::io::Error) -> StorageError {
    if source.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound(key.to_owned())
    } else {
        StorageError::Io {
            key: key.to_owned(),
            source,
        }
    }
}

async fn publish(tmp: &Path, dest: &Path, key: &str) -> Result<(), StorageError> {
    // A delete that empties the destination's directory removes it; one racing with this may
    // remove it between the two steps, so a vanished directory is made again, a few times.
    let mut tries = 0;
    loop {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io(key, e))?;
        }
        match tokio::fs::rename(tmp, dest).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
            r => return r.map_err(|e| io(key, e)),
        }
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                size: m.len(),
                modified: m.modified().ok(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(key, e)),
        }
    }

    async fn read(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = self.path(key)?;
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| io(key, e))
    }

    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let path = self.path(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io(key, e))?
            .into_std()
            .await;
        Ok(file_stream(
            std::sync::Arc::new(file),
            offset,
            len,
            key.to_owned(),
        ))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        let tmp = self.temp_path().await?;
        if let Err(e) = tokio::fs::write(&tmp, &data).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(key, e));
        }
        let r = publish(&tmp, &dest, key).await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        r
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let dest = self.path(key)?;
        let tmp = self.temp_path().await?;
        // Readable too: a fill serves its clients from this file as it is written.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(|e| io(key, e))?
            .into_std()
            .await;
        Ok(Box::new(FsWriter {
            key: key.to_owned(),
            dest,
            tmp: Some(tmp),
            file: Some(file),
            at: 0,
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(key, e)),
        }
        // Directories are not objects: one left empty would still list (a tag, a repository),
        // so remove the empty ones up to the root. `remove_dir` refuses a directory that is not
        // empty, and a writer racing with this recreates its directory (see `publish`).
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root
                || !d.starts_with(&self.root)
                || tokio::fs::remove_dir(d).await.is_err()
            {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    async fn remove_abandoned(&self, age: std::time::Duration) -> Result<usize, StorageError> {
        Ok(self.remove_abandoned_temp_files(age).await)
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let path = self.path(prefix)?;
        let mut rd = match tokio::fs::read_dir(&path).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(prefix, e)),
        };
        let mut names = Vec::new();
        while let Some(entry) = rd.next_entry().await.map_err(|e| io(prefix, e))? {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

struct FsWriter {
    key: String,
    dest: PathBuf,
    tmp: Option<PathBuf>,
    file: Option<std::fs::File>,
    /// Bytes written so far: where the next chunk goes.
    at: u64,
}

#[async_trait]
impl ObjectWriter for FsWriter {
    /// Written in place on the runtime's thread, as a fill's spool is: a write lands in the
    /// page cache, cheaper than a hop to the blocking pool and a copy into a buffer of its own.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let file = self.file.as_ref().expect("writer used after commit");
        file.write_all_at(&chunk, self.at)
            .map_err(|e| io(&self.key, e))?;
        self.at += chunk.len() as u64;
        Ok(())
    }

    fn local_file(&self) -> Option<std::fs::File> {
        self.file.as_ref()?.try_clone().ok()
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        let file = self.file.take().expect("writer committed twice");
        // Data must be on disk before the rename makes it visible, or a crash could publish a
        // hole-filled blob under a content address.
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| io(&self.key, e))?;
        let tmp = self.tmp.take().expect("temp path present until commit");
        let r = publish(&tmp, &self.dest, &self.key).await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        r
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn behaviour_suite() {
        let dir = tempfile::tempdir().unwrap();
        super::super::suite::run(&FsStorage::new(dir.path())).await;
    }

    #[tokio::test]
    async fn abandoned_temp_files_are_removed_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::new(dir.path());
        let tmp = dir.path().join(TMP_DIR);
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("old"), b"x").unwrap();
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(tmp.join("old"))
            .unwrap()
            .set_modified(past)
            .unwrap();
        std::fs::write(tmp.join("fresh"), b"x").unwrap();
        let n = s
            .remove_abandoned_temp_files(std::time::Duration::from_secs(3600))
            .await;
        assert_eq!(n, 1);
        assert!(!tmp.join("old").exists());
        assert!(tmp.join("fresh").exists());
    }

    #[tokio::test]
    async fn a_writers_local_file_reads_what_was_written_and_becomes_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::new(dir.path());
        let mut w = s.writer("a/b").await.unwrap();
        let file = w
            .local_file()
            .expect("a filesystem writer has a local file");
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        let mut buf = [0u8; 6];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello ");
        w.write(Bytes::from_static(b"world")).await.unwrap();
        assert!(
            s.stat("a/b").await.unwrap().is_none(),
            "visible before commit"
        );
        w.commit().await.unwrap();
        assert_eq!(&s.read("a/b").await.unwrap()[..], b"hello world");
        // The handle now reads the published object itself.
        let mut all = [0u8; 11];
        file.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(&all, b"hello world");
        assert!(
            std::fs::read_dir(dir.path().join(TMP_DIR))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[tokio::test]
    async fn dropped_writer_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::new(dir.path());
        let mut w = s.writer("a/b").await.unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        drop(w);
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join(TMP_DIR))
            .unwrap()
            .collect();
        assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    }
}
