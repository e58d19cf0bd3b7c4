//! The `upstream` section (and each entry of `upstreams`) as written in the config file, and its
//! check: durations, URL, credentials, into the [`UpstreamSettings`] a client runs with.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::UpstreamSettings;

pub const DOCKER_HUB: &str = "https://registry-1.docker.io";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase", try_from = "LibraryPrefixInput")]
pub enum LibraryPrefix {
    /// On for Docker Hub, off elsewhere.
    #[default]
    Auto,
    Always,
    Never,
}

/// `library_prefix` as written: a boolean or one of the words.
#[derive(Deserialize)]
#[serde(untagged)]
enum LibraryPrefixInput {
    Bool(bool),
    Word(String),
}

impl TryFrom<LibraryPrefixInput> for LibraryPrefix {
    type Error = String;
    fn try_from(v: LibraryPrefixInput) -> Result<Self, String> {
        match v {
            LibraryPrefixInput::Bool(true) => Ok(LibraryPrefix::Always),
            LibraryPrefixInput::Bool(false) => Ok(LibraryPrefix::Never),
            LibraryPrefixInput::Word(w) => match w.as_str() {
                "auto" => Ok(LibraryPrefix::Auto),
                "always" | "true" => Ok(LibraryPrefix::Always),
                "never" | "false" => Ok(LibraryPrefix::Never),
                other => Err(format!(
                    "library_prefix {other:?} is not one of auto, always (true), never (false)"
                )),
            },
        }
    }
}

/// `Debug` is written by hand: it shows `password` only as `<redacted>`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// For entries of `upstreams`: the path prefix and `ns` value that select it (`ghcr.io`).
    pub name: Option<String>,
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub library_prefix: LibraryPrefix,
    /// How long a tag's digest is trusted before it is revalidated with a HEAD.
    pub tag_ttl: String,
    pub connect_timeout: String,
    /// Until the upstream's response headers arrive.
    pub first_byte_timeout: String,
    /// Longest silence allowed between body chunks.
    pub read_timeout: String,
    /// Requests in flight to the upstream at most (a blob until its body ends); 0: no cap.
    pub max_concurrent_requests: usize,
    /// Largest blob fetched (`32GiB`); a body announcing or sending more fails, nothing kept.
    pub max_blob_size: String,
    /// Bytes per second a blob fetch must average after its first `read_timeout` (`16KiB`);
    /// `0`: no minimum.
    pub min_blob_rate: String,
    /// Repositories that may be fetched from the upstream (ACL pattern syntax: `library/*`,
    /// `myorg/**`, `/regex/`). Empty: all. Others are served only if already cached.
    pub allow: Vec<String>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("library_prefix", &self.library_prefix)
            .field("tag_ttl", &self.tag_ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_blob_size", &self.max_blob_size)
            .field("min_blob_rate", &self.min_blob_rate)
            .field("allow", &self.allow)
            .finish()
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: None,
            url: DOCKER_HUB.into(),
            username: None,
            password: None,
            password_file: None,
            library_prefix: LibraryPrefix::Auto,
            tag_ttl: "5m".into(),
            connect_timeout: "10s".into(),
            first_byte_timeout: "30s".into(),
            read_timeout: "30s".into(),
            max_concurrent_requests: 64,
            max_blob_size: "32GiB".into(),
            min_blob_rate: "16KiB".into(),
            allow: Vec::new(),
        }
    }
}

/// Whether `url` is Docker Hub's (under any of its host names).
pub fn is_docker_hub(url: &Url) -> bool {
    matches!(
        url.host_str(),
        Some("registry-1.docker.io" | "docker.io" | "index.docker.io" | "registry.hub.docker.com")
    )
}

impl UpstreamConfig {
    /// The settings of the upstream called `name` (`default`, or its configured name) and its
    /// tag TTL; else every problem, keyed within this section. `pattern` checks one `allow`
    /// entry (the pattern language is the ACL's, which this module does not know).
    pub fn check(
        &self,
        name: &str,
        pattern: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<(UpstreamSettings, Duration), Vec<(String, String)>> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut duration = |k: &str, v: &str| {
            humantime::parse_duration(v.trim())
                .map_err(|e| {
                    problems.push((
                        k.into(),
                        format!("{v:?} is not a duration like 30s or 5m: {e}"),
                    ))
                })
                .ok()
        };
        let tag_ttl = duration("tag_ttl", &self.tag_ttl);
        let connect = duration("connect_timeout", &self.connect_timeout);
        let first_byte = duration("first_byte_timeout", &self.first_byte_timeout);
        let read = duration("read_timeout", &self.read_timeout);
        for (k, d) in [
            ("connect_timeout", connect),
            ("first_byte_timeout", first_byte),
            ("read_timeout", read),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                problems.push((k.into(), "must be greater than zero".into()));
            }
        }
        let mut size = |k: &str, v: &str| {
            v.trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| {
                    problems.push((k.into(), format!("{v:?} is not a size like 32GiB: {e}")))
                })
                .ok()
        };
        let max_blob_size = size("max_blob_size", &self.max_blob_size);
        let min_blob_rate = size("min_blob_rate", &self.min_blob_rate);
        if max_blob_size == Some(0) {
            problems.push(("max_blob_size".into(), "must be greater than zero".into()));
        }
        let url = match Url::parse(self.url.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if !url.username().is_empty() || url.password().is_some() {
                    problems.push((
                        "url".into(),
                        "must not carry credentials; use username and password_file".into(),
                    ));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    problems.push(("url".into(), "must not have a query or fragment".into()));
                }
                Some(url)
            }
            Ok(url) => {
                problems.push((
                    "url".into(),
                    format!(
                        "{:?}: the scheme must be http or https, with a host",
                        url.as_str()
                    ),
                ));
                None
            }
            Err(e) => {
                problems.push(("url".into(), format!("{:?} is not a URL: {e}", self.url)));
                None
            }
        };
        let mut password = self.password.clone().filter(|p| !p.is_empty());
        if let Some(pf) = &self.password_file {
            if password.is_some() {
                problems.push((
                    "password_file".into(),
                    "set either password or password_file, not both".into(),
                ));
            }
            match std::fs::read_to_string(pf) {
                Ok(p) => password = Some(p.trim_end_matches(['\n', '\r']).to_owned()),
                Err(e) => problems.push((
                    "password_file".into(),
                    format!("cannot read {}: {e}", pf.display()),
                )),
            }
        }
        let username = self.username.clone().filter(|u| !u.is_empty());
        if password.is_some() && username.is_none() {
            problems.push((
                "username".into(),
                "a password is set but no username".into(),
            ));
        }
        for p in &self.allow {
            if let Err(e) = pattern(p) {
                problems.push(("allow".into(), e));
            }
        }
        let (Some(url), Some(tag_ttl), Some(connect), Some(first_byte), Some(read), true) =
            (url, tag_ttl, connect, first_byte, read, problems.is_empty())
        else {
            return Err(problems);
        };
        let library_prefix = match self.library_prefix {
            LibraryPrefix::Auto => is_docker_hub(&url),
            LibraryPrefix::Always => true,
            LibraryPrefix::Never => false,
        };
        Ok((
            UpstreamSettings {
                name: name.to_owned(),
                url,
                username,
                password,
                library_prefix,
                connect_timeout: connect,
                first_byte_timeout: first_byte,
                read_timeout: read,
                max_concurrent_requests: self.max_concurrent_requests,
                blob_bounds: super::bounds::BlobBounds {
                    max_size: max_blob_size.expect("checked"),
                    min_rate: min_blob_rate.expect("checked"),
                    grace: read,
                },
            },
            tag_ttl,
        ))
    }
}
