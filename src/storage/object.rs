//! A bucket (S3, Google Cloud Storage) or container (Azure Blob Storage) as a [`Storage`], on
//! OpenDAL. Keys live under the configured root prefix exactly as Distribution's drivers lay
//! them out (`<root>/docker/registry/v2/...`), so a bucket a Distribution proxy filled is served
//! as it is, and the other way round.
//!
//! Streamed writes buffer one part at a time: an object that ends within the first part is one
//! upload, a larger one a multipart (S3, GCS) or block (Azure) upload that is published at once
//! on commit. Either way nothing is visible under the key before commit. A writer dropped before
//! commit aborts its upload in the background (where a tokio runtime is still there to run it).

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};

use super::presign::Presigner;
use super::s3::UploadSweeper;
use super::{ByteStream, ObjectMeta, ObjectWriter, Storage, StorageError, check_key};

/// Whole-operation limit (stat, put, one part upload, complete, list page).
const OP_TIMEOUT: Duration = Duration::from_secs(120);
/// Limit for one read or write step of a streamed body.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

fn err(key: &str, e: opendal::Error) -> StorageError {
    if e.kind() == ErrorKind::NotFound {
        StorageError::NotFound(key.to_owned())
    } else {
        StorageError::Io {
            key: key.to_owned(),
            source: std::io::Error::other(e),
        }
    }
}

/// A bucket or container (or a prefix of one) as a [`Storage`].
#[derive(Clone)]
pub struct ObjectStorage {
    op: Operator,
    part_size: usize,
    describe: String,
    /// S3 only: the sweeper of multipart uploads killed writers left behind.
    uploads: Option<UploadSweeper>,
    presigner: Presigner,
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("location", &self.describe)
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl ObjectStorage {
    /// `op` with the timeouts and retries every store gets.
    pub(super) fn from_operator(
        op: Operator,
        part_size: usize,
        describe: String,
        uploads: Option<UploadSweeper>,
    ) -> Result<ObjectStorage, StorageError> {
        let ctx = op
            .context()
            .with_http_transport(super::transport::per_core()?);
        let op = op
            .with_context(ctx)
            .layer(
                TimeoutLayer::new()
                    .with_timeout(OP_TIMEOUT)
                    .with_io_timeout(IO_TIMEOUT),
            )
            .layer(RetryLayer::new().with_jitter().with_max_times(3));
        Ok(ObjectStorage {
            op,
            part_size,
            describe,
            uploads,
            presigner: Presigner::Operator,
        })
    }

    /// Presigned URLs made by `presigner` rather than OpenDAL.
    pub(super) fn with_presigner(mut self, presigner: Presigner) -> ObjectStorage {
        self.presigner = presigner;
        self
    }

    /// One request that needs the bucket and the credentials (a one-key listing of the root), for
    /// a clear error at start rather than at the first pull. Unlike OpenDAL's own check, a missing
    /// bucket is an error.
    pub async fn check(&self) -> Result<(), StorageError> {
        let fail = |e: opendal::Error| StorageError::Io {
            key: self.describe.clone(),
            source: std::io::Error::other(e),
        };
        let mut lister = self.op.lister_with("/").limit(1).await.map_err(fail)?;
        lister.try_next().await.map_err(fail)?;
        Ok(())
    }

    /// `s3://bucket/root at endpoint (region, addressing)`, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }
}

#[async_trait]
impl Storage for ObjectStorage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        check_key(key)?;
        match self.op.stat(key).await {
            Ok(m) if m.is_dir() => Ok(None),
            Ok(m) => Ok(Some(ObjectMeta {
                size: m.content_length(),
                modified: m.last_modified().map(SystemTime::from),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(key, e)),
        }
    }

    async fn read(&self, key: &str) -> Result<Bytes, StorageError> {
        check_key(key)?;
        self.op
            .read(key)
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| err(key, e))
    }

    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        check_key(key)?;
        let empty = || futures_util::stream::empty().boxed();
        if len == Some(0) {
            // No valid HTTP range is empty: answer from a stat.
            return match self.stat(key).await? {
                Some(_) => Ok(empty()),
                None => Err(StorageError::NotFound(key.to_owned())),
            };
        }
        let reader = self.op.reader(key).await.map_err(|e| err(key, e))?;
        let mut stream = match len {
            Some(l) => {
                reader
                    .into_bytes_stream(offset..offset.saturating_add(l))
                    .await
            }
            None => reader.into_bytes_stream(offset..).await,
        }
        .map_err(|e| err(key, e))?;
        // Open the GET now, so a missing key is an error of this call rather than of the stream.
        let size = match stream.metadata().await {
            // The whole object's size, from `Content-Range`.
            Ok(meta) => meta.content_length(),
            // The object exists but ends before `offset`: nothing to read, as on a file.
            Err(e) if e.kind() == ErrorKind::RangeNotSatisfied => return Ok(empty()),
            // Not every store answers a range from the end with 416 (Azurite sends a
            // `bytes 10-9/10` that OpenDAL rejects, fake-gcs-server an error): the object's size
            // says whether the range was past its end.
            Err(e) if offset > 0 && e.kind() != ErrorKind::NotFound => {
                return match self.stat(key).await? {
                    Some(m) if offset >= m.size => Ok(empty()),
                    _ => Err(err(key, e)),
                };
            }
            Err(e) => return Err(err(key, e)),
        };
        // A range past the end is clipped, as on a file; OpenDAL would call the short body an
        // error, so stop after the bytes the server sends.
        let available = size.saturating_sub(offset).min(len.unwrap_or(u64::MAX));
        let owned = key.to_owned();
        let stream = stream.map_err(move |e| StorageError::Io {
            key: owned.clone(),
            source: e,
        });
        Ok(limit(stream, available))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        check_key(key)?;
        self.op
            .write(key, data)
            .await
            .map(|_| ())
            .map_err(|e| err(key, e))
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        check_key(key)?;
        let w = self
            .op
            .writer_with(key)
            .chunk(self.part_size)
            .await
            .map_err(|e| err(key, e))?;
        Ok(Box::new(ObjectWriterImpl {
            key: key.to_owned(),
            inner: Some(w),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        check_key(key)?;
        match self.op.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(key, e)),
        }
    }

    async fn remove_abandoned(&self, age: std::time::Duration) -> Result<usize, StorageError> {
        match &self.uploads {
            Some(u) => u.sweep(age).await,
            None => Ok(0),
        }
    }

    async fn presign_read(
        &self,
        key: &str,
        expiry: Duration,
    ) -> Result<Option<String>, StorageError> {
        check_key(key)?;
        self.presigner.presign_read(&self.op, key, expiry).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        check_key(prefix)?;
        let dir = format!("{prefix}/");
        // Non-recursive: a delimiter listing, so "subdirectories" come back as common prefixes and
        // a prefix with millions of keys below it lists in one page per thousand children.
        // A missing prefix lists as empty on S3; a 404 here means the bucket is missing.
        let entries = self.op.list(&dir).await.map_err(|e| StorageError::Io {
            key: prefix.to_owned(),
            source: std::io::Error::other(e),
        })?;
        let mut names: Vec<String> = entries
            .iter()
            .filter_map(|e| e.path().strip_prefix(&dir))
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|name| !name.is_empty() && !name.contains('/'))
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// The first `n` bytes of `stream`, which is not polled again once they are out.
fn limit(
    stream: impl futures_util::Stream<Item = Result<Bytes, StorageError>> + Send + 'static,
    n: u64,
) -> ByteStream {
    futures_util::stream::try_unfold((Box::pin(stream), n), |(mut stream, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        match stream.try_next().await? {
            Some(mut chunk) => {
                if chunk.len() as u64 > left {
                    chunk.truncate(left as usize);
                }
                let left = left - chunk.len() as u64;
                Ok(Some((chunk, (stream, left))))
            }
            None => Ok(None),
        }
    })
    .boxed()
}

struct ObjectWriterImpl {
    key: String,
    /// `None` once committed.
    inner: Option<opendal::Writer>,
}

#[async_trait]
impl ObjectWriter for ObjectWriterImpl {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let w = self.inner.as_mut().expect("writer used after commit");
        w.write(chunk).await.map_err(|e| err(&self.key, e))
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        let mut w = self.inner.take().expect("writer committed twice");
        match w.close().await {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Err(abort) = w.abort().await {
                    tracing::warn!(key = %self.key, error = %abort, "aborting a failed upload");
                }
                Err(err(&self.key, e))
            }
        }
    }
}

impl Drop for ObjectWriterImpl {
    fn drop(&mut self) {
        let Some(mut w) = self.inner.take() else {
            return;
        };
        // Abort needs a request (when a multipart upload was started); run it in the background.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let key = std::mem::take(&mut self.key);
            rt.spawn(async move {
                if let Err(e) = w.abort().await {
                    tracing::warn!(key = %key, error = %e, "aborting a dropped upload");
                }
            });
        }
    }
}
