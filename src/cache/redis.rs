//! Redis descriptor cache, shared by every replica that points at the same Redis.
//!
//! # Keys
//!
//! Every key starts with `key_prefix` (default `ocimirror:`), so several mirrors can share one
//! Redis database. Values are small JSON objects; every key expires after `ttl` (default 7 days),
//! so an abandoned repository does not hold Redis memory for ever.
//!
//! | key                                | value                                                  |
//! |------------------------------------|--------------------------------------------------------|
//! | `<prefix>tag:<repo>:<tag>`         | `{"digest":"sha256:…","checked_at":1700000000123}`     |
//! | `<prefix>manifest:<digest>`        | `{"media_type":"application/vnd.oci…","size":1234}`    |
//! | `<prefix>fill:<digest>`            | a random token: the replica filling this blob (expires unless renewed) |
//! | `<prefix>verdict:<rule>:<digest>`  | `{"key":"SHA256:…","via":null}`: a passed signature check under a `verify` rule's key set (`<rule>` is `<rule id>@<repo>`) |
//!
//! `<repo>` is the upstream-qualified repository key exactly as the caller gives it (it may hold
//! `/` and `:`); a tag never holds `:`, so the last `:` of a tag key separates the two.
//! `checked_at` is when the upstream last confirmed the tag, in Unix milliseconds; the key's
//! expiry is only Redis housekeeping, tag freshness is judged from `checked_at` by the caller.
//! A value that does not decode (say, written by a future version) reads as a miss.
//!
//! # Failures
//!
//! Advisory, like every cache: a Redis error or timeout is counted
//! (`ocimirror_cache_errors_total{backend="redis",op}`), logged at most once per
//! [`LOG_EVERY`] per kind of failure, and reads as a miss or a skipped write. Every command is
//! bounded by `command_timeout`. After a connection failure or timeout the cache stops asking
//! Redis for [`BACKOFF`] (the operations it skips count as errors too), so a dead Redis costs
//! neither latency nor a connection attempt per request; then it tries again, and the
//! [`ConnectionManager`] reconnects by itself. Creating the
//! cache never contacts Redis: the mirror starts with Redis down and uses it once it is up. An
//! authentication failure rebuilds the client, re-reading `password_file` (a rotated secret).

use std::fmt;
use std::path::PathBuf;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{Client, Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisError};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::lease::{LeaseOutcome, Leases, lease_value};
use super::{DescriptorCache, ManifestEntry, TagEntry, VerdictEntry};
use crate::oci::Digest;

/// How long the cache leaves Redis alone after a connection failure or a timeout.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per kind of failure in this period; the others are counted in the next.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Unacknowledged data on a connection for this long kills it (`TCP_USER_TIMEOUT`), so a Redis
/// that vanished without closing its sockets is noticed and reconnected.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// The `cache.redis` section.
///
/// ```yaml
/// cache:
///   backend: redis
///   redis:
///     url: redis://redis.internal:6379/0    # rediss:// for TLS
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
    /// `redis://[user[:password]@]host[:port][/db]`, `rediss://…` for TLS, or
    /// `unix:///path/to/socket[?db=N]`.
    pub url: String,
    /// A file holding the password (a trailing newline is ignored); overrides the URL's password.
    pub password_file: Option<PathBuf>,
    /// PEM bundle of the CA that signed the server's certificate; trusted instead of the system
    /// roots. Only with `rediss://`.
    pub tls_ca_file: Option<PathBuf>,
    /// Prepended to every key.
    pub key_prefix: String,
    /// Bound on establishing a connection (TCP, TLS, AUTH, SELECT).
    pub connect_timeout: String,
    /// Bound on one cache operation, the latency a slow or dead Redis can add to a request.
    pub command_timeout: String,
    /// Expiry of every entry.
    pub ttl: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
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
            .field("password_file", &self.password_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<not a URL>".into(),
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

struct Parsed {
    client: Client,
    connect_timeout: Duration,
    command_timeout: Duration,
    ttl: Duration,
}

impl Parsed {
    fn from_config(c: &RedisConfig) -> Result<Parsed, Vec<(String, String)>> {
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
        let client = build_client(c).map_err(|p| problems.extend(p)).ok();
        match (client, connect_timeout, command_timeout, ttl) {
            (Some(client), Some(connect_timeout), Some(command_timeout), Some(ttl))
                if problems.is_empty() =>
            {
                Ok(Parsed {
                    client,
                    connect_timeout,
                    command_timeout,
                    ttl,
                })
            }
            _ => Err(problems),
        }
    }
}

/// The client for `c`: URL, password file and CA file read now (also on every rebuild).
fn build_client(c: &RedisConfig) -> Result<Client, Vec<(String, String)>> {
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut problem = |k: &str, m: String| problems.push((k.into(), m));
    let url = c.url.trim();
    let info = match redis::parse_redis_url(url) {
        None => {
            problem(
                "url",
                format!("{url:?} is not a redis://, rediss:// or unix:// URL"),
            );
            None
        }
        Some(u) if u.fragment().is_some() => {
            problem(
                "url",
                "must not have a #fragment (certificate checks cannot be turned off; \
                 use tls_ca_file for a private CA)"
                    .into(),
            );
            None
        }
        Some(_) => url
            .into_connection_info()
            .map_err(|e| problem("url", format!("{url:?}: {e}")))
            .ok(),
    };
    let tls = matches!(
        info.as_ref().map(|i| i.addr()),
        Some(redis::ConnectionAddr::TcpTls { .. })
    );
    let password = c
        .password_file
        .as_ref()
        .and_then(|pf| match std::fs::read_to_string(pf) {
            Ok(p) => {
                let p = p.trim_end_matches(['\n', '\r']).to_owned();
                if p.is_empty() {
                    problem("password_file", format!("{} is empty", pf.display()));
                }
                Some(p)
            }
            Err(e) => {
                problem(
                    "password_file",
                    format!("cannot read {}: {e}", pf.display()),
                );
                None
            }
        });
    let ca = c.tls_ca_file.as_ref().and_then(|f| {
        if info.is_some() && !tls {
            problem("tls_ca_file", "is only used with a rediss:// url".into());
        }
        let pem = std::fs::read(f)
            .map_err(|e| problem("tls_ca_file", format!("cannot read {}: {e}", f.display())))
            .ok()?;
        // The client would silently trust nothing at all.
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
        if !certs.is_ok_and(|c| !c.is_empty()) {
            problem(
                "tls_ca_file",
                format!("{} holds no PEM certificate", f.display()),
            );
        }
        Some(pem)
    });
    let (Some(info), true) = (info, problems.is_empty()) else {
        return Err(problems);
    };
    let mut redis_settings = info.redis_settings().clone();
    if let Some(p) = password {
        redis_settings = redis_settings.set_password(p);
    }
    let tcp = TcpSettings::default().set_nodelay(true);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(TCP_USER_TIMEOUT);
    let info = info
        .set_redis_settings(redis_settings)
        .set_tcp_settings(tcp);
    let client = match ca {
        Some(root_cert) => Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        )
        .map_err(|e| vec![("tls_ca_file".to_owned(), e.to_string())])?,
        None => Client::open(info).map_err(|e| vec![("url".to_owned(), e.to_string())])?,
    };
    Ok(client)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    GetTag,
    SetTag,
    GetManifest,
    SetManifest,
    GetVerdict,
    SetVerdict,
    AcquireLease,
    RenewLease,
    ReleaseLease,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::GetTag => "get_tag",
            Op::SetTag => "set_tag",
            Op::GetManifest => "get_manifest",
            Op::SetManifest => "set_manifest",
            Op::GetVerdict => "get_verdict",
            Op::SetVerdict => "set_verdict",
            Op::AcquireLease => "acquire_lease",
            Op::RenewLease => "renew_lease",
            Op::ReleaseLease => "release_lease",
        }
    }
}

/// Why an operation did not reach Redis or got no usable answer.
#[derive(Debug)]
enum Fault {
    /// Skipped: Redis failed moments ago (see [`BACKOFF`]).
    BackingOff,
    Timeout,
    Connection(RedisError),
    Auth(RedisError),
    /// Redis answered with an error (out of memory, read-only replica, …).
    Reply(RedisError),
    /// A stored value that this version cannot read.
    Decode(String),
}

/// Kinds of failure for the log rate limit.
const KINDS: usize = 5;

impl Fault {
    fn classify(e: RedisError) -> Fault {
        if e.kind() == ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        {
            Fault::Auth(e)
        } else if e.is_timeout() {
            Fault::Timeout
        } else if e.is_io_error() {
            Fault::Connection(e)
        } else {
            Fault::Reply(e)
        }
    }

    /// Index for the log rate limit; `None`: not logged (a consequence of a logged failure).
    fn kind(&self) -> Option<usize> {
        match self {
            Fault::BackingOff => None,
            Fault::Timeout => Some(0),
            Fault::Connection(_) => Some(1),
            Fault::Auth(_) => Some(2),
            Fault::Reply(_) => Some(3),
            Fault::Decode(_) => Some(4),
        }
    }

    /// Whether Redis looks unreachable, so that asking again right away is pointless.
    fn backs_off(&self) -> bool {
        matches!(self, Fault::Timeout | Fault::Connection(_) | Fault::Auth(_))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::BackingOff => f.write_str("skipped while Redis is failing"),
            Fault::Timeout => f.write_str("timed out"),
            Fault::Connection(e) | Fault::Auth(e) | Fault::Reply(e) => write!(f, "{e}"),
            Fault::Decode(m) => write!(f, "undecodable value: {m}"),
        }
    }
}

/// Failure bookkeeping: the back-off window, the log rate limit, the error count.
struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not asked; 0: ask.
    backoff_until: AtomicU64,
    /// Per kind: milliseconds since `epoch` of the last log line, plus one; 0: never.
    last_log: [AtomicU64; KINDS],
    suppressed: [AtomicU64; KINDS],
    errors: AtomicU64,
    failing: AtomicBool,
    /// Milliseconds since `epoch` of the last client rebuild, plus one; 0: never.
    last_rebuild: AtomicU64,
}

impl Health {
    fn new() -> Self {
        Health {
            epoch: Instant::now(),
            backoff_until: AtomicU64::new(0),
            last_log: Default::default(),
            suppressed: Default::default(),
            errors: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            last_rebuild: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn backing_off(&self) -> bool {
        self.now_ms() < self.backoff_until.load(Ordering::Relaxed)
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("redis cache: Redis answers again");
        }
    }

    fn failed(&self, op: Op, fault: &Fault) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::CACHE_ERRORS, "backend" => "redis", "op" => op.as_str())
            .increment(1);
        let now = self.now_ms();
        if fault.backs_off() {
            self.failing.store(true, Ordering::Relaxed);
            self.backoff_until
                .store(now + BACKOFF.as_millis() as u64, Ordering::Relaxed);
        }
        let Some(kind) = fault.kind() else { return };
        if let Some(suppressed) = self.may_log(kind, now) {
            tracing::warn!(
                op = op.as_str(),
                error = %fault,
                suppressed,
                "redis cache: operation failed, read as a miss or write skipped (failures \
                 of one kind are logged at most every {}s; `suppressed`: those not logged)",
                LOG_EVERY.as_secs()
            );
        }
    }

    /// Whether a failure of `kind` at `now` may be logged; if so, how many were not since.
    fn may_log(&self, kind: usize, now: u64) -> Option<u64> {
        let last = self.last_log[kind].load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + LOG_EVERY.as_millis() as u64;
        if due
            && self.last_log[kind]
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed[kind].swap(0, Ordering::Relaxed))
        } else {
            self.suppressed[kind].fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Whether a client rebuild is due (at most one per [`BACKOFF`]); claims it if so.
    fn claim_rebuild(&self) -> bool {
        let now = self.now_ms() + 1;
        let last = self.last_rebuild.load(Ordering::Relaxed);
        (last == 0 || now >= last + BACKOFF.as_millis() as u64)
            && self
                .last_rebuild
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

struct Link {
    client: Client,
    /// Made on first use, inside the runtime (it spawns a task), and dropped on a rebuild.
    manager: Option<ConnectionManager>,
}

/// A [`DescriptorCache`] in Redis; see the module documentation for keys and failure handling.
pub struct RedisCache {
    config: RedisConfig,
    link: RwLock<Link>,
    manager_config: ConnectionManagerConfig,
    command_timeout: Duration,
    ttl_ms: u64,
    health: Health,
}

impl RedisCache {
    /// Checks the settings and reads the secret files; does not contact Redis, so it succeeds
    /// while Redis is down (the cache connects on first use, and reconnects by itself).
    pub fn new(config: &RedisConfig) -> Result<RedisCache, RedisConfigError> {
        let p = Parsed::from_config(config).map_err(RedisConfigError)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(p.connect_timeout))
            .set_response_timeout(Some(p.command_timeout))
            // One attempt per (re)connect: while Redis is down, failing at once and backing off
            // beats queueing requests behind a retry loop.
            .set_number_of_retries(0);
        Ok(RedisCache {
            config: config.clone(),
            link: RwLock::new(Link {
                client: p.client,
                manager: None,
            }),
            manager_config,
            command_timeout: p.command_timeout,
            ttl_ms: p.ttl.as_millis().min(i64::MAX as u128) as u64,
            health: Health::new(),
        })
    }

    /// Failed operations so far (what `ocimirror_cache_errors_total` counts for this cache).
    pub fn errors(&self) -> u64 {
        self.health.errors.load(Ordering::Relaxed)
    }

    fn tag_key(&self, repo: &str, tag: &str) -> String {
        format!("{}tag:{repo}:{tag}", self.config.key_prefix)
    }

    fn lease_key(&self, name: &str) -> String {
        format!("{}{name}", self.config.key_prefix)
    }

    fn verdict_key(&self, rule: &str, digest: &Digest) -> String {
        format!("{}verdict:{rule}:{digest}", self.config.key_prefix)
    }

    fn manifest_key(&self, digest: &Digest) -> String {
        format!("{}manifest:{digest}", self.config.key_prefix)
    }

    fn manager(&self) -> Result<ConnectionManager, Fault> {
        if let Some(m) = &self.link.read().expect("lock").manager {
            return Ok(m.clone());
        }
        let mut link = self.link.write().expect("lock");
        if let Some(m) = &link.manager {
            return Ok(m.clone());
        }
        let m = ConnectionManager::new_lazy_with_config(
            link.client.clone(),
            self.manager_config.clone(),
        )
        .map_err(Fault::Reply)?;
        link.manager = Some(m.clone());
        Ok(m)
    }

    /// After an authentication failure: a client with the secret files read again, and a new
    /// connection (the manager never retries a refused AUTH by itself).
    fn rebuild(&self) {
        if !self.health.claim_rebuild() {
            return;
        }
        match build_client(&self.config) {
            Ok(client) => {
                *self.link.write().expect("lock") = Link {
                    client,
                    manager: None,
                };
            }
            Err(problems) => {
                for (key, message) in problems {
                    tracing::warn!(key, message, "redis cache: cannot rebuild the client");
                }
            }
        }
    }

    /// Runs `cmd` within the command timeout, unless Redis is being left alone.
    async fn query<T: FromRedisValue>(&self, op: Op, cmd: Cmd) -> Result<T, Fault> {
        let result = if self.health.backing_off() {
            Err(Fault::BackingOff)
        } else {
            match self.manager() {
                Ok(mut conn) => {
                    let attempt = async {
                        match cmd.query_async::<T>(&mut conn).await {
                            // A dropped or never-made connection: the manager has just started
                            // a new one, and one more try waits for it instead of reporting the
                            // stale failure.
                            Err(e) if e.is_io_error() => cmd.query_async::<T>(&mut conn).await,
                            r => r,
                        }
                    };
                    match tokio::time::timeout(self.command_timeout, attempt).await {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => Err(Fault::classify(e)),
                        Err(_) => Err(Fault::Timeout),
                    }
                }
                Err(f) => Err(f),
            }
        };
        match &result {
            Ok(_) => self.health.succeeded(),
            Err(f) => {
                self.health.failed(op, f);
                if matches!(f, Fault::Auth(_)) {
                    self.rebuild();
                }
            }
        }
        result
    }

    async fn get<V: for<'de> Deserialize<'de>>(&self, op: Op, key: String) -> Option<V> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key);
        let raw: Option<String> = self.query(op, cmd).await.ok()?;
        match serde_json::from_str(&raw?) {
            Ok(v) => Some(v),
            Err(e) => {
                self.health
                    .failed(op, &Fault::Decode(format!("{key}: {e}")));
                None
            }
        }
    }

    async fn set<V: Serialize>(&self, op: Op, key: String, value: &V) {
        let value = serde_json::to_string(value).expect("plain struct serialises");
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(self.ttl_ms);
        let _ = self.query::<()>(op, cmd).await;
    }
}

/// Compare-and-act scripts: only the holder (the token's owner) may extend or drop a lease.
const RENEW_SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE_SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/// Take the lease, or say who holds it, in one round trip: answers the lease's value (ours
/// when taken; empty when it expired in between).
const ACQUIRE_SCRIPT: &str = "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end return redis.call('get', KEYS[1]) or ''";
/// Take a lease from a gone holder only if it still has the value seen (or expired meanwhile).
const TAKE_OVER_SCRIPT: &str = "local v = redis.call('get', KEYS[1]) if v == false or v == ARGV[1] then redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) return ARGV[2] end return v";

#[async_trait]
impl Leases for RedisCache {
    async fn try_acquire(&self, name: &str, ttl: Duration, peer: Option<&str>) -> LeaseOutcome {
        let value = lease_value(peer);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ACQUIRE_SCRIPT)
            .arg(1)
            .arg(self.lease_key(name))
            .arg(&value)
            .arg(ttl.as_millis() as u64);
        match self.query::<String>(Op::AcquireLease, cmd).await {
            Ok(v) if v == value => LeaseOutcome::Acquired(value),
            Ok(held) => LeaseOutcome::HeldElsewhere(held),
            Err(_) => LeaseOutcome::Unavailable,
        }
    }

    async fn take_over(
        &self,
        name: &str,
        held: &str,
        ttl: Duration,
        peer: Option<&str>,
    ) -> LeaseOutcome {
        let value = lease_value(peer);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE_OVER_SCRIPT)
            .arg(1)
            .arg(self.lease_key(name))
            .arg(held)
            .arg(&value)
            .arg(ttl.as_millis() as u64);
        match self.query::<String>(Op::AcquireLease, cmd).await {
            Ok(v) if v == value => LeaseOutcome::Acquired(value),
            Ok(now) => LeaseOutcome::HeldElsewhere(now),
            Err(_) => LeaseOutcome::Unavailable,
        }
    }

    async fn renew(&self, name: &str, token: &str, ttl: Duration) -> bool {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW_SCRIPT)
            .arg(1)
            .arg(self.lease_key(name))
            .arg(token)
            .arg(ttl.as_millis() as u64);
        // A Redis that cannot answer has not given the lease away: keep filling.
        self.query::<i64>(Op::RenewLease, cmd)
            .await
            .map_or(true, |n| n == 1)
    }

    async fn release(&self, name: &str, token: &str) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(self.lease_key(name))
            .arg(token);
        let _ = self.query::<i64>(Op::ReleaseLease, cmd).await;
    }
}

#[derive(Serialize, Deserialize)]
struct TagValue {
    digest: String,
    /// Unix milliseconds.
    checked_at: u64,
}

#[derive(Serialize, Deserialize)]
struct ManifestValue {
    media_type: String,
    size: u64,
}

#[derive(Serialize, Deserialize)]
struct VerdictValue {
    key: String,
    via: Option<String>,
}

#[async_trait]
impl DescriptorCache for RedisCache {
    async fn tag(&self, repo: &str, tag: &str) -> Option<TagEntry> {
        let key = self.tag_key(repo, tag);
        let v: TagValue = self.get(Op::GetTag, key.clone()).await?;
        match Digest::parse(&v.digest) {
            Ok(digest) => Some(TagEntry {
                digest,
                checked_at: SystemTime::UNIX_EPOCH + Duration::from_millis(v.checked_at),
            }),
            Err(e) => {
                self.health
                    .failed(Op::GetTag, &Fault::Decode(format!("{key}: {e}")));
                None
            }
        }
    }

    async fn set_tag(&self, repo: &str, tag: &str, entry: TagEntry) {
        let checked_at = entry
            .checked_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let v = TagValue {
            digest: entry.digest.to_string(),
            checked_at,
        };
        self.set(Op::SetTag, self.tag_key(repo, tag), &v).await;
    }

    async fn manifest(&self, digest: &Digest) -> Option<ManifestEntry> {
        let v: ManifestValue = self.get(Op::GetManifest, self.manifest_key(digest)).await?;
        Some(ManifestEntry {
            media_type: v.media_type,
            size: v.size,
        })
    }

    async fn set_manifest(&self, digest: &Digest, entry: ManifestEntry) {
        let v = ManifestValue {
            media_type: entry.media_type,
            size: entry.size,
        };
        self.set(Op::SetManifest, self.manifest_key(digest), &v)
            .await;
    }

    async fn verdict(&self, rule: &str, digest: &Digest) -> Option<VerdictEntry> {
        let key = self.verdict_key(rule, digest);
        let v: VerdictValue = self.get(Op::GetVerdict, key.clone()).await?;
        let via = match v.via.as_deref().map(Digest::parse).transpose() {
            Ok(via) => via,
            Err(e) => {
                self.health
                    .failed(Op::GetVerdict, &Fault::Decode(format!("{key}: {e}")));
                return None;
            }
        };
        Some(VerdictEntry { key: v.key, via })
    }

    async fn set_verdict(&self, rule: &str, digest: &Digest, entry: VerdictEntry) {
        let v = VerdictValue {
            key: entry.key,
            via: entry.via.map(|d| d.to_string()),
        };
        self.set(Op::SetVerdict, self.verdict_key(rule, digest), &v)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// Whether `redis-server` can run here; without it the Redis tests skip, unless
    /// `OCIMIRROR_REQUIRE_ALL` is set (the test script sets it), where they fail.
    fn redis_installed() -> bool {
        let found = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        crate::util::tool_or_skip(found, "redis-server", "apt-get install redis-server")
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a loopback port")
            .port()
    }

    /// A real `redis-server` on a loopback port, without persistence, in a temporary directory;
    /// killed when dropped. Stop and start it again on the same port to simulate an outage.
    struct Server {
        dir: tempfile::TempDir,
        port: u16,
        args: Vec<String>,
        child: Option<Child>,
    }

    impl Server {
        async fn start() -> Option<Server> {
            Server::start_with(free_port(), |port| vec!["--port".into(), port.to_string()]).await
        }

        /// `args(port)`: how to listen (plain or TLS) and anything else.
        async fn start_with(port: u16, args: impl Fn(u16) -> Vec<String>) -> Option<Server> {
            if !redis_installed() {
                return None;
            }
            let mut s = Server {
                dir: tempfile::tempdir().expect("temp dir"),
                port,
                args: args(port),
                child: None,
            };
            s.run().await;
            Some(s)
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        async fn run(&mut self) {
            assert!(self.child.is_none(), "already running");
            let log = self.path("redis.log");
            let _ = std::fs::remove_file(&log);
            let mut child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--logfile")
                .arg(&log)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            for _ in 0..200 {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("Ready to accept connections") {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("redis-server exited ({status}):\n{text}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            panic!(
                "redis-server not ready after 10s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }

        fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// `STOP` freezes the server (a hung Redis: connections open, no answers); `CONT` resumes.
        fn signal(&self, sig: &str) {
            let pid = self.child.as_ref().expect("running").id();
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{sig} {pid}");
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            // SIGKILL works on a stopped process too.
            self.stop();
        }
    }

    fn config(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }

    fn manifest(i: u64) -> ManifestEntry {
        ManifestEntry {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: i,
        }
    }

    /// One write and read back; `true` when the cache answered from Redis.
    async fn works(c: &RedisCache, i: u64) -> bool {
        let d = Digest::sha256_of(format!("probe {i}").as_bytes());
        c.set_manifest(&d, manifest(i)).await;
        c.manifest(&d).await == Some(manifest(i))
    }

    /// Polls until the cache works again, for at most `attempts` tries 100 ms apart; how many.
    async fn recovers_within(c: &RedisCache, attempts: u64) -> u64 {
        for i in 1..=attempts {
            if works(c, i).await {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the cache did not work again within {attempts} attempts");
    }

    /// Both a read and a write with Redis unusable: a miss and no error, quickly, and counted.
    async fn fails_softly(c: &RedisCache) {
        let before = c.errors();
        let d = Digest::sha256_of(b"while down");
        let t = Instant::now();
        assert_eq!(c.manifest(&d).await, None);
        c.set_manifest(&d, manifest(1)).await;
        assert_eq!(c.tag("r", "t").await, None);
        let took = t.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(c.errors() >= before + 3, "{} errors", c.errors() - before);
    }

    async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
        Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test server")
    }

    #[tokio::test]
    async fn behaviour_suite() {
        let Some(server) = Server::start().await else {
            return;
        };
        let c = RedisCache::new(&config(&server.url())).unwrap();
        super::super::suite::run(&c).await;
        assert_eq!(c.errors(), 0);
    }

    #[tokio::test]
    async fn keys_and_values_are_as_documented() {
        let Some(server) = Server::start().await else {
            return;
        };
        let c = RedisCache::new(&RedisConfig {
            ttl: "1h".into(),
            ..config(&server.url())
        })
        .unwrap();
        let d = Digest::sha256_of(b"m");
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        c.set_tag(
            "docker.io/library/alpine",
            "3.20",
            TagEntry {
                digest: d.clone(),
                checked_at: at,
            },
        )
        .await;
        c.set_manifest(&d, manifest(42)).await;

        let mut r = raw(&server.url()).await;
        let tag_key = "ocimirror:tag:docker.io/library/alpine:3.20";
        let manifest_key = format!("ocimirror:manifest:{d}");
        let tag: String = redis::cmd("GET")
            .arg(tag_key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(
            tag,
            format!(r#"{{"digest":"{d}","checked_at":1700000000123}}"#)
        );
        let m: String = redis::cmd("GET")
            .arg(&manifest_key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(
            m,
            r#"{"media_type":"application/vnd.oci.image.manifest.v1+json","size":42}"#
        );
        for key in [tag_key, &manifest_key] {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut r)
                .await
                .unwrap();
            assert!((3_500_000..=3_600_000).contains(&ttl), "{key}: {ttl}");
        }

        // A value this version cannot read is a miss, counted.
        let _: () = redis::cmd("SET")
            .arg(&manifest_key)
            .arg("{\"future\":true}")
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(c.manifest(&d).await, None);
        assert_eq!(c.errors(), 1);
    }

    #[tokio::test]
    async fn prefixes_keep_mirrors_apart() {
        let Some(server) = Server::start().await else {
            return;
        };
        let a = RedisCache::new(&config(&server.url())).unwrap();
        let b = RedisCache::new(&RedisConfig {
            key_prefix: "other:".into(),
            ..config(&server.url())
        })
        .unwrap();
        let d = Digest::sha256_of(b"m");
        a.set_manifest(&d, manifest(1)).await;
        assert_eq!(b.manifest(&d).await, None);
        b.set_manifest(&d, manifest(2)).await;
        assert_eq!(a.manifest(&d).await, Some(manifest(1)));
        assert_eq!(b.manifest(&d).await, Some(manifest(2)));
    }

    #[tokio::test]
    async fn redis_going_away_and_coming_back() {
        let Some(mut server) = Server::start().await else {
            return;
        };
        let c = RedisCache::new(&config(&server.url())).unwrap();
        assert!(works(&c, 0).await);

        server.stop();
        fails_softly(&c).await;
        // Still down after the back-off: each try is one quick refused connection.
        tokio::time::sleep(BACKOFF).await;
        fails_softly(&c).await;

        server.run().await;
        let attempts = recovers_within(&c, 50).await;
        eprintln!("working again after {attempts} attempts");
        // The entries written before the outage went with the server (no persistence).
        assert!(works(&c, 100).await);
    }

    #[tokio::test]
    async fn created_while_redis_is_down() {
        if !redis_installed() {
            return;
        }
        let port = free_port();
        let c = RedisCache::new(&config(&format!("redis://127.0.0.1:{port}/0"))).unwrap();
        fails_softly(&c).await;
        let Some(_server) =
            Server::start_with(port, |p| vec!["--port".into(), p.to_string()]).await
        else {
            return;
        };
        recovers_within(&c, 50).await;
    }

    #[tokio::test]
    async fn a_hung_redis_costs_at_most_the_command_timeout() {
        let Some(server) = Server::start().await else {
            return;
        };
        let c = RedisCache::new(&RedisConfig {
            command_timeout: "300ms".into(),
            ..config(&server.url())
        })
        .unwrap();
        assert!(works(&c, 0).await);

        server.signal("STOP");
        let d = Digest::sha256_of(b"hung");
        let t = Instant::now();
        assert_eq!(c.manifest(&d).await, None);
        let first = t.elapsed();
        assert!(first >= Duration::from_millis(250), "{first:?}");
        // Backing off: the next ones do not wait at all.
        c.set_manifest(&d, manifest(1)).await;
        assert_eq!(c.manifest(&d).await, None);
        let all = t.elapsed();
        assert!(all < Duration::from_secs(3), "{all:?}");
        assert_eq!(c.errors(), 3);

        server.signal("CONT");
        recovers_within(&c, 50).await;
    }

    #[tokio::test]
    async fn password_file_overrides_the_url_and_is_read_again_after_a_refusal() {
        let Some(server) = Server::start_with(free_port(), |p| {
            vec![
                "--port".into(),
                p.to_string(),
                "--requirepass".into(),
                "s3cret".into(),
            ]
        })
        .await
        else {
            return;
        };
        let pf = server.path("password");
        let url = format!("redis://:wrong@127.0.0.1:{}/0", server.port);

        // Without the file, the URL's (wrong) password: refused, a miss.
        let c = RedisCache::new(&config(&url)).unwrap();
        fails_softly(&c).await;

        std::fs::write(&pf, "s3cret\n").unwrap();
        let good = RedisCache::new(&RedisConfig {
            password_file: Some(pf.clone()),
            ..config(&url)
        })
        .unwrap();
        assert!(works(&good, 0).await);

        // A rotated secret: refused until the file holds the new one, then read again.
        std::fs::write(&pf, "old\n").unwrap();
        let rotating = RedisCache::new(&RedisConfig {
            password_file: Some(pf.clone()),
            ..config(&url)
        })
        .unwrap();
        fails_softly(&rotating).await;
        std::fs::write(&pf, "s3cret\n").unwrap();
        recovers_within(&rotating, 50).await;
    }

    /// A CA, and a certificate for `localhost` and 127.0.0.1 signed by it: (CA PEM, cert, key).
    fn tls_material(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let paths = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&paths.0, ca_cert.pem()).unwrap();
        std::fs::write(&paths.1, cert.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        paths
    }

    #[tokio::test]
    async fn tls_with_a_private_ca() {
        let material = tempfile::tempdir().unwrap();
        let (ca, cert, key) = tls_material(material.path());
        let Some(server) = Server::start_with(free_port(), |p| {
            let s = |p: &Path| p.display().to_string();
            vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                p.to_string(),
                "--tls-cert-file".into(),
                s(&cert),
                "--tls-key-file".into(),
                s(&key),
                "--tls-ca-cert-file".into(),
                s(&ca),
                "--tls-auth-clients".into(),
                "no".into(),
            ]
        })
        .await
        else {
            return;
        };
        let url = format!("rediss://localhost:{}/0", server.port);
        let c = RedisCache::new(&RedisConfig {
            tls_ca_file: Some(ca.clone()),
            ..config(&url)
        })
        .unwrap();
        super::super::suite::run(&c).await;
        assert_eq!(c.errors(), 0);

        // The system roots do not trust the private CA: no connection, a miss.
        let untrusted = RedisCache::new(&config(&url)).unwrap();
        fails_softly(&untrusted).await;
    }

    #[test]
    fn validate_reports_every_problem() {
        assert_eq!(RedisConfig::default().validate(), Ok(()));
        let c = RedisConfig {
            url: "http://example.com".into(),
            password_file: Some("/nonexistent/password".into()),
            connect_timeout: "0s".into(),
            command_timeout: "soon".into(),
            ttl: "10ms".into(),
            ..RedisConfig::default()
        };
        let problems = c.validate().unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "connect_timeout",
                "command_timeout",
                "ttl",
                "url",
                "password_file"
            ],
            "{problems:?}"
        );
        assert!(RedisCache::new(&c).is_err());

        let c = RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..RedisConfig::default()
        };
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|(k, _)| k == "tls_ca_file"));

        let garbage = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(garbage.path(), "not a certificate").unwrap();
        let c = RedisConfig {
            url: "rediss://redis.example:6380/1".into(),
            tls_ca_file: Some(garbage.path().into()),
            ..RedisConfig::default()
        };
        let problems = c.validate().unwrap_err();
        assert!(problems[0].1.contains("no PEM certificate"), "{problems:?}");

        let c = config("rediss://redis.example:6380/1#insecure");
        assert_eq!(c.validate().unwrap_err()[0].0, "url");
        for ok in [
            "rediss://redis.example:6380/1",
            "redis://user:pw@redis.example",
            "unix:///run/redis.sock",
        ] {
            assert_eq!(config(ok).validate(), Ok(()), "{ok}");
        }
    }

    #[test]
    fn yaml_shape_and_redacted_debug() {
        let text = "url: redis://:hunter2@redis.internal:6379/2\nkey_prefix: \"m1:\"\n\
                    command_timeout: 250ms\nttl: 1d\n";
        let c: RedisConfig = serde_saphyr::from_str(text).unwrap();
        assert_eq!(c.key_prefix, "m1:");
        assert_eq!(c.connect_timeout, "1s");
        assert_eq!(c.validate(), Ok(()));
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        assert!(serde_saphyr::from_str::<RedisConfig>("pool_size: 3\n").is_err());
    }

    #[test]
    fn failures_are_logged_at_most_once_per_period_per_kind() {
        let h = Health::new();
        let every = LOG_EVERY.as_millis() as u64;
        assert_eq!(h.may_log(0, 0), Some(0));
        assert_eq!(h.may_log(0, 5), None);
        assert_eq!(h.may_log(0, every - 1), None);
        // Another kind has its own budget.
        assert_eq!(h.may_log(1, 6), Some(0));
        assert_eq!(h.may_log(0, every), Some(2));
        assert_eq!(h.may_log(0, every + 1), None);
    }

    #[tokio::test]
    async fn fill_leases_name_their_holder_and_pass_only_from_a_gone_one() {
        let Some(server) = Server::start().await else {
            return;
        };
        let c = RedisCache::new(&config(&server.url())).unwrap();
        let ttl = Duration::from_secs(30);
        let a = match c
            .try_acquire("fill:x", ttl, Some("http://10.0.0.1:5001"))
            .await
        {
            LeaseOutcome::Acquired(t) => t,
            other => panic!("{other:?}"),
        };
        // Another replica learns who holds it, and where to reach it.
        let held = match c
            .try_acquire("fill:x", ttl, Some("http://10.0.0.2:5001"))
            .await
        {
            LeaseOutcome::HeldElsewhere(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(held, a);
        assert_eq!(
            super::super::lease::holder_peer(&held),
            Some("http://10.0.0.1:5001")
        );
        // Taken from the holder it saw, once: a third replica seeing the old value loses.
        let b = match c
            .take_over("fill:x", &held, ttl, Some("http://10.0.0.2:5001"))
            .await
        {
            LeaseOutcome::Acquired(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            c.take_over("fill:x", &held, ttl, Some("http://10.0.0.3:5001"))
                .await,
            LeaseOutcome::HeldElsewhere(b.clone())
        );
        // The old holder can neither renew nor release it any more; the new one can.
        assert!(!c.renew("fill:x", &a, ttl).await);
        c.release("fill:x", &a).await;
        assert!(c.renew("fill:x", &b, ttl).await);
        c.release("fill:x", &b).await;
        assert!(matches!(
            c.try_acquire("fill:x", ttl, None).await,
            LeaseOutcome::Acquired(_)
        ));
        assert_eq!(c.errors(), 0);
    }
}
