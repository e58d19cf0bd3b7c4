//! The `storage` section as written in the config file, and its check.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
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
    /// Send clients to the bucket for the bytes of a stored blob (a presigned URL).
    pub redirect: RedirectConfig,
}

/// The header with which a client (or the proxy in front) asks for a blob's bytes from the
/// mirror itself, never a redirect to the store.
pub const NO_REDIRECT_HEADER: &str = "ocimirror-no-redirect";
/// The longest a presigned URL may live: what S3's SigV4 allows.
const MAX_REDIRECT_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// `storage.redirect` as written: blob GETs answered from storage become a `307` to a presigned
/// URL of the object, so the bytes flow from the store to the client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// Off: every blob's bytes go through the mirror.
    pub enabled: bool,
    /// How long a presigned URL can be used (`20m`).
    pub expiry: String,
    /// Clients (addresses or CIDR prefixes) that always get the bytes from the mirror: those that
    /// cannot reach the store.
    pub except: Vec<String>,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            enabled: false,
            expiry: "20m".into(),
            except: Vec::new(),
        }
    }
}

/// The checked `storage.redirect`, when it is enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectPolicy {
    pub expiry: Duration,
    pub except: Vec<IpNet>,
}

impl RedirectPolicy {
    /// Whether a client at `ip` may be sent to the store (an unknown address may).
    pub fn applies_to(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !self.except.iter().any(|net| net.contains(&ip))
    }
}

impl RedirectConfig {
    /// The policy (`None` when off), or every problem keyed within this section.
    fn check(
        &self,
        backend: StorageBackend,
        azure_key: bool,
    ) -> Result<Option<RedirectPolicy>, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let expiry = match humantime::parse_duration(self.expiry.trim()) {
            Ok(d) if d < Duration::from_secs(1) || d > MAX_REDIRECT_EXPIRY => {
                problems.push((
                    "expiry".into(),
                    format!(
                        "{:?} is outside 1s..=7d (what S3 signatures allow)",
                        self.expiry
                    ),
                ));
                d
            }
            Ok(d) => d,
            Err(e) => {
                problems.push((
                    "expiry".into(),
                    format!("{:?} is not a duration like 20m or 1h: {e}", self.expiry),
                ));
                Duration::ZERO
            }
        };
        let mut except = Vec::new();
        for (i, e) in self.except.iter().enumerate() {
            let e = e.trim();
            match e.parse::<IpAddr>().map(IpNet::from).or_else(|_| e.parse()) {
                Ok(net) => except.push(net),
                Err(_) => problems.push((
                    format!("except.{i}"),
                    format!("{e:?} is neither an IP address nor a CIDR prefix (like 10.0.0.0/8)"),
                )),
            }
        }
        if self.enabled {
            match backend {
                StorageBackend::Filesystem => problems.push((
                    "enabled".into(),
                    "the filesystem backend has no URL to send clients to: redirect works with \
                     the s3, gcs and azblob backends; turn it off"
                        .into(),
                )),
                StorageBackend::Azblob if !azure_key => problems.push((
                    "enabled".into(),
                    "Azure redirects are signed with the account key (a read-only SAS for one \
                     blob): set azblob.account_key_file, or turn redirect off (a configured SAS \
                     token is never handed to clients)"
                        .into(),
                )),
                _ => {}
            }
        }
        if !problems.is_empty() {
            Err(problems)
        } else if self.enabled {
            Ok(Some(RedirectPolicy { expiry, except }))
        } else {
            Ok(None)
        }
    }
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
        if let Err(ps) = self.redirect_policy() {
            problems.extend(ps.into_iter().map(|(k, m)| (format!("redirect.{k}"), m)));
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

    /// The checked `redirect` section: `None` when off.
    pub fn redirect_policy(&self) -> Result<Option<RedirectPolicy>, Vec<(String, String)>> {
        self.redirect
            .check(self.backend, self.azblob.account_key_file.is_some())
    }

    /// The filesystem root: as configured, else under the replica's data directory.
    pub fn root(&self, data_dir: &Path) -> PathBuf {
        self.filesystem
            .root
            .clone()
            .unwrap_or_else(|| data_dir.join("storage"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(r: Result<Option<RedirectPolicy>, Vec<(String, String)>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn redirect_is_checked_against_the_backend() {
        let on = RedirectConfig {
            enabled: true,
            ..RedirectConfig::default()
        };
        // Off: nothing, whatever the backend.
        assert_eq!(
            RedirectConfig::default().check(StorageBackend::Filesystem, false),
            Ok(None)
        );
        assert_eq!(
            keys(on.check(StorageBackend::Filesystem, false)),
            ["enabled"]
        );
        assert_eq!(keys(on.check(StorageBackend::Azblob, false)), ["enabled"]);
        let p = on.check(StorageBackend::Azblob, true).unwrap().unwrap();
        assert_eq!(p.expiry, Duration::from_secs(20 * 60));
        let bad = RedirectConfig {
            enabled: true,
            expiry: "8d".into(),
            except: vec!["10.0.0.0/8".into(), "nonsense".into()],
        };
        assert_eq!(
            keys(bad.check(StorageBackend::S3, false)),
            ["expiry", "except.1"]
        );
    }

    #[test]
    fn except_matches_addresses_and_prefixes() {
        let p = RedirectConfig {
            enabled: true,
            expiry: "1m".into(),
            except: vec!["10.0.0.0/8".into(), "192.0.2.7".into(), "fd00::/8".into()],
        }
        .check(StorageBackend::S3, false)
        .unwrap()
        .unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(!p.applies_to(ip("10.1.2.3")));
        assert!(!p.applies_to(ip("192.0.2.7")));
        assert!(!p.applies_to(ip("fd12::1")));
        // An IPv4 client on a dual-stack listener.
        assert!(!p.applies_to(ip("::ffff:10.1.2.3")));
        assert!(p.applies_to(ip("192.0.2.8")));
        assert!(p.applies_to(ip("127.0.0.1")));
        assert!(p.applies_to(None));
    }
}
