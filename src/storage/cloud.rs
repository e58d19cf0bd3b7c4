//! The Google Cloud Storage (`storage.gcs`) and Azure Blob Storage (`storage.azblob`) backends:
//! their config sections and the OpenDAL operators they make for [`ObjectStorage`].
//!
//! Never asks a cloud metadata server for credentials when `endpoint` is set: with an endpoint
//! and no credentials, requests go unsigned (emulators, or a proxy that signs). Without an
//! endpoint, the provider's usual chain applies (GCS: application default credentials, then the
//! VM's metadata server, which is how workload identity is reached; Azure: the environment's
//! credentials, then managed identity).
//!
//! Uploads a killed writer left behind: an unfinished GCS XML multipart upload stays (and is
//! billed) until aborted, so the bucket needs a lifecycle rule `AbortIncompleteMultipartUpload`;
//! Azure garbage-collects uncommitted blocks by itself after seven days. Expiry's sweep of
//! abandoned uploads therefore does nothing on either.

use std::fmt;
use std::path::PathBuf;

use opendal::Operator;
use serde::{Deserialize, Serialize};
use url::Url;

use super::presign::{AzureSas, Presigner};
use super::s3::{DEFAULT_PART_SIZE_MIB, config_error, nonempty, read_secret_file};
use super::{ObjectStorage, StorageError};

type Problems = Vec<(String, String)>;

/// `endpoint` is an http(s) URL without credentials, query or fragment.
fn check_endpoint(endpoint: &Option<String>, problems: &mut Problems) {
    let Some(ep) = nonempty(endpoint) else { return };
    let mut problem = |m: String| problems.push(("endpoint".into(), m));
    match Url::parse(ep) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                problem("must not carry credentials".into());
            }
            if u.query().is_some() || u.fragment().is_some() {
                problem("must not have a query or fragment".into());
            }
        }
        Ok(_) => problem(format!(
            "{ep:?}: the scheme must be http or https, with a host"
        )),
        Err(e) => problem(format!("{ep:?} is not a URL: {e}")),
    }
}

fn check_root(root: &str, problems: &mut Problems) {
    if root.contains('\0')
        || root
            .split('/')
            .any(|c| c == "." || c == ".." || c.contains('\\'))
    {
        problems.push((
            "root".into(),
            format!("{root:?}: must be a plain key prefix like /registry"),
        ));
    }
}

fn check_name(key: &str, name: &str, problems: &mut Problems) {
    let name = name.trim();
    if name.is_empty() {
        problems.push((key.into(), "is required".into()));
    } else if name.len() > 255
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        problems.push((
            key.into(),
            format!("{name:?} is not a {key} name (letters, digits, '.', '-', '_')"),
        ));
    }
}

fn check_file(key: &str, file: &Option<PathBuf>, problems: &mut Problems) {
    if let Some(path) = file
        && let Err(m) = read_secret_file(path)
    {
        problems.push((key.into(), m));
    }
}

fn finish(problems: Problems) -> Result<(), Problems> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn invalid(section: &str, problems: Problems) -> StorageError {
    let text = problems
        .iter()
        .map(|(k, m)| format!("storage.{section}.{k}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    config_error(text)
}

fn root_of(root: &str) -> String {
    format!("/{}", root.trim_matches('/'))
}

/// The `storage.gcs` section.
///
/// ```yaml
/// storage:
///   backend: gcs
///   gcs:
///     bucket: registry
///     root: /mirror                 # key prefix, Distribution's `rootdirectory`
///     credential_file: /run/secrets/gcs.json  # absent: application default credentials
///     # endpoint: http://127.0.0.1:4443       # an emulator; never the metadata server then
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcsConfig {
    pub bucket: String,
    /// Prefix of every key; leading and trailing `/` are ignored.
    pub root: String,
    /// Base URL of the JSON API; absent: `https://storage.googleapis.com`.
    pub endpoint: Option<String>,
    /// A service account key (JSON). Absent: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
    /// application default credentials, then the metadata server (workload identity); with an
    /// `endpoint`, unauthenticated.
    pub credential_file: Option<PathBuf>,
}

impl GcsConfig {
    /// Every problem at once, each as (key within this section, message).
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Vec::new();
        check_name("bucket", &self.bucket, &mut problems);
        check_root(&self.root, &mut problems);
        check_endpoint(&self.endpoint, &mut problems);
        check_file("credential_file", &self.credential_file, &mut problems);
        finish(problems)
    }
}

/// The `storage.azblob` section.
///
/// ```yaml
/// storage:
///   backend: azblob
///   azblob:
///     account_name: mirrorstore
///     container: registry
///     root: /mirror
///     account_key_file: /run/secrets/azure-key  # or sas_token_file; neither: managed identity
///     # endpoint: http://127.0.0.1:10000/devstoreaccount1   # Azurite
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzblobConfig {
    pub container: String,
    /// Prefix of every key; leading and trailing `/` are ignored.
    pub root: String,
    /// Base URL of the Blob service; absent: `https://<account_name>.blob.core.windows.net`.
    pub endpoint: Option<String>,
    pub account_name: Option<String>,
    /// A file holding the storage account's key (base64, as the portal shows it).
    pub account_key_file: Option<PathBuf>,
    /// A file holding a shared access signature (the query string, with or without `?`).
    pub sas_token_file: Option<PathBuf>,
}

impl AzblobConfig {
    /// Every problem at once, each as (key within this section, message).
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Vec::new();
        check_name("container", &self.container, &mut problems);
        check_root(&self.root, &mut problems);
        check_endpoint(&self.endpoint, &mut problems);
        check_file("account_key_file", &self.account_key_file, &mut problems);
        check_file("sas_token_file", &self.sas_token_file, &mut problems);
        if self.account_key_file.is_some() && self.sas_token_file.is_some() {
            problems.push((
                "sas_token_file".into(),
                "set either account_key_file or sas_token_file, not both".into(),
            ));
        }
        let account = nonempty(&self.account_name);
        if account.is_none() && self.account_key_file.is_some() {
            problems.push((
                "account_name".into(),
                "an account key is set but no account_name".into(),
            ));
        }
        if account.is_none() && nonempty(&self.endpoint).is_none() {
            problems.push((
                "account_name".into(),
                "is required without an endpoint (it names the endpoint)".into(),
            ));
        }
        if let Some(a) = account
            && !a.chars().all(|c| c.is_ascii_alphanumeric())
        {
            problems.push((
                "account_name".into(),
                format!("{a:?} is not a storage account name (letters and digits)"),
            ));
        }
        finish(problems)
    }
}

impl ObjectStorage {
    /// A Google Cloud Storage bucket; sends nothing (see [`ObjectStorage::check`]).
    pub fn gcs(config: &GcsConfig) -> Result<ObjectStorage, StorageError> {
        config.validate().map_err(|p| invalid("gcs", p))?;
        opendal::install_default();
        let root = root_of(&config.root);
        let bucket = config.bucket.trim();
        let endpoint = nonempty(&config.endpoint).map(|e| e.trim_end_matches('/'));
        let mut b = opendal::services::Gcs::default().bucket(bucket).root(&root);
        if let Some(e) = endpoint {
            // Metadata belongs to Google's own machines; never probe it for another endpoint.
            b = b.endpoint(e).disable_vm_metadata();
        }
        match (&config.credential_file, endpoint) {
            (Some(path), _) => {
                let path = path.to_str().ok_or_else(|| {
                    config_error("storage.gcs.credential_file: not a UTF-8 path".into())
                })?;
                b = b.credential_path(path).disable_config_load();
            }
            (None, Some(_)) => b = b.disable_config_load().skip_signature(),
            (None, None) => {}
        }
        let op = Operator::new(b).map_err(|e| config_error(format!("storage.gcs: {e}")))?;
        let describe = format!(
            "gs://{bucket}{} at {}",
            root.trim_end_matches('/'),
            endpoint.unwrap_or("Google Cloud Storage")
        );
        ObjectStorage::from_operator(
            op,
            (DEFAULT_PART_SIZE_MIB * 1024 * 1024) as usize,
            describe,
            None,
        )
    }

    /// An Azure Blob Storage container; sends nothing (see [`ObjectStorage::check`]).
    pub fn azblob(config: &AzblobConfig) -> Result<ObjectStorage, StorageError> {
        config.validate().map_err(|p| invalid("azblob", p))?;
        opendal::install_default();
        let root = root_of(&config.root);
        let container = config.container.trim();
        let account = nonempty(&config.account_name);
        let endpoint = match (nonempty(&config.endpoint), account) {
            (Some(e), _) => e.trim_end_matches('/').to_owned(),
            (None, Some(a)) => format!("https://{a}.blob.core.windows.net"),
            (None, None) => unreachable!("validated"),
        };
        let mut b = opendal::services::Azblob::default()
            .container(container)
            .root(&root)
            .endpoint(&endpoint);
        if let Some(a) = account {
            b = b.account_name(a);
        }
        let secret = |p: &PathBuf, key: &str| {
            read_secret_file(p).map_err(|m| config_error(format!("storage.azblob.{key}: {m}")))
        };
        let mut presigner = Presigner::None;
        match (&config.account_key_file, &config.sas_token_file) {
            (Some(k), _) => {
                let key = secret(k, "account_key_file")?;
                b = b.account_key(&key);
                presigner = Presigner::AzureKey(AzureSas {
                    endpoint: endpoint.clone(),
                    account: account.unwrap_or_default().to_owned(),
                    key,
                    container: container.to_owned(),
                    root: root.trim_matches('/').to_owned(),
                });
            }
            (None, Some(s)) => {
                let sas = secret(s, "sas_token_file")?;
                b = b.sas_token(sas.trim_start_matches('?'));
            }
            // No credentials against a custom endpoint: unsigned, never managed identity.
            (None, None) if config.endpoint.is_some() => b = b.skip_signature(),
            (None, None) => {}
        }
        let op = Operator::new(b).map_err(|e| config_error(format!("storage.azblob: {e}")))?;
        let describe = format!(
            "azblob://{container}{} at {endpoint}",
            root.trim_end_matches('/')
        );
        ObjectStorage::from_operator(
            op,
            (DEFAULT_PART_SIZE_MIB * 1024 * 1024) as usize,
            describe,
            None,
        )
        .map(|s| s.with_presigner(presigner))
    }
}

impl fmt::Display for GcsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gs://{}{}",
            self.bucket,
            root_of(&self.root).trim_end_matches('/')
        )
    }
}

impl fmt::Display for AzblobConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "azblob://{}{}",
            self.container,
            root_of(&self.root).trim_end_matches('/')
        )
    }
}

#[cfg(test)]
mod tests;
