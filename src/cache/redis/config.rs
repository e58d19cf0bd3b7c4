//! The `cache.redis` section, its check, and the deployment it names: one server, a Sentinel
//! group (which server is the master is asked of the Sentinels), or a Cluster.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::io::tcp::TcpSettings;
use redis::{Client, ConnectionAddr, IntoConnectionInfo};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// Unacknowledged data on a connection for this long kills it (`TCP_USER_TIMEOUT`), so a Redis
/// that vanished without closing its sockets is noticed and reconnected.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The port of a Sentinel named without one.
const SENTINEL_PORT: u16 = 26379;

/// The `cache.redis` section.
///
/// ```yaml
/// cache:
///   backend: redis
///   redis:
///     url: redis://redis.internal:6379/0    # rediss:// for TLS
///     # or a Sentinel group:  redis+sentinel://s1:26379,s2:26379/mymaster/0
///     # or a Cluster:         cluster: [redis://node1:6379, redis://node2:6379]
///     password_file: /run/secrets/redis     # optional; overrides a password in the URL
///     tls_ca_file: /etc/ocimirror/redis-ca.pem  # optional, rediss:// only
///     key_prefix: "ocimirror:"
///     connect_timeout: 1s
///     command_timeout: 500ms
///     ttl: 7d
/// ```
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]`, `rediss://…` for TLS,
    /// `unix:///path/to/socket[?db=N]`, or
    /// `redis+sentinel://[user[:password]@]host[:port][,host[:port]…]/<master name>[/db]`.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, `rediss://…` or `host:port`); when
    /// given, `url` is left unset.
    pub cluster: Vec<String>,
    /// A file holding the password (a trailing newline is ignored); overrides the URL's password.
    pub password_file: Option<PathBuf>,
    /// PEM bundle of the CA that signed the server's certificate; trusted instead of the system
    /// roots. Only with `rediss://`.
    pub tls_ca_file: Option<PathBuf>,
    /// Prepended to every key.
    pub key_prefix: String,
    /// Bound on establishing a connection (TCP, TLS, AUTH, SELECT; under Sentinel, also asking
    /// the Sentinels for the master).
    pub connect_timeout: String,
    /// Bound on one cache operation, the latency a slow or dead Redis can add to a request.
    pub command_timeout: String,
    /// Expiry of every entry.
    pub ttl: String,
}

const DEFAULT_URL: &str = "redis://127.0.0.1:6379/0";

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: DEFAULT_URL.into(),
            cluster: Vec::new(),
            password_file: None,
            tls_ca_file: None,
            key_prefix: "ocimirror:".into(),
            connect_timeout: "1s".into(),
            command_timeout: "500ms".into(),
            ttl: "7d".into(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted_url(&self.url))
            .field(
                "cluster",
                &self
                    .cluster
                    .iter()
                    .map(|u| redacted_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("password_file", &self.password_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// `url` with any password replaced (also in a Sentinel URL's host list, which is no URL).
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:redacted@{hosts}{path}")
        }
        _ => url.to_owned(),
    }
}

impl RedisConfig {
    /// Every problem at once, as `(field, message)`; the field is relative to this section
    /// (`url`, `ttl`, …). Reads `password_file` and `tls_ca_file`; never contacts Redis.
    pub fn validate(&self) -> Result<(), Vec<(String, String)>> {
        Parsed::from_config(self).map(drop)
    }
}

/// A [`RedisConfig`] that failed [`RedisConfig::validate`].
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis cache settings: {}", .0.iter().map(|(k, m)| format!("{k}: {m}")).collect::<Vec<_>>().join("; "))]
pub struct RedisConfigError(pub Vec<(String, String)>);

pub(super) struct Parsed {
    pub target: Target,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub ttl: Duration,
}

impl Parsed {
    pub fn from_config(c: &RedisConfig) -> Result<Parsed, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut duration = |key: &str, v: &str| match humantime::parse_duration(v.trim()) {
            Ok(d) if d.is_zero() => {
                problems.push((key.into(), "must be greater than zero".into()));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                problems.push((
                    key.into(),
                    format!("{v:?} is not a duration like 500ms or 7d: {e}"),
                ));
                None
            }
        };
        let connect_timeout = duration("connect_timeout", &c.connect_timeout);
        let command_timeout = duration("command_timeout", &c.command_timeout);
        let ttl = duration("ttl", &c.ttl);
        if ttl.is_some_and(|t| t < Duration::from_secs(1)) {
            problems.push(("ttl".into(), "must be at least 1s".into()));
        }
        let target = build_target(c).map_err(|p| problems.extend(p)).ok();
        match (target, connect_timeout, command_timeout, ttl) {
            (Some(target), Some(connect_timeout), Some(command_timeout), Some(ttl))
                if problems.is_empty() =>
            {
                Ok(Parsed {
                    target,
                    connect_timeout,
                    command_timeout,
                    ttl,
                })
            }
            _ => Err(problems),
        }
    }
}

/// Which Redis deployment the cache talks to.
// One per cache, made at start and on a rebuild: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Target {
    /// One server (perhaps behind a proxy or a DNS name that follows failovers).
    Single(Client),
    /// A master found through Sentinels: asked on every (re)connect, so a failover is followed.
    Sentinel(SentinelTarget),
    /// A Redis Cluster: every key goes to the node serving its slot.
    Cluster(ClusterClient),
}

pub(super) struct SentinelTarget {
    pub sentinels: Vec<ConnectionAddr>,
    pub master_name: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tcp: TcpSettings,
}

impl Target {
    /// Whether the server to talk to can change under the cache (a Sentinel failover).
    pub fn follows_master(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }
}

fn tcp_settings() -> TcpSettings {
    let tcp = TcpSettings::default().set_nodelay(true);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(TCP_USER_TIMEOUT);
    tcp
}

type Problems = Vec<(String, String)>;

/// A file holding a password: read now (also on every rebuild).
fn read_password(c: &RedisConfig, problems: &mut Problems) -> Option<String> {
    let pf = c.password_file.as_ref()?;
    match std::fs::read_to_string(pf) {
        Ok(p) => {
            let p = p.trim_end_matches(['\n', '\r']).to_owned();
            if p.is_empty() {
                problems.push(("password_file".into(), format!("{} is empty", pf.display())));
            }
            Some(p)
        }
        Err(e) => {
            problems.push((
                "password_file".into(),
                format!("cannot read {}: {e}", pf.display()),
            ));
            None
        }
    }
}

/// The PEM bundle of `tls_ca_file`, checked to hold a certificate; `tls`: whether the URL asks
/// for TLS at all (`None`: the URL is unusable, so do not complain about the pairing).
fn read_ca(c: &RedisConfig, tls: Option<bool>, problems: &mut Problems) -> Option<Vec<u8>> {
    let f = c.tls_ca_file.as_ref()?;
    let mut problem = |m: String| problems.push(("tls_ca_file".into(), m));
    if tls == Some(false) {
        problem("is only used with a rediss:// url".into());
    }
    let pem = std::fs::read(f)
        .map_err(|e| problem(format!("cannot read {}: {e}", f.display())))
        .ok()?;
    // The client would silently trust nothing at all.
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    if !certs.is_ok_and(|c| !c.is_empty()) {
        problem(format!("{} holds no PEM certificate", f.display()));
    }
    Some(pem)
}

/// The deployment `c` names: URLs, password file and CA file read now (also on every rebuild).
pub(super) fn build_target(c: &RedisConfig) -> Result<Target, Problems> {
    let url = c.url.trim();
    if !c.cluster.is_empty() {
        if !url.is_empty() && url != DEFAULT_URL {
            return Err(vec![(
                "cluster".into(),
                "a Cluster is named by its nodes: leave url unset".into(),
            )]);
        }
        return build_cluster(c);
    }
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        return build_sentinel(c, rest);
    }
    if url.starts_with("rediss+sentinel://") {
        return Err(vec![(
            "url".into(),
            "TLS to a Sentinel group is not supported; use redis+sentinel://".into(),
        )]);
    }
    build_single(c, url).map(Target::Single)
}

/// The connection settings of one server URL, with the problems keyed `key`.
fn server_info(url: &str, key: &str, problems: &mut Problems) -> Option<redis::ConnectionInfo> {
    match redis::parse_redis_url(url) {
        None => {
            problems.push((
                key.into(),
                format!("{url:?} is not a redis://, rediss:// or unix:// URL"),
            ));
            None
        }
        Some(u) if u.fragment().is_some() => {
            problems.push((
                key.into(),
                "must not have a #fragment (certificate checks cannot be turned off; \
                 use tls_ca_file for a private CA)"
                    .into(),
            ));
            None
        }
        Some(_) => url
            .into_connection_info()
            .map_err(|e| problems.push((key.into(), format!("{url:?}: {e}"))))
            .ok(),
    }
}

fn is_tls(info: &redis::ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

fn build_single(c: &RedisConfig, url: &str) -> Result<Client, Problems> {
    let mut problems = Vec::new();
    let info = server_info(url, "url", &mut problems);
    let password = read_password(c, &mut problems);
    let ca = read_ca(c, info.as_ref().map(is_tls), &mut problems);
    let (Some(info), true) = (info, problems.is_empty()) else {
        return Err(problems);
    };
    let mut redis_settings = info.redis_settings().clone();
    if let Some(p) = password {
        redis_settings = redis_settings.set_password(p);
    }
    let info = info
        .set_redis_settings(redis_settings)
        .set_tcp_settings(tcp_settings());
    match ca {
        Some(root_cert) => Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        )
        .map_err(|e| vec![("tls_ca_file".to_owned(), e.to_string())]),
        None => Client::open(info).map_err(|e| vec![("url".to_owned(), e.to_string())]),
    }
}

/// `rest`: what follows `redis+sentinel://`.
fn build_sentinel(c: &RedisConfig, rest: &str) -> Result<Target, Problems> {
    let mut problems = Vec::new();
    let mut problem = |m: String| problems.push(("url".to_owned(), m));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, url_password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        Some((u, p)) => (
            Some(u.to_owned()).filter(|u| !u.is_empty()),
            Some(p.to_owned()).filter(|p| !p.is_empty()),
        ),
        None => (None, None),
    };
    let mut sentinels = Vec::new();
    for h in hosts.split(',').map(str::trim) {
        let parsed = match h.rsplit_once(':') {
            Some((host, port)) => port.parse::<u16>().ok().map(|p| (host, p)),
            None => Some((h, SENTINEL_PORT)),
        };
        match parsed {
            Some((host, port)) if !host.is_empty() => sentinels.push(ConnectionAddr::Tcp(
                host.trim_matches(['[', ']']).to_owned(),
                port,
            )),
            _ => problem(format!("{h:?} is not a Sentinel's host[:port]")),
        }
    }
    let mut segments = path.split('/');
    let master_name = segments.next().unwrap_or_default().to_owned();
    if master_name.is_empty() {
        problem(
            "a Sentinel URL names the master after the hosts: \
             redis+sentinel://host:26379,host:26379/<master name>[/db]"
                .into(),
        );
    }
    let db = match segments.next().filter(|s| !s.is_empty()) {
        None => 0,
        Some(d) => d.parse::<i64>().unwrap_or_else(|_| {
            problem(format!("{d:?} is not a database number"));
            0
        }),
    };
    if segments.next().is_some() {
        problem("a Sentinel URL's path is /<master name>[/db]".into());
    }
    if c.tls_ca_file.is_some() {
        problems.push((
            "tls_ca_file".into(),
            "is only used with a rediss:// url".into(),
        ));
    }
    let password = read_password(c, &mut problems).or(url_password);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Target::Sentinel(SentinelTarget {
        sentinels,
        master_name,
        db,
        username,
        password,
        tcp: tcp_settings(),
    }))
}

fn build_cluster(c: &RedisConfig) -> Result<Target, Problems> {
    let mut problems = Vec::new();
    let mut infos = Vec::new();
    for (i, node) in c.cluster.iter().enumerate() {
        let node = node.trim();
        let url = if node.contains("://") {
            node.to_owned()
        } else {
            format!("redis://{node}")
        };
        let key = format!("cluster[{i}]");
        if let Some(info) = server_info(&url, &key, &mut problems) {
            if info.redis_settings().db() != 0 {
                problems.push((key, "a Cluster has only database 0".into()));
            } else if matches!(info.addr(), ConnectionAddr::Unix(_)) {
                problems.push((key, "a Cluster node is a host:port".into()));
            } else {
                infos.push(info);
            }
        }
    }
    let tls: Vec<bool> = infos.iter().map(is_tls).collect();
    if tls.iter().any(|t| *t != tls[0]) {
        problems.push((
            "cluster".into(),
            "all nodes use redis:// or all rediss://".into(),
        ));
    }
    let password = read_password(c, &mut problems);
    let ca = read_ca(c, tls.first().copied(), &mut problems);
    if !problems.is_empty() || infos.is_empty() {
        return Err(problems);
    }
    let url_password = infos[0].redis_settings().password().map(str::to_owned);
    let username = infos[0].redis_settings().username().map(str::to_owned);
    // Already checked with the other durations; a bad one only reaches here as a problem.
    let bound =
        |v: &str, d: u64| humantime::parse_duration(v.trim()).unwrap_or(Duration::from_millis(d));
    let mut b = ClusterClientBuilder::new(infos)
        .tcp_settings(tcp_settings())
        .connection_timeout(bound(&c.connect_timeout, 1000))
        .response_timeout(bound(&c.command_timeout, 500))
        // A MOVED or ASK (a slot changed hands) is followed at once; a node that is down is
        // not waited for (the command timeout bounds every operation anyway).
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100);
    if let Some(p) = password.or(url_password) {
        b = b.password(p);
    }
    if let Some(u) = username {
        b = b.username(u);
    }
    if let Some(root_cert) = ca {
        b = b.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    b.build()
        .map(Target::Cluster)
        .map_err(|e| vec![("cluster".to_owned(), e.to_string())])
}
