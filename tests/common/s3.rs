//! S3 for fleet tests: s3s-fs in this test's runtime (with slow-write and slow-miss knobs), the
//! test bucket's keys and config, and an OpenDAL client to look at what the mirror wrote.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use super::q;

#[path = "../parts/s3s_serve.rs"]
mod s3s_serve;

use s3s_serve::serve_s3;

pub const S3_ACCESS_KEY: &str = "AKIAOCIMIRRORTEST";
pub const S3_SECRET_KEY: &str = "ocimirror-test-secret-key/with+odd=chars";
pub const S3_BUCKET: &str = "ocimirror-test";

/// The lines under `storage:` for the S3 backend at `endpoint` (test bucket and keys), key
/// prefix `root`; for [`MirrorOpts::storage_yaml`].
pub fn s3_storage_yaml(endpoint: &str, root: &str) -> String {
    format!(
        "  backend: s3\n  s3:\n    endpoint: {}\n    region: us-east-1\n    bucket: {}\n    \
         root: {}\n    access_key_id: {}\n    secret_access_key: {}\n    part_size_mib: 5\n",
        q(endpoint),
        q(S3_BUCKET),
        q(root),
        q(S3_ACCESS_KEY),
        q(S3_SECRET_KEY)
    )
}

/// An OpenDAL client of the test bucket at `endpoint` under `root`, to look at what the mirror
/// wrote (keys relative to `root`).
pub fn s3_operator(endpoint: &str, root: &str) -> opendal::Operator {
    // Registers OpenDAL's HTTP transport; idempotent.
    opendal::install_default();
    let b = opendal::services::S3::default()
        .endpoint(endpoint)
        .region("us-east-1")
        .bucket(S3_BUCKET)
        .root(&format!("/{}", root.trim_matches('/')))
        .access_key_id(S3_ACCESS_KEY)
        .secret_access_key(S3_SECRET_KEY)
        .disable_ec2_metadata();
    opendal::Operator::new(b).unwrap()
}

/// Every object key under `prefix` (relative to the operator's root), recursively.
pub async fn s3_keys(op: &opendal::Operator, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = op
        .list_with(prefix)
        .recursive(true)
        .await
        .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
        .into_iter()
        .map(|e| e.path().to_string())
        .filter(|p| !p.ends_with('/'))
        .collect();
    keys.sort();
    keys
}

/// s3s-fs serving a temporary directory as S3 (SigV4 checked against the test keys), in this
/// test's tokio runtime. The bucket is the directory `<dir>/ocimirror-test`.
///
/// s3s-fs keeps each object's metadata in one file named after the base64 of bucket and key, so
/// a key longer than 154 bytes cannot be written (ENAMETOOLONG: `PutObject` answers 500, which
/// OpenDAL retries for ~10 s while the request waits). Under the root `mirror`, a tag's index
/// link (`.../repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link`) stays within
/// it only when `<name>` and `<tag>` have 15 bytes together at most (`fleet/shared` + `v1`: 14).
pub struct S3Server {
    pub endpoint: String,
    dir: TempDir,
    task: tokio::task::JoinHandle<()>,
    slow_ms: Arc<std::sync::atomic::AtomicU64>,
    missing_head_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// s3s-fs, with big writes optionally delayed (see [`S3Server::set_slow_big_writes`]); every
/// operation OpenDAL uses is passed through.
struct SlowCommits {
    inner: s3s_fs::FileSystem,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Extra latency of a `HeadObject` that finds nothing (see
    /// [`S3Server::set_slow_missing_heads`]).
    missing_head_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl SlowCommits {
    async fn delay(&self) {
        let ms = self.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// `impl S3` with the listed operations passed through to `inner`, plus `$extra` items (one
/// expansion, so that `async_trait` sees every method).
macro_rules! s3_impl_passing_through {
    ($ty:ty { $($op:ident: $input:ident => $output:ident;)* } $($extra:item)*) => {
        #[async_trait::async_trait]
        impl s3s::S3 for $ty {
            $(
                async fn $op(
                    &self,
                    req: s3s::S3Request<s3s::dto::$input>,
                ) -> s3s::S3Result<s3s::S3Response<s3s::dto::$output>> {
                    self.inner.$op(req).await
                }
            )*
            $($extra)*
        }
    };
}

s3_impl_passing_through! {
    SlowCommits {
        head_bucket: HeadBucketInput => HeadBucketOutput;
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
        list_buckets: ListBucketsInput => ListBucketsOutput;
        create_bucket: CreateBucketInput => CreateBucketOutput;
        get_object: GetObjectInput => GetObjectOutput;
        list_objects: ListObjectsInput => ListObjectsOutput;
        list_objects_v2: ListObjectsV2Input => ListObjectsV2Output;
        delete_object: DeleteObjectInput => DeleteObjectOutput;
        delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
        copy_object: CopyObjectInput => CopyObjectOutput;
        create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput;
        upload_part: UploadPartInput => UploadPartOutput;
        list_parts: ListPartsInput => ListPartsOutput;
        abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
    }

    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        // Looked up now, answered late: the answer may be stale when it arrives.
        let r = self.inner.head_object(req).await;
        let ms = self
            .missing_head_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if r.is_err() && ms > 0 {
            // Late by `ms`, or until the test lets late answers through (sets 0).
            let until = tokio::time::Instant::now() + Duration::from_millis(ms);
            while tokio::time::Instant::now() < until
                && self
                    .missing_head_ms
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        r
    }

    async fn put_object(
        &self,
        req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        if req.input.content_length.unwrap_or(0) >= 1 << 20 {
            self.delay().await;
        }
        self.inner.put_object(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: s3s::S3Request<s3s::dto::CompleteMultipartUploadInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CompleteMultipartUploadOutput>> {
        self.delay().await;
        self.inner.complete_multipart_upload(req).await
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Server {
    pub async fn start() -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("ocim-s3")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join(S3_BUCKET)).unwrap();
        let slow_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let missing_head_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fs = SlowCommits {
            inner: s3s_fs::FileSystem::new(dir.path()).unwrap(),
            delay_ms: slow_ms.clone(),
            missing_head_ms: missing_head_ms.clone(),
        };
        let (endpoint, task) = serve_s3(fs, S3_ACCESS_KEY, S3_SECRET_KEY).await;
        S3Server {
            endpoint,
            dir,
            task,
            slow_ms,
            missing_head_ms,
        }
    }

    /// From now on, writes of objects of 1 MiB or more (`PutObject`, `CompleteMultipartUpload`)
    /// take `d` longer before they are carried out: a slow store for big blobs.
    pub fn set_slow_big_writes(&self, d: Duration) {
        self.slow_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// From now on, a `HeadObject` (OpenDAL's stat) that finds no object answers `d` late, with
    /// what it found when it was asked: a slow store whose "not there" may be stale on arrival.
    /// Setting zero lets the answers held back arrive at once.
    pub fn set_slow_missing_heads(&self, d: Duration) {
        self.missing_head_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The bucket's directory: object `k` is the file `<bucket_dir>/k`.
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join(S3_BUCKET)
    }

    pub fn storage_yaml(&self, root: &str) -> String {
        s3_storage_yaml(&self.endpoint, root)
    }
}
