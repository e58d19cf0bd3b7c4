//! Configuration: a YAML file (every key optional), environment overrides
//! (`OCIMIRROR_<SECTION>__<KEY>`), then command-line flags; validated into [`Settings`] with every
//! problem reported at once, each with the line it comes from.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::setup::{AuthConfig, Roles};
use crate::cache::RedisConfig;
use crate::cluster::ClusterSettings;
use crate::expiry::ExpiryPolicy;
use crate::storage::{AzblobConfig, GcsConfig, S3Config};
use crate::upstream::UpstreamSettings;

// The sections other modules own, under the names the file's shape gives them.
pub use crate::cache::config::{CacheBackend, CacheConfig, MemoryCacheConfig};
pub use crate::cluster::config::ClusterConfig;
pub use crate::expiry::config::{ExpiryConfig, parse_size};
pub use crate::storage::config::{FilesystemConfig, StorageBackend, StorageConfig};
pub use crate::upstream::config::{DOCKER_HUB, LibraryPrefix, UpstreamConfig};
use crate::verify::Policy;
pub use crate::verify::config::VerifyRuleConfig;

mod env;
mod upstreams;
mod yaml;

use env::{apply_env, apply_overrides};
use upstreams::{resolve_ns, upstream_names};
pub use yaml::find_line;
use yaml::parse_yaml;

pub const ENV_PREFIX: &str = "OCIMIRROR_";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to serve on; `:5000` means all interfaces.
    pub listen: String,
    /// Local state of this replica: spool files, and the storage root unless set.
    pub data_dir: PathBuf,
    pub mode: Mode,
    pub log: LogConfig,
    pub storage: StorageConfig,
    pub cache: CacheConfig,
    /// The default upstream: what requests without a prefix or `ns` reach.
    pub upstream: UpstreamConfig,
    /// Further upstreams, each reached by its `name` as path prefix or `ns`.
    pub upstreams: Vec<UpstreamConfig>,
    pub server: ServerConfig,
    /// What this process serves: `all` (`/v2` and the token endpoint), `registry`, or `auth`.
    pub role: Role,
    /// Token authentication; absent: anonymous pulls of everything (an open mirror).
    pub auth: Option<AuthConfig>,
    /// When cached content is forgotten; absent: never (and pulls are not recorded).
    pub expiry: Option<ExpiryConfig>,
    /// Serve HTTPS with this certificate (reloaded when the files change); absent: plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Per-client request rate limits on `/v2`.
    pub limits: LimitsConfig,
    /// Replicas streaming each other's fills in progress; absent: they wait for commits.
    pub cluster: Option<ClusterConfig>,
    /// Signature rules, first match applies; empty: nothing is checked.
    pub verify: Vec<VerifyRuleConfig>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    All,
    Registry,
    Auth,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Role::All),
            "registry" => Ok(Role::Registry),
            "auth" => Ok(Role::Auth),
            other => Err(format!("{other:?} is not one of all, registry, auth")),
        }
    }
}

impl Role {
    pub fn roles(self) -> Roles {
        Roles {
            issue: self != Role::Registry,
            verify: self != Role::Auth,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".into(),
            data_dir: PathBuf::from("ocimirror-data"),
            mode: Mode::Online,
            log: LogConfig::default(),
            storage: StorageConfig::default(),
            cache: CacheConfig::default(),
            upstream: UpstreamConfig::default(),
            upstreams: Vec::new(),
            server: ServerConfig::default(),
            role: Role::All,
            auth: None,
            expiry: None,
            tls: None,
            limits: LimitsConfig::default(),
            cluster: None,
            verify: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Online,
    /// Never contact the upstream; serve only what is cached.
    Offline,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `ocimirror=debug,access=warn`, …
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub shutdown_timeout: String,
    /// How long a client has to send a request head (and an idle connection its next request).
    pub header_read_timeout: String,
    /// Serve the status page at `/` and `/status.json` (counts only when `auth` is configured).
    pub status_page: bool,
    /// Serve `/metrics` on this address instead of the main listener (empty: the main one).
    pub metrics_listen: String,
    /// A file holding the bearer token `/metrics` requires (empty: no token).
    pub metrics_token_file: String,
    /// Requests one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Blob downloads open at once across the process; beyond it 503 with `Retry-After`.
    pub max_blob_streams: usize,
    /// Blob downloads one client (address, IPv6 /64) may have open at once.
    pub max_blob_streams_per_client: usize,
    /// A blob download whose client reads nothing for this long has its connection closed.
    pub send_timeout: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_timeout: "30s".into(),
            header_read_timeout: "30s".into(),
            status_page: true,
            metrics_listen: String::new(),
            metrics_token_file: String::new(),
            max_concurrent_streams: 16,
            max_blob_streams: 512,
            max_blob_streams_per_client: 128,
            send_timeout: "60s".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sustained requests per second per client (account, else address); 0: no limit.
    pub requests_per_second: u32,
    /// Requests a client may make at once above the rate; default twice the rate.
    pub burst: Option<u32>,
    /// Behind a proxy that sets it: the header holding the client address, for every
    /// per-client bound, `storage.redirect.except` and the access log.
    pub real_ip_header: Option<String>,
    /// The proxies (addresses or CIDR prefixes) whose `real_ip_header` is believed.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Values from command-line flags, applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub upstream: Option<String>,
    pub upstream_username: Option<String>,
    pub upstream_password_file: Option<PathBuf>,
    pub tag_ttl: Option<String>,
    pub offline: bool,
    pub read_only: bool,
    pub role: Option<Role>,
}

/// An upstream other than the default, checked.
#[derive(Debug, Clone)]
pub struct NamedUpstream {
    pub name: String,
    pub settings: UpstreamSettings,
    pub tag_ttl: Duration,
    pub max_manifest_descriptors: usize,
    pub allow: Vec<String>,
    /// The `ns` values that reach it (no other upstream has them).
    pub ns: Vec<String>,
}

/// Everything resolved and checked: what the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub offline: bool,
    pub log_level: String,
    pub log_json: bool,
    pub storage_root: PathBuf,
    pub storage_backend: StorageBackend,
    pub s3: S3Config,
    pub gcs: GcsConfig,
    pub azblob: AzblobConfig,
    pub read_only: bool,
    /// `None`: storage operations are never cut short.
    pub storage_breaker: Option<crate::storage::breaker::BreakerPolicy>,
    /// `None`: blob bytes always go through the mirror.
    pub redirect: Option<crate::storage::config::RedirectPolicy>,
    pub cache_max_entries: usize,
    /// Memory for kept referrers answers, and answers kept per index.
    pub referrers_cache: (usize, usize),
    pub cache_backend: CacheBackend,
    pub redis: RedisConfig,
    pub upstream: UpstreamSettings,
    /// Further upstreams, by name.
    pub upstreams: Vec<NamedUpstream>,
    /// Validated allow-list patterns (empty: everything may be fetched).
    pub upstream_allow: Vec<String>,
    /// The default upstream's `max_manifest_descriptors`.
    pub upstream_max_descriptors: usize,
    /// The `ns` values that reach the default upstream (no other upstream has them).
    pub upstream_ns: Vec<String>,
    pub tag_ttl: Duration,
    pub shutdown_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub max_blob_streams: usize,
    pub max_blob_streams_per_client: usize,
    pub send_timeout: Duration,
    pub status_page: bool,
    /// Where `/metrics` is served when not on the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// The bearer token `/metrics` requires, read from `server.metrics_token_file`.
    pub metrics_token: Option<String>,
    pub role: Role,
    /// Validated; built into running parts by the server.
    pub auth: Option<AuthConfig>,
    /// The file this came from, re-read to reload users and ACL.
    pub config_path: Option<PathBuf>,
    /// Absent: content is never forgotten.
    pub expiry: Option<ExpiryPolicy>,
    /// Absent: plain HTTP. Both files are set; whether they load is the TLS module's check.
    pub tls: Option<TlsConfig>,
    /// Checked by the HTTP layer's own check (see [`SectionCheck`]).
    pub limits: LimitsConfig,
    /// Absent: no peer streaming.
    pub cluster: Option<ClusterSettings>,
    /// The signature rules with their keys loaded; no rules: nothing is checked.
    pub verify: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, or the environment variable / flag it came from.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug)]
pub struct ConfigErrors {
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} problem(s)", self.source, self.problems.len())?;
        for p in &self.problems {
            match p.line {
                Some(l) => writeln!(f, "  line {l}: {}: {}", p.key, p.message)?,
                None => writeln!(f, "  {}: {}", p.key, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Load the config: `path` (None: defaults), environment `env`, then `overrides`, with the
/// checks of the sections `config` itself knows.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<(Config, Settings), ConfigErrors> {
    load_with(path, env, overrides, &[])
}

/// [`load`], also running `checks` of the sections modules above `config` own.
pub fn load_with(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
    checks: &[SectionCheck],
) -> Result<(Config, Settings), ConfigErrors> {
    let (source, text) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigErrors {
                source: p.display().to_string(),
                problems: vec![Problem {
                    key: "file".into(),
                    line: None,
                    message: format!("cannot read: {e}"),
                }],
            })?;
            (p.display().to_string(), text)
        }
        None => ("defaults".to_owned(), String::new()),
    };
    let fail = |problems| ConfigErrors {
        source: source.clone(),
        problems,
    };
    // Line ends as YAML counts them (a lone CR ends a line too), so that locating a problem by
    // line agrees with the parser whatever the file's line endings.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let (config, mut problems) = parse_yaml(&text);
    let mut value = serde_json::to_value(&config).expect("config serialises");
    for (k, v) in env {
        if let Some(rest) = k.strip_prefix(ENV_PREFIX)
            && let Err(p) = apply_env(&mut value, &k, rest, &v)
        {
            problems.extend(p);
        }
    }
    apply_overrides(&mut value, overrides);
    let config: Config = match serde_json::from_value(value) {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem {
                key: "environment/flags".into(),
                line: None,
                message: e.to_string(),
            });
            return Err(fail(problems));
        }
    };
    match validate(&config, &text, checks) {
        Ok(mut s) if problems.is_empty() => {
            s.config_path = path.map(Path::to_path_buf);
            Ok((config, s))
        }
        Ok(_) => Err(fail(problems)),
        Err(mut more) => {
            problems.append(&mut more);
            Err(fail(problems))
        }
    }
}

/// Checks of sections owned by modules above `config` (the HTTP layer's `limits` and `tls`),
/// handed in by the caller: each gives (key path, message) problems, located and reported with
/// the rest.
pub type SectionCheck<'a> = &'a dyn Fn(&Config) -> Vec<(String, String)>;

/// Assemble the sections: each module's section checks itself (its keys relative to the
/// section), and this only prefixes the keys, locates them in `text`, and checks what spans
/// sections.
fn validate(c: &Config, text: &str, checks: &[SectionCheck]) -> Result<Settings, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| {
        let path: Vec<&str> = key.split('.').collect();
        problems.push(Problem {
            key: key.to_owned(),
            line: find_line(text, &path),
            message,
        });
    };
    let listen = crate::util::parse_listen(&c.listen, 5000)
        .map_err(|m| problem("listen", m))
        .ok();
    let mut duration = |key: &str, v: &str| {
        humantime::parse_duration(v.trim())
            .map_err(|e| problem(key, format!("{v:?} is not a duration like 30s or 5m: {e}")))
            .ok()
    };
    let shutdown = duration("server.shutdown_timeout", &c.server.shutdown_timeout);
    let header_read = duration("server.header_read_timeout", &c.server.header_read_timeout);
    let send_timeout = duration("server.send_timeout", &c.server.send_timeout);
    if header_read.is_some_and(|d| d.is_zero()) {
        problem(
            "server.header_read_timeout",
            "must be greater than zero".into(),
        );
    }
    let metrics_listen = match c.server.metrics_listen.trim() {
        "" => None,
        a => crate::util::parse_listen(a, 5000)
            .map_err(|m| problem("server.metrics_listen", m))
            .ok(),
    };
    let metrics_token = match c.server.metrics_token_file.trim() {
        "" => None,
        f => match std::fs::read_to_string(f) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            Ok(_) => {
                problem(
                    "server.metrics_token_file",
                    format!("{f} is empty: write the token /metrics requires into it"),
                );
                None
            }
            Err(e) => {
                problem("server.metrics_token_file", format!("cannot read {f}: {e}"));
                None
            }
        },
    };
    if send_timeout.is_some_and(|d| d.is_zero()) {
        problem("server.send_timeout", "must be greater than zero".into());
    }
    if c.server.max_concurrent_streams == 0 {
        problem("server.max_concurrent_streams", "must be at least 1".into());
    }
    if c.server.max_blob_streams == 0 {
        problem("server.max_blob_streams", "must be at least 1".into());
    }
    if c.server.max_blob_streams_per_client == 0 {
        problem(
            "server.max_blob_streams_per_client",
            "must be at least 1".into(),
        );
    }
    let mut section = |prefix: &str, ps: Vec<(String, String)>| {
        for (key, message) in ps {
            problem(&format!("{prefix}.{key}"), message);
        }
    };
    // The allow-lists' pattern language is the ACL's.
    let pattern = |p: &str| crate::auth::acl::NamePattern::compile(p).map(drop);
    let upstream = c
        .upstream
        .check(None, &pattern)
        .map_err(|ps| section("upstream", ps))
        .ok();
    let mut named: Vec<NamedUpstream> = Vec::new();
    let mut named_ns = Vec::new();
    for (i, u) in c.upstreams.iter().enumerate() {
        let name = u.name.clone().unwrap_or_default();
        match u.check(Some(&name), &pattern) {
            Ok(checked) => {
                named_ns.push((format!("upstreams.{i}"), checked.ns, checked.ns_given));
                named.push(NamedUpstream {
                    name,
                    settings: checked.settings,
                    tag_ttl: checked.tag_ttl,
                    max_manifest_descriptors: checked.max_manifest_descriptors,
                    allow: u.allow.clone(),
                    ns: Vec::new(),
                });
            }
            Err(ps) => section(&format!("upstreams.{i}"), ps),
        }
    }
    if let Err(ps) = c.storage.check() {
        section("storage", ps);
    }
    if let Err(ps) = c.cache.check() {
        section("cache", ps);
    }
    let expiry = c
        .expiry
        .as_ref()
        .and_then(|e| e.check().map_err(|ps| section("expiry", ps)).ok());
    let cluster = c
        .cluster
        .as_ref()
        .and_then(|cl| cl.check().map_err(|ps| section("cluster", ps)).ok());
    let verify = crate::verify::config::check(&c.verify)
        .map_err(|ps| section("verify", ps))
        .unwrap_or_default();
    let mut problems_of = |ps: Vec<(String, String)>| {
        for (key, message) in ps {
            problem(&key, message);
        }
    };
    problems_of(upstream_names(c));
    let mut lists = Vec::new();
    if let Some(u) = &upstream {
        lists.push(("upstream".to_owned(), u.ns.clone(), u.ns_given));
    }
    lists.extend(named_ns);
    let (resolved, ns_problems) = resolve_ns(lists);
    problems_of(ns_problems);
    let mut resolved = resolved.into_iter();
    let upstream_ns = if upstream.is_some() {
        resolved.next().unwrap_or_default()
    } else {
        Vec::new()
    };
    for (n, ns) in named.iter_mut().zip(resolved) {
        n.ns = ns;
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        problems_of(vec![(
            "log.level".into(),
            format!("{:?} is not a log filter: {e}", c.log.level),
        )]);
    }
    if c.data_dir.as_os_str().is_empty() {
        problems_of(vec![("data_dir".into(), "must not be empty".into())]);
    }
    match (&c.auth, c.role) {
        (Some(a), role) => {
            if let Err(ps) = a.build(role.roles()) {
                problems_of(
                    ps.into_iter()
                        .map(|(k, m)| (format!("auth.{k}"), m))
                        .collect(),
                );
            }
        }
        (None, Role::Auth) => problems_of(vec![(
            "role".into(),
            "role auth needs an auth section".into(),
        )]),
        (None, _) => {}
    }
    if c.expiry.is_some() && c.storage.read_only {
        problems_of(vec![(
            "expiry".into(),
            "storage.read_only is set: nothing would ever be deleted; remove one of them".into(),
        )]);
    }
    if let Some(TlsConfig { certificate, key }) = &c.tls
        && (certificate.is_none() || key.is_none())
    {
        problems_of(vec![(
            "tls".into(),
            "needs both certificate and key".into(),
        )]);
    }
    for check in checks {
        problems_of(check(c));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let upstream = upstream.expect("validated");
    Ok(Settings {
        listen: listen.expect("validated"),
        data_dir: c.data_dir.clone(),
        offline: c.mode == Mode::Offline,
        log_level: c.log.level.clone(),
        log_json: c.log.format == LogFormat::Json,
        storage_root: c.storage.root(&c.data_dir),
        storage_backend: c.storage.backend,
        s3: c.storage.s3.clone(),
        gcs: c.storage.gcs.clone(),
        azblob: c.storage.azblob.clone(),
        read_only: c.storage.read_only,
        storage_breaker: c.storage.breaker.check().ok().flatten(),
        redirect: c.storage.redirect_policy().ok().flatten(),
        cache_max_entries: c.cache.memory.max_entries,
        referrers_cache: (
            c.cache.referrers.max_bytes().unwrap_or_default(),
            c.cache.referrers.filters_per_index,
        ),
        cache_backend: c.cache.backend,
        redis: c.cache.redis.clone(),
        upstream: upstream.settings,
        upstreams: named,
        upstream_allow: c.upstream.allow.clone(),
        upstream_max_descriptors: upstream.max_manifest_descriptors,
        upstream_ns,
        tag_ttl: upstream.tag_ttl,
        shutdown_timeout: shutdown.expect("validated"),
        header_read_timeout: header_read.expect("validated"),
        max_concurrent_streams: c.server.max_concurrent_streams,
        max_blob_streams: c.server.max_blob_streams,
        max_blob_streams_per_client: c.server.max_blob_streams_per_client,
        send_timeout: send_timeout.expect("validated"),
        status_page: c.server.status_page,
        metrics_listen,
        metrics_token,
        role: c.role,
        auth: c.auth.clone(),
        config_path: None,
        expiry,
        tls: c.tls.clone(),
        limits: c.limits.clone(),
        cluster,
        verify,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<(Config, Settings), ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load(Some(&p), env, &Overrides::default())
    }

    /// `Debug` of the raw file and of the checked settings shows no secret from any section:
    /// upstream passwords (default and named), the S3 secret key and session token, the Redis
    /// URL's password.
    #[test]
    fn debug_of_config_and_settings_shows_no_secret() {
        let text = "upstream:\n  url: http://127.0.0.1:1\n  username: u\n  password: UP-pw-0001\n\
                    upstreams:\n  - name: ghcr.io\n    url: http://127.0.0.1:2\n    username: v\n    password: UP-pw-0002\n\
                    storage:\n  backend: s3\n  s3:\n    endpoint: http://127.0.0.1:3\n    bucket: b\n    \
                    access_key_id: AK\n    secret_access_key: S3-secret-0003\n    session_token: S3-session-0004\n\
                    cache:\n  backend: redis\n  redis:\n    url: redis://:RD-pw-0005@127.0.0.1:6379/0\n";
        let (c, s) = load_str(text, &[]).unwrap();
        let shown = format!("{c:?}\n{s:?}\n{c:#?}\n{s:#?}");
        for secret in [
            "UP-pw-0001",
            "UP-pw-0002",
            "S3-secret-0003",
            "S3-session-0004",
            "RD-pw-0005",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn defaults_are_a_docker_hub_mirror() {
        let (_, s) = load(None, Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(s.listen.port(), 5000);
        assert_eq!(s.upstream.url.as_str(), "https://registry-1.docker.io/");
        assert!(s.upstream.library_prefix);
        assert!(!s.offline);
        assert_eq!(s.tag_ttl, Duration::from_secs(300));
        assert_eq!(s.storage_root, PathBuf::from("ocimirror-data/storage"));
    }

    /// The problems `text` has, and each one's key and line.
    fn problems_with_lines(text: &str) -> (ConfigErrors, Vec<(String, Option<usize>)>) {
        let err = load_str(text, &[]).unwrap_err();
        let got = err
            .problems
            .iter()
            .map(|p| (p.key.clone(), p.line))
            .collect();
        (err, got)
    }

    #[test]
    fn reports_every_semantic_problem_with_lines() {
        let text = "listen: nowhere\nupstream:\n  url: ftp://x\n  tag_ttl: soon\n  read_timeout: 0s\ncache:\n  memory:\n    max_entries: 0\n";
        let (err, got) = problems_with_lines(text);
        assert!(got.contains(&("listen".into(), Some(1))), "{got:?}");
        assert!(got.contains(&("upstream.url".into(), Some(3))), "{got:?}");
        assert!(
            got.contains(&("upstream.tag_ttl".into(), Some(4))),
            "{got:?}"
        );
        assert!(
            got.contains(&("upstream.read_timeout".into(), Some(5))),
            "{got:?}"
        );
        assert!(
            got.contains(&("cache.memory.max_entries".into(), Some(8))),
            "{got:?}"
        );
        assert_eq!(err.problems.len(), 5, "{err}");
    }

    #[test]
    fn ns_values_reach_one_upstream() {
        let (_, s) = load(None, Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(s.upstream_ns, ["docker.io"]);
        // A value given to two upstreams is a problem.
        let err = load_str(
            "upstream:\n  url: http://127.0.0.1:1\n  ns: [docker.io]\nupstreams:\n  - name: hub\n    url: http://127.0.0.1:2\n    ns: [Docker.io]\n",
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.key == "upstreams.0.ns" && p.message.contains("docker.io")),
            "{err}"
        );
        // Defaults never clash: a given value wins over a default, an earlier default over a
        // later one.
        let (_, s) = load_str(
            "upstream:\n  url: http://127.0.0.1:1\n  ns: [docker.io, ghcr.io]\nupstreams:\n  - name: ghcr.io\n    url: http://127.0.0.1:1\n  - name: quay.io\n    url: http://127.0.0.1:1\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.upstream_ns, ["docker.io", "ghcr.io"]);
        assert_eq!(s.upstreams[0].ns, ["127.0.0.1:1"]);
        assert_eq!(s.upstreams[1].ns, ["quay.io"]);
        let err = load_str("upstream:\n  ns: [\"http://x\"]\n", &[]).unwrap_err();
        assert_eq!(err.problems[0].key, "upstream.ns", "{err}");
        assert_eq!(err.problems[0].line, Some(2), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_a_line() {
        let err = load_str("upstream:\n  url: http://x\n  pasword: y\n", &[]).unwrap_err();
        assert_eq!(err.problems[0].line, Some(3), "{err}");
        assert!(err.to_string().contains("pasword"), "{err}");
    }

    #[test]
    fn environment_overrides_file() {
        let (_, s) = load_str(
            "upstream:\n  url: http://127.0.0.1:1\n  username: u\n",
            &[
                ("OCIMIRROR_UPSTREAM__PASSWORD", "12345"),
                ("OCIMIRROR_MODE", "offline"),
                ("OCIMIRROR_UNRELATED", "x"),
                ("OCIMIRROR_UPSTREAM__TAG_TTL", "0s"),
            ],
        )
        .unwrap();
        assert_eq!(s.upstream.password.as_deref(), Some("12345"));
        assert!(s.offline);
        assert!(s.tag_ttl.is_zero());
        let err = load_str("", &[("OCIMIRROR_UPSTREAM__NOPE", "1")]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn flags_override_everything_and_password_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("pw");
        std::fs::write(&pf, "s3cret\n").unwrap();
        let o = Overrides {
            listen: Some(":6000".into()),
            upstream: Some("http://127.0.0.1:9".into()),
            upstream_username: Some("me".into()),
            upstream_password_file: Some(pf),
            tag_ttl: Some("1h".into()),
            offline: true,
            ..Default::default()
        };
        let (_, s) = load(None, Vec::new(), &o).unwrap();
        assert_eq!(s.listen.port(), 6000);
        assert_eq!(s.upstream.password.as_deref(), Some("s3cret"));
        assert_eq!(s.upstream.username.as_deref(), Some("me"));
        assert!(!s.upstream.library_prefix);
        assert_eq!(s.tag_ttl, Duration::from_secs(3600));
        assert!(s.offline);
    }

    #[test]
    fn every_structural_problem_is_reported() {
        let text = "listen: \":5000\"\nupstream:\n  url: http://x\n  pasword: y\nstorage:\n  backend: nosuch\n  filesystem:\n    extra:\n      deep: 1\nmode: sideways\n";
        let err = load_str(text, &[]).unwrap_err();
        let lines: Vec<Option<usize>> = err.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![Some(4), Some(6), Some(8), Some(10)], "{err}");
        assert_eq!(err.problems[0].key, "upstream.pasword");
        assert_eq!(err.problems[2].key, "storage.filesystem.extra");
    }

    #[test]
    fn library_prefix_accepts_booleans_and_words() {
        for (v, want) in [
            ("true", true),
            ("false", false),
            ("always", true),
            ("never", false),
        ] {
            let (_, s) = load_str(
                &format!("upstream:\n  url: http://x\n  library_prefix: {v}\n"),
                &[],
            )
            .unwrap();
            assert_eq!(s.upstream.library_prefix, want, "{v}");
        }
        assert!(load_str("upstream:\n  library_prefix: maybe\n", &[]).is_err());
    }

    #[test]
    fn expiry_policy_is_parsed_and_checked() {
        let (_, s) = load_str(
            "expiry:\n  max_age: 30d\n  max_size: 500GiB\n  interval: 30m\n",
            &[],
        )
        .unwrap();
        let e = s.expiry.unwrap();
        assert_eq!(e.max_age, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(e.max_size, Some(500 * 1024 * 1024 * 1024));
        assert_eq!(e.interval, Duration::from_secs(1800));
        assert_eq!(e.min_idle, Duration::from_secs(600));
        // Absent: nothing expires.
        let (_, s) = load_str("listen: :5000\n", &[]).unwrap();
        assert_eq!(s.expiry, None);
        // The environment can turn it on.
        let (_, s) =
            load_str("listen: :5000\n", &[("OCIMIRROR_EXPIRY__MAX_SIZE", "20GB")]).unwrap();
        assert_eq!(s.expiry.unwrap().max_size, Some(20_000_000_000));

        let err = load_str(
            "storage:\n  read_only: true\nexpiry:\n  max_age: a month\n  max_size: lots\n  min_idle: 0\n",
            &[],
        )
        .unwrap_err();
        let keys: Vec<(&str, Option<usize>)> = err
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.line))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("expiry.max_age", Some(4)),
                ("expiry.min_idle", Some(6)),
                ("expiry.max_size", Some(5)),
                ("expiry", Some(3)),
            ],
            "{err}"
        );
        assert!(err.to_string().contains("\"lots\" is not a size"), "{err}");
    }

    #[test]
    fn problems_are_located_whatever_the_line_endings() {
        for eol in ["\n", "\r\n", "\r"] {
            let text = [
                "listen: :5000",
                "upstream:",
                "  pasword: x",
                "  tag_ttl: soon",
                "",
            ]
            .join(eol);
            let err = load_str(&text, &[]).unwrap_err();
            let keys: Vec<(&str, Option<usize>)> = err
                .problems
                .iter()
                .map(|p| (p.key.as_str(), p.line))
                .collect();
            assert!(
                keys.contains(&("upstream.pasword", Some(3)))
                    && keys.contains(&("upstream.tag_ttl", Some(4))),
                "{eol:?}: {err}"
            );
        }
    }

    #[test]
    fn find_line_walks_nesting() {
        let t = "a:\n  b: 1\n  c:\n    d: 2\ne: 3\n";
        assert_eq!(find_line(t, &["a", "c", "d"]), Some(4));
        assert_eq!(find_line(t, &["e"]), Some(5));
        assert_eq!(find_line(t, &["a", "zz"]), Some(1));
        assert_eq!(find_line(t, &["q"]), None);
        // List items, by index in either spelling, block and flow style.
        let t = "verify:\n  - match: a\n    keys: [x.pub]\n  - match: b\n    keys:\n      - y.pub\n      - z.pub\nacl:\n- match: {account: a}\n  actions: [pull]\n";
        assert_eq!(find_line(t, &["verify", "1", "keys", "1"]), Some(7));
        assert_eq!(find_line(t, &["verify", "1", "match"]), Some(4));
        assert_eq!(find_line(t, &["verify", "0", "keys", "0"]), Some(3));
        assert_eq!(find_line(t, &["verify", "1"]), Some(4));
        assert_eq!(find_line(t, &["acl[0]", "actions"]), Some(10));
        assert_eq!(find_line(t, &["acl[0]", "match", "account"]), Some(9));
        // An item that is not there: its list.
        assert_eq!(find_line(t, &["verify", "5", "keys"]), Some(1));
        // Text the parser gives up on is still located by its keys' indentation.
        assert_eq!(find_line("a:\n  b: [\n", &["a", "b"]), Some(2));
    }

    #[test]
    fn verify_rule_problems_point_at_their_item() {
        let text = "verify:\n  - match: \"myorg/**\"\n    keys:\n      - /nonexistent/a.pub\n  - match: \"/[/\"\n    keys: [/nonexistent/b.pub]\n";
        let (err, got) = problems_with_lines(text);
        assert!(
            got.contains(&("verify.0.keys.0".into(), Some(4))),
            "{got:?}"
        );
        assert!(got.contains(&("verify.1.match".into(), Some(5))), "{got:?}");
        assert!(
            got.contains(&("verify.1.keys.0".into(), Some(6))),
            "{got:?}"
        );
        assert_eq!(err.problems.len(), 3, "{err}");
    }

    /// README's configuration reference cannot drift from the config: every key (every section
    /// set, every optional field filled) has a row, or is named in its section's row, and every
    /// row names a key that exists.
    #[test]
    fn readme_configuration_reference_covers_every_key() {
        use std::collections::{BTreeMap, BTreeSet};

        let readme = include_str!("../../README.md");
        let table = readme
            .split("## Configuration reference")
            .nth(1)
            .expect("README has a configuration reference")
            .split("\n## ")
            .next()
            .unwrap();
        // key -> its row's text. A row may name siblings: `a.b.c`, `d`, `e` are a.b.c, a.b.d, a.b.e.
        let mut rows: BTreeMap<String, String> = BTreeMap::new();
        for line in table.lines().filter(|l| l.starts_with("| `")) {
            let cell = line.split('|').nth(1).unwrap();
            let names: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
            let first = names[0];
            let parent = first.rsplit_once('.').map(|(p, _)| p);
            for n in &names {
                let key = match (n == &first || n.contains('.'), parent) {
                    (false, Some(p)) => format!("{p}.{n}"),
                    _ => n.to_string(),
                };
                rows.insert(key, line.to_owned());
            }
        }

        let mut c = Config::default();
        c.storage.s3.endpoint = Some(String::new());
        c.expiry = Some(ExpiryConfig::default());
        c.tls = Some(TlsConfig::default());
        c.cluster = Some(ClusterConfig::default());
        c.verify = vec![VerifyRuleConfig {
            keyless: Some(Default::default()),
            ..Default::default()
        }];
        c.auth = Some(AuthConfig {
            github_auth: Some(crate::auth::authn::GitHubConfig {
                organization: Some(String::new()),
                ..Default::default()
            }),
            oidc_auth: Some(crate::auth::authn::OidcConfig {
                jwks_url: Some(String::new()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut keys = BTreeSet::new();
        fn flatten(v: &Value, path: &str, out: &mut BTreeSet<String>) {
            match v {
                Value::Object(o) if !o.is_empty() => {
                    for (k, child) in o {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        out.insert(p.clone());
                        flatten(child, &p, out);
                    }
                }
                // A list of sections (`verify`) is documented as `verify[].<key>`.
                Value::Array(a) if a.first().is_some_and(|v| v.is_object()) => {
                    flatten(&a[0], &format!("{path}[]"), out);
                }
                _ => {}
            }
        }
        flatten(&serde_json::to_value(&c).unwrap(), "", &mut keys);

        let mut missing = Vec::new();
        for key in &keys {
            // `upstream` and the entries of `upstreams` share one struct: `name` is documented
            // as `upstreams[].name`.
            let shared = key.replacen("upstream.", "upstreams[].", 1);
            if rows.contains_key(key) || rows.contains_key(&shared) {
                continue;
            }
            // Named in the row of a section above it (`auth.github_auth`: `{organization, …}`)?
            let leaf = key.rsplit('.').next().unwrap();
            let in_section = std::iter::successors(key.rsplit_once('.').map(|(p, _)| p), |p| {
                p.rsplit_once('.').map(|(q, _)| q)
            })
            .any(|anc| rows.get(anc).is_some_and(|row| row.contains(leaf)));
            // Whole sections are covered by their keys' rows.
            let is_section = keys.iter().any(|k| k.starts_with(&format!("{key}.")));
            if !in_section && !is_section {
                missing.push(key.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "config keys missing from README's configuration reference: {missing:?}"
        );
        let unknown: Vec<&String> = rows
            .keys()
            .filter(|k| {
                !keys.contains(*k) && !keys.contains(&k.replacen("upstreams[].", "upstream.", 1))
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "README's configuration reference names keys the config does not have: {unknown:?}"
        );
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::env::TOP_LEVEL;
    use super::yaml::{key_at_line, remove_entry};
    use super::*;

    /// A config file's text, loaded as `ocimirror serve --config` would.
    fn load_text(
        text: &str,
        env: Vec<(String, String)>,
    ) -> Result<(Config, Settings), ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mirror.yaml");
        std::fs::write(&p, text).unwrap();
        load(Some(&p), env, &Overrides::default())
    }

    /// Every reported line is a line of the file, counted as YAML does (a lone CR ends a line).
    fn lines_in_range(text: &str, r: &Result<(Config, Settings), ConfigErrors>) -> bool {
        let n = text.replace("\r\n", "\n").split(['\r', '\n']).count();
        match r {
            Ok(_) => true,
            Err(e) => e
                .problems
                .iter()
                .all(|p| p.line.is_none_or(|l| (1..=n).contains(&l))),
        }
    }

    /// Scalars a config value might be, hostile or not. No host names with ports: `listen`
    /// would resolve them.
    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => proptest::sample::select(vec![
                "", "x", "0", "-1", "5m", "0s", "10ms", "true", "no", "null", "~", "[]", "{}",
                "[a, b]", "{a: 1}", "\"quoted\"", "'single'", "\"unterminated", "&anchor x",
                "*nowhere", "!!binary AAAA", "!tag x", "99999999999999999999999", "1e400", "-.inf",
                ".nan", "http://127.0.0.1:1", "ftp://x", "\":5000\"", "127.0.0.1:0", "nowhere",
                "[::1]:5000", "1.2.3.4:99999", "offline", "online", "redis", "s3", "memory",
                "filesystem", "json", "auth", "registry", "always", "never", "auto", "|", ">-",
                "? x", "- x", "#", "x # comment", "a: b: c", "\t", "%YAML 1.2", "---", "...",
            ])
            .prop_map(str::to_owned),
            1 => "[a-z0-9 :#\\[\\]{},'\"&*!|>%@`-]{0,12}",
        ]
    }

    /// Keys ocimirror knows, by section, and some it does not.
    fn key(depth: usize) -> impl Strategy<Value = String> {
        let known: Vec<&'static str> = match depth {
            0 => TOP_LEVEL.to_vec(),
            _ => vec![
                "url",
                "username",
                "password",
                "password_file",
                "tag_ttl",
                "library_prefix",
                "allow",
                "connect_timeout",
                "first_byte_timeout",
                "read_timeout",
                "backend",
                "read_only",
                "filesystem",
                "root",
                "s3",
                "bucket",
                "endpoint",
                "region",
                "part_size_mib",
                "memory",
                "max_entries",
                "redis",
                "key_prefix",
                "ttl",
                "level",
                "format",
                "shutdown_timeout",
                "service",
                "realm",
                "issuer",
                "token_ttl",
                "allow_anonymous",
                "acl",
                "users",
                "kid",
                "x5c",
            ],
        };
        prop_oneof![
            4 => proptest::sample::select(known).prop_map(str::to_owned),
            1 => "[a-z_]{1,8}",
            1 => Just("\"quoted\"".to_owned()),
        ]
    }

    /// YAML-shaped text: nested block mappings of known and unknown keys, with list items,
    /// comments, blank lines, odd indentation and tabs mixed in.
    fn yamlish() -> impl Strategy<Value = String> {
        let line = (0usize..4, key(0), key(1), scalar(), 0usize..10, 1usize..4).prop_map(
            |(depth, top, inner, value, shape, step)| {
                let indent = " ".repeat(depth * step);
                let k = if depth == 0 { top } else { inner };
                match shape {
                    0 => format!("{indent}{k}:"),
                    1 => format!("{indent}- {value}"),
                    2 => format!("{indent}# {value}"),
                    3 => String::new(),
                    4 => format!("\t{k}: {value}"),
                    5 => format!("{indent}{k}: [{value}, {value}]"),
                    _ => format!("{indent}{k}: {value}"),
                }
            },
        );
        proptest::collection::vec(line, 0..16).prop_map(|l| l.join("\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// YAML-shaped files: a result, never a panic, and problems point at lines of the file.
        #[test]
        fn yamlish_files_never_panic(text in yamlish()) {
            let r = load_text(&text, Vec::new());
            prop_assert!(lines_in_range(&text, &r), "{:?}", r.err());
        }

        /// Arbitrary text, CR line ends and NUL bytes included.
        #[test]
        fn arbitrary_files_never_panic(text in prop_oneof![
            any::<String>(),
            "[a-z:#\\-\\[\\]{}\"' \t\r\n]{0,80}",
        ]) {
            let r = load_text(&text, Vec::new());
            prop_assert!(lines_in_range(&text, &r), "{:?}", r.err());
        }

        /// Environment overrides of any shape, on their own, are problems or settings, never a
        /// panic.
        #[test]
        fn arbitrary_environment_never_panics(
            vars in proptest::collection::vec(
                (
                    proptest::collection::vec(prop_oneof![key(0), key(1), Just(String::new())], 1..4),
                    scalar(),
                ),
                0..4,
            ),
        ) {
            let env: Vec<(String, String)> = vars
                .into_iter()
                .map(|(path, v)| (format!("OCIMIRROR_{}", path.join("__").to_uppercase()), v))
                .collect();
            let _ = load(None, env, &Overrides::default());
        }

        /// In a block mapping, each key is found on its own line, and the key at that line reads
        /// back as its path; a missing child points at its deepest present ancestor.
        #[test]
        fn find_line_locates_every_key(
            tree in proptest::collection::btree_map(
                "[a-z_]{1,8}",
                proptest::collection::btree_map(
                    "[a-z_]{1,8}",
                    proptest::collection::btree_set("[a-z_]{1,8}", 0..3),
                    0..3,
                ),
                1..5,
            ),
            step in 1usize..5,
            noise in any::<bool>(),
        ) {
            let mut text = Vec::new();
            let mut want: Vec<(Vec<String>, usize)> = Vec::new();
            let push = |text: &mut Vec<String>, depth: usize, k: &str, leaf: bool| {
                if noise {
                    text.push(String::new());
                    text.push(format!("{}# {k}: not a key", " ".repeat(depth * step)));
                }
                let value = if leaf { " 1" } else { "" };
                text.push(format!("{}{k}:{value}", " ".repeat(depth * step)));
                text.len()
            };
            for (a, children) in &tree {
                let l = push(&mut text, 0, a, children.is_empty());
                want.push((vec![a.clone()], l));
                for (b, leaves) in children {
                    let l = push(&mut text, 1, b, leaves.is_empty());
                    want.push((vec![a.clone(), b.clone()], l));
                    for c in leaves {
                        let l = push(&mut text, 2, c, true);
                        want.push((vec![a.clone(), b.clone(), c.clone()], l));
                    }
                }
            }
            let text = text.join("\n");
            for (path, line) in want {
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                prop_assert_eq!(find_line(&text, &p), Some(line), "{:?} in\n{}", p, text);
                prop_assert_eq!(key_at_line(&text, line), Some(path.join(".")));
                let mut deeper = p.clone();
                deeper.push("zz_missing");
                prop_assert_eq!(find_line(&text, &deeper), Some(line));
                // List indices are located at their list's key.
                let mut indexed = p.clone();
                let last = format!("{}[3]", p[p.len() - 1]);
                *indexed.last_mut().unwrap() = &last;
                prop_assert_eq!(find_line(&text, &indexed), Some(line));
            }
        }

        /// The line helpers on arbitrary text and paths: in range, never a panic.
        #[test]
        fn line_helpers_on_arbitrary_text(
            text in prop_oneof![any::<String>(), yamlish()],
            path in proptest::collection::vec(prop_oneof![key(0), key(1), any::<String>()], 0..4),
            line in 1usize..40,
        ) {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(l) = find_line(&text, &p) {
                prop_assert!(l >= 1 && l <= text.lines().count());
            }
            let _ = key_at_line(&text, line);
            if let Some(t) = remove_entry(&text, line) {
                // The entry is blanked and the lines before it keep their numbers (a parent left
                // empty becomes `{}`), so later problems still point at the right lines.
                let (before, after): (Vec<&str>, Vec<&str>) = (text.lines().collect(), t.lines().collect());
                prop_assert_eq!(after.get(line - 1).copied().unwrap_or(""), "");
                for i in 0..line - 1 {
                    let fixed = format!("{} {{}}", before[i].trim_end());
                    prop_assert!(after[i] == before[i] || after[i] == fixed, "line {}: {:?} -> {:?}", i + 1, before[i], after[i]);
                }
            }
        }
    }

    /// A section replaced by a scalar in the environment, then a flag that sets a key inside it
    /// (`OCIMIRROR_UPSTREAM=x ocimirror serve --upstream http://h`): a problem to report, not a
    /// panic.
    #[test]
    fn environment_scalar_section_then_flag() {
        for (var, o) in [
            (
                "OCIMIRROR_UPSTREAM",
                Overrides {
                    upstream: Some("http://127.0.0.1:1".into()),
                    ..Default::default()
                },
            ),
            (
                "OCIMIRROR_STORAGE",
                Overrides {
                    read_only: true,
                    ..Default::default()
                },
            ),
        ] {
            let env = vec![(var.to_owned(), "x".to_owned())];
            let r = std::panic::catch_unwind(|| load(None, env, &o).map(drop));
            assert!(matches!(r, Ok(Err(_))), "{var}=x with a flag: {r:?}");
        }
    }

    /// Deep nesting is refused without exhausting the stack.
    #[test]
    fn deep_nesting_is_refused() {
        for text in [
            "listen: ".to_owned() + &"[".repeat(50_000),
            "listen: ".to_owned() + &"{a: ".repeat(50_000),
            (0..2_000)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect::<String>(),
        ] {
            assert!(load_text(&text, Vec::new()).is_err());
        }
    }
}
