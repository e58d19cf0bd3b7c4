//! The S3 backend: its config section and the OpenDAL operator it makes for [`ObjectStorage`].
//!
//! Streamed writes buffer one part (`part_size_mib`) at a time: an object that ends within the
//! first part is one `PutObject`, a larger one a multipart upload that `CompleteMultipartUpload`
//! publishes at once on commit. A writer dropped before commit aborts its multipart upload in
//! the background; uploads a killed process left behind are swept by expiry (`uploads.rs`) when
//! the credentials are static, else a bucket lifecycle rule "abort incomplete multipart uploads
//! after N days" catches them.

use std::fmt;
use std::path::PathBuf;

use opendal::Operator;
use serde::{Deserialize, Serialize};
use url::Url;

mod uploads;

pub(super) use uploads::UploadSweeper;

use super::{ObjectStorage, StorageError};

/// Default multipart part size. Parts must be at least 5 MiB (except the last), and an upload has at
/// most 10,000 of them, so 8 MiB allows objects up to ~78 GiB. A writer holds up to three parts in
/// memory (being filled, queued, in flight).
pub const DEFAULT_PART_SIZE_MIB: u64 = 8;
const MIN_PART_SIZE_MIB: u64 = 5;
const MAX_PART_SIZE_MIB: u64 = 5 * 1024;
/// Region used when neither the config nor `AWS_REGION`/`AWS_DEFAULT_REGION` names one; what most
/// S3-compatible servers expect.
const DEFAULT_REGION: &str = "us-east-1";

/// The `storage.s3` section.
///
/// ```yaml
/// storage:
///   backend: s3
///   s3:
///     endpoint: https://minio.internal:9000   # absent: AWS (or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
///     region: eu-west-1                        # absent: AWS_REGION, AWS_DEFAULT_REGION, us-east-1
///     bucket: registry
///     root: /mirror                            # key prefix, Distribution's `rootdirectory`
///     path_style: true                         # absent: true for a custom endpoint, false for AWS
///     access_key_id: AKIA...                   # absent: the usual AWS chain (environment,
///     secret_access_key_file: /run/secrets/s3  #   shared files, web identity, container, IMDS)
///     # secret_access_key: ...                 # or inline; session_token for temporary keys
///     part_size_mib: 8
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Base URL of the S3 API, `http(s)://host[:port][/path]`. Absent: `AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL` when set, else AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// Absent: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `us-east-1`.
    pub region: Option<String>,
    pub bucket: String,
    /// Prefix of every key (Distribution's `rootdirectory`); leading and trailing `/` are ignored.
    /// Empty: the bucket's root.
    pub root: String,
    /// Path-style (`endpoint/bucket/key`) rather than virtual-hosted (`bucket.endpoint/key`)
    /// addressing. Absent: path-style for a custom endpoint, virtual-hosted for AWS.
    pub path_style: Option<bool>,
    /// Static credentials; absent: the usual AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
    /// `AWS_SESSION_TOKEN`, `AWS_PROFILE` and the shared files, web identity, container and, for AWS
    /// endpoints only, instance metadata).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// File holding the secret access key (trailing newline ignored); instead of
    /// `secret_access_key`.
    pub secret_access_key_file: Option<PathBuf>,
    pub session_token: Option<String>,
    /// Multipart part size in MiB, 5 to 5120.
    pub part_size_mib: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: None,
            bucket: String::new(),
            root: String::new(),
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            session_token: None,
            part_size_mib: DEFAULT_PART_SIZE_MIB,
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("root", &self.root)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("session_token", &redacted(&self.session_token))
            .field("part_size_mib", &self.part_size_mib)
            .finish()
    }
}

pub(super) fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn is_aws_host(url: &Url) -> bool {
    url.host_str().is_some_and(|h| {
        let h = h.to_ascii_lowercase();
        h.ends_with(".amazonaws.com") || h.ends_with(".amazonaws.com.cn")
    })
}

pub(super) fn read_secret_file(path: &PathBuf) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim_end_matches(['\n', '\r']).to_owned();
            if s.is_empty() {
                Err(format!("{} is empty", path.display()))
            } else {
                Ok(s)
            }
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

impl S3Config {
    /// Every problem at once, each as (key within this section, message).
    pub fn validate(&self) -> Result<(), Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push((key.to_owned(), message));

        let bucket = self.bucket.trim();
        if bucket.is_empty() {
            problem("bucket", "is required".into());
        } else if bucket.len() > 255
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            problem(
                "bucket",
                format!("{bucket:?} is not a bucket name (letters, digits, '.', '-', '_')"),
            );
        }
        if let Some(ep) = nonempty(&self.endpoint) {
            match Url::parse(ep) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    if !u.username().is_empty() || u.password().is_some() {
                        problem(
                            "endpoint",
                            "must not carry credentials; use access_key_id and secret_access_key_file"
                                .into(),
                        );
                    }
                    if u.query().is_some() || u.fragment().is_some() {
                        problem("endpoint", "must not have a query or fragment".into());
                    }
                }
                Ok(_) => problem(
                    "endpoint",
                    format!("{ep:?}: the scheme must be http or https, with a host"),
                ),
                Err(e) => problem("endpoint", format!("{ep:?} is not a URL: {e}")),
            }
        }
        if let Some(r) = &self.region
            && (r.trim().is_empty() || r.chars().any(|c| c.is_whitespace() || c == '/'))
        {
            problem("region", format!("{r:?} is not a region name"));
        }
        if self.root.contains('\0')
            || self
                .root
                .split('/')
                .any(|c| c == "." || c == ".." || c.contains('\\'))
        {
            problem(
                "root",
                format!("{:?}: must be a plain key prefix like /registry", self.root),
            );
        }
        let key_id = nonempty(&self.access_key_id);
        let inline = nonempty(&self.secret_access_key);
        if let Some(path) = &self.secret_access_key_file {
            if inline.is_some() {
                problem(
                    "secret_access_key_file",
                    "set either secret_access_key or secret_access_key_file, not both".into(),
                );
            }
            if let Err(m) = read_secret_file(path) {
                problem("secret_access_key_file", m);
            }
        }
        let has_secret = inline.is_some() || self.secret_access_key_file.is_some();
        if key_id.is_some() && !has_secret {
            problem(
                "secret_access_key",
                "access_key_id is set but neither secret_access_key nor secret_access_key_file"
                    .into(),
            );
        }
        if key_id.is_none() && has_secret {
            problem(
                "access_key_id",
                "a secret access key is set but no access_key_id".into(),
            );
        }
        if key_id.is_none() && nonempty(&self.session_token).is_some() {
            problem(
                "session_token",
                "a session token is set but no access_key_id".into(),
            );
        }
        if !(MIN_PART_SIZE_MIB..=MAX_PART_SIZE_MIB).contains(&self.part_size_mib) {
            problem(
                "part_size_mib",
                format!(
                    "{} is outside {MIN_PART_SIZE_MIB}..={MAX_PART_SIZE_MIB}",
                    self.part_size_mib
                ),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The endpoint in force: the config's, else the AWS environment's, else `None` (AWS).
    fn effective_endpoint(&self) -> Option<String> {
        nonempty(&self.endpoint)
            .map(str::to_owned)
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL"))
            .map(|e| e.trim().trim_end_matches('/').to_owned())
    }

    fn effective_region(&self) -> String {
        nonempty(&self.region)
            .map(str::to_owned)
            .or_else(|| env_nonempty("AWS_REGION"))
            .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned())
    }
}

pub(super) fn config_error(message: String) -> StorageError {
    StorageError::Io {
        key: "storage.s3".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
    }
}

impl ObjectStorage {
    /// Builds the client; sends nothing (see [`ObjectStorage::check`]).
    pub fn s3(config: &S3Config) -> Result<ObjectStorage, StorageError> {
        if let Err(problems) = config.validate() {
            let text = problems
                .iter()
                .map(|(k, m)| format!("storage.s3.{k}: {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(config_error(text));
        }
        // Registers the reqwest transport (rustls with the aws-lc-rs provider, as the rest of the
        // process); idempotent.
        opendal::install_default();

        let region = config.effective_region();
        let endpoint = config.effective_endpoint();
        let aws = match &endpoint {
            None => true,
            Some(e) => Url::parse(e).map(|u| is_aws_host(&u)).unwrap_or(false),
        };
        let path_style = config.path_style.unwrap_or(!aws);
        let root = format!("/{}", config.root.trim_matches('/'));

        let mut b = opendal::services::S3::default()
            .bucket(config.bucket.trim())
            .region(&region)
            .root(&root);
        if let Some(e) = &endpoint {
            b = b.endpoint(e);
        }
        if !path_style {
            b = b.enable_virtual_host_style();
        }
        if !aws {
            // Instance metadata belongs to AWS; never probe it for another provider's endpoint.
            b = b.disable_ec2_metadata();
        }
        let mut keys = None;
        if let Some(id) = nonempty(&config.access_key_id) {
            let secret = match &config.secret_access_key_file {
                Some(path) => read_secret_file(path)
                    .map_err(|m| config_error(format!("storage.s3.secret_access_key_file: {m}")))?,
                None => nonempty(&config.secret_access_key)
                    .unwrap_or_default()
                    .to_owned(),
            };
            b = b.access_key_id(id).secret_access_key(&secret);
            if let Some(token) = nonempty(&config.session_token) {
                b = b.session_token(token);
            }
            keys = Some((
                id.to_owned(),
                secret,
                nonempty(&config.session_token).map(str::to_owned),
            ));
        }
        let op = Operator::new(b).map_err(|e| config_error(format!("storage.s3: {e}")))?;
        let describe = format!(
            "s3://{}{} at {} ({}, {})",
            config.bucket.trim(),
            root.trim_end_matches('/'),
            endpoint.as_deref().unwrap_or("AWS"),
            region,
            if path_style {
                "path-style"
            } else {
                "virtual-hosted"
            },
        );
        // Sweeping abandoned uploads signs its own requests: with the configured keys or the
        // environment's. Other sources of the AWS chain (profiles, instance or pod identity)
        // leave it to the bucket's lifecycle rule.
        let sweepable = keys.is_some() || env_nonempty("AWS_ACCESS_KEY_ID").is_some();
        let uploads = bucket_url(
            endpoint.as_deref(),
            &region,
            config.bucket.trim(),
            path_style,
        )
        .filter(|_| sweepable)
        .map(|url| uploads::UploadSweeper::new(url, &root, &region, keys))
        .transpose()?;
        ObjectStorage::from_operator(
            op,
            (config.part_size_mib * 1024 * 1024) as usize,
            describe,
            uploads,
        )
    }
}

/// The bucket's URL, as OpenDAL addresses it.
fn bucket_url(endpoint: Option<&str>, region: &str, bucket: &str, path_style: bool) -> Option<Url> {
    let base = match endpoint {
        Some(e) => Url::parse(e).ok()?,
        None => Url::parse(&format!("https://s3.{region}.amazonaws.com")).ok()?,
    };
    if path_style {
        let path = format!("{}/{bucket}/", base.path().trim_end_matches('/'));
        let mut u = base;
        u.set_path(&path);
        Some(u)
    } else {
        let host = format!("{bucket}.{}", base.host_str()?);
        let mut u = base;
        u.set_host(Some(&host)).ok()?;
        let path = format!("{}/", u.path().trim_end_matches('/'));
        u.set_path(&path);
        Some(u)
    }
}

#[cfg(test)]
mod tests;
