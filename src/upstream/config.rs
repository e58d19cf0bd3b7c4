//! The `upstream` section (and each entry of `upstreams`) as written in the config file, and its
//! check: durations, URL, credentials, `ns` values, into the [`UpstreamSettings`] a client runs
//! with.

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
    /// Of `max_concurrent_requests`, slots blob downloads never take (at most half of them).
    pub manifest_slots: usize,
    /// Largest blob fetched (`32GiB`); a body announcing or sending more fails, nothing kept.
    pub max_blob_size: String,
    /// Bytes per second a blob fetch must average after its first `read_timeout` (`16KiB`);
    /// `0`: no minimum.
    pub min_blob_rate: String,
    /// Descriptors (config, layers, index entries) a manifest may list; more: refused.
    pub max_manifest_descriptors: usize,
    /// How long a blob fill nobody reads any more goes on fetching (`10s`); `never`: to the
    /// end, for the cache.
    pub abandon_fills_after: String,
    /// Repositories that may be fetched from the upstream (ACL pattern syntax: `library/*`,
    /// `myorg/**`, `/regex/`). Empty: all. Others are served only if already cached.
    pub allow: Vec<String>,
    /// The `ns` values (source registries, `host[:port]`) containerd requests reach this
    /// upstream by. Absent: `docker.io` for Docker Hub, else the URL's `host[:port]`; for an
    /// entry of `upstreams`, also its name.
    pub ns: Option<Vec<String>>,
}

/// An upstream's section, checked.
#[derive(Debug, Clone)]
pub struct CheckedUpstream {
    pub settings: UpstreamSettings,
    pub tag_ttl: Duration,
    pub max_manifest_descriptors: usize,
    /// Its `ns` values, lowercase.
    pub ns: Vec<String>,
    /// Whether `ns` was given (else these are the defaults).
    pub ns_given: bool,
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
            .field("manifest_slots", &self.manifest_slots)
            .field("max_blob_size", &self.max_blob_size)
            .field("min_blob_rate", &self.min_blob_rate)
            .field("max_manifest_descriptors", &self.max_manifest_descriptors)
            .field("abandon_fills_after", &self.abandon_fills_after)
            .field("allow", &self.allow)
            .field("ns", &self.ns)
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
            manifest_slots: 8,
            max_blob_size: "32GiB".into(),
            min_blob_rate: "16KiB".into(),
            max_manifest_descriptors: super::fanout::DEFAULT_MAX_DESCRIPTORS,
            abandon_fills_after: humantime::format_duration(super::bounds::DEFAULT_ABANDON_AFTER)
                .to_string(),
            allow: Vec::new(),
            ns: None,
        }
    }
}

/// `host[:port]` as containerd names a registry in `ns`, checked and lowercased.
fn ns_value(v: &str) -> Result<String, String> {
    let v = v.trim().to_ascii_lowercase();
    let shown = || match Url::parse(&format!("http://{v}")) {
        Ok(u) if u.path() == "/" && u.query().is_none() && u.username().is_empty() => {
            match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => Some(format!("{h}:{p}")),
                (Some(h), None) => Some(h.to_owned()),
                _ => None,
            }
        }
        _ => None,
    };
    match shown() {
        Some(s) if s == v && !v.is_empty() => Ok(v),
        _ => Err(format!(
            "{v:?} is not a registry host such as docker.io or registry.example:5000"
        )),
    }
}

/// The URL's `host[:port]` as containerd would name the registry.
pub fn host_port(url: &Url) -> String {
    let h = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(p) => format!("{h}:{p}"),
        None => h,
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
    /// The upstream called `name` (`None`: the default upstream) checked; else every problem,
    /// keyed within this section. `pattern` checks one `allow` entry (the pattern language is
    /// the ACL's, which this module does not know).
    pub fn check(
        &self,
        name: Option<&str>,
        pattern: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<CheckedUpstream, Vec<(String, String)>> {
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
        let abandon_after = match self.abandon_fills_after.trim() {
            "never" => Some(None),
            v => duration("abandon_fills_after", v).map(Some),
        };
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
        if self.max_manifest_descriptors == 0 {
            problems.push((
                "max_manifest_descriptors".into(),
                "must be at least 1 (a manifest lists its config)".into(),
            ));
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
        let mut ns = Vec::new();
        for v in self.ns.iter().flatten() {
            match ns_value(v) {
                Ok(v) if ns.contains(&v) => {
                    problems.push(("ns".into(), format!("{v:?} is listed twice")))
                }
                Ok(v) => ns.push(v),
                Err(m) => problems.push(("ns".into(), m)),
            }
        }
        let (
            Some(url),
            Some(tag_ttl),
            Some(connect),
            Some(first_byte),
            Some(read),
            Some(abandon_after),
            true,
        ) = (
            url,
            tag_ttl,
            connect,
            first_byte,
            read,
            abandon_after,
            problems.is_empty(),
        )
        else {
            return Err(problems);
        };
        let library_prefix = match self.library_prefix {
            LibraryPrefix::Auto => is_docker_hub(&url),
            LibraryPrefix::Always => true,
            LibraryPrefix::Never => false,
        };
        let ns_given = self.ns.is_some();
        if !ns_given {
            ns = match name {
                None if is_docker_hub(&url) => vec!["docker.io".to_owned()],
                None => vec![host_port(&url)],
                Some(n) => vec![n.to_ascii_lowercase(), host_port(&url)],
            };
            ns.dedup();
        }
        Ok(CheckedUpstream {
            ns,
            ns_given,
            tag_ttl,
            max_manifest_descriptors: self.max_manifest_descriptors,
            settings: UpstreamSettings {
                name: name.unwrap_or("default").to_owned(),
                url,
                username,
                password,
                password_file: self.password_file.clone(),
                library_prefix,
                connect_timeout: connect,
                first_byte_timeout: first_byte,
                read_timeout: read,
                max_concurrent_requests: self.max_concurrent_requests,
                manifest_slots: self.manifest_slots,
                blob_bounds: super::bounds::BlobBounds {
                    max_size: max_blob_size.expect("checked"),
                    min_rate: min_blob_rate.expect("checked"),
                    grace: read,
                    abandon_after,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        url: &str,
        name: Option<&str>,
        ns: Option<&[&str]>,
    ) -> Result<CheckedUpstream, Vec<(String, String)>> {
        let c = UpstreamConfig {
            url: url.into(),
            ns: ns.map(|v| v.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        c.check(name, &|_| Ok(()))
    }

    #[test]
    fn ns_defaults_follow_the_upstream() {
        let ns = |url, name| check(url, name, None).unwrap().ns;
        assert_eq!(ns("https://registry-1.docker.io", None), ["docker.io"]);
        assert_eq!(ns("https://mirror.gcr.io", None), ["mirror.gcr.io"]);
        assert_eq!(ns("http://127.0.0.1:5000/", None), ["127.0.0.1:5000"]);
        assert_eq!(ns("https://ghcr.io", Some("ghcr.io")), ["ghcr.io"]);
        assert_eq!(
            ns("https://h.example:8443", Some("quay")),
            ["quay", "h.example:8443"]
        );
        assert!(!check("https://ghcr.io", None, None).unwrap().ns_given);
    }

    #[test]
    fn ns_values_are_hosts_lowercased_and_listed_once() {
        let c = check(
            "https://mirror.gcr.io",
            None,
            Some(&["Docker.IO", "mirror.gcr.io:443"]),
        )
        .unwrap();
        assert_eq!(c.ns, ["docker.io", "mirror.gcr.io:443"]);
        assert!(c.ns_given);
        assert_eq!(
            check("https://h", None, Some(&[])).unwrap().ns,
            Vec::<String>::new()
        );
        for bad in [
            "",
            "http://docker.io",
            "docker.io/library",
            "a b",
            "u@docker.io",
            "docker.io?x",
        ] {
            let e = check("https://h", None, Some(&[bad])).unwrap_err();
            assert_eq!(e[0].0, "ns", "{bad:?}");
        }
        let e = check("https://h", None, Some(&["docker.io", "DOCKER.io"])).unwrap_err();
        assert!(e[0].1.contains("twice"), "{e:?}");
    }
}
