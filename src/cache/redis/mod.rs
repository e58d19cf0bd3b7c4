//! Redis descriptor cache, shared by every replica that points at the same Redis: one server,
//! a Sentinel group's master, or a Cluster.
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
//! A value that does not decode (say, written by a future version) reads as a miss. Every
//! command touches one key, so under a Cluster each goes to one node, and keys spread over all.
//!
//! # Failures
//!
//! Advisory, like every cache: a Redis error or timeout is counted
//! (`ocimirror_cache_errors_total{backend="redis",op}`), logged at most once per
//! [`health::LOG_EVERY`] per kind of failure, and reads as a miss or a skipped write. Every command is
//! bounded by `command_timeout`. After a connection failure or timeout the cache stops asking
//! Redis for [`health::BACKOFF`] (the operations it skips count as errors too), so a dead Redis costs
//! neither latency nor a connection attempt per request; then it tries again, and the
//! connection reconnects by itself. Creating the cache never contacts Redis: the mirror starts
//! with Redis down and uses it once it is up. An authentication failure rebuilds the client,
//! re-reading `password_file` (a rotated secret). Under Sentinel, a lost connection, a timeout
//! or a `READONLY` answer (the master became a replica) makes the next operation ask the
//! Sentinels for the master again, so a failover costs misses for as long as it takes.

mod config;
mod connect;
mod health;
mod leases;

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::aio::ConnectionManagerConfig;
use redis::{Cmd, FromRedisValue};
use serde::{Deserialize, Serialize};

use self::config::{Parsed, Target, build_target};
use self::connect::Conn;
use self::health::{Fault, Health, Op};
use super::{DescriptorCache, ManifestEntry, TagEntry, VerdictEntry};
use crate::oci::Digest;

pub use self::config::{RedisConfig, RedisConfigError};

struct Link {
    target: Arc<Target>,
    /// Made on first use, inside the runtime (it spawns a task), and dropped on a rebuild.
    conn: Option<Conn>,
}

/// A [`DescriptorCache`] in Redis; see the module documentation for keys and failure handling.
pub struct RedisCache {
    config: RedisConfig,
    link: RwLock<Link>,
    /// One connection attempt at a time (under Sentinel or Cluster it uses the network).
    connecting: tokio::sync::Mutex<()>,
    follows_master: bool,
    connect_timeout: Duration,
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
            follows_master: p.target.follows_master(),
            link: RwLock::new(Link {
                target: Arc::new(p.target),
                conn: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
            connect_timeout: p.connect_timeout,
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

    fn current(&self) -> Option<Conn> {
        self.link.read().expect("lock").conn.clone()
    }

    /// The connection, made now if there is none (bounded by `connect_timeout`).
    async fn conn(&self) -> Result<Conn, Fault> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let connect = async {
            let _one = self.connecting.lock().await;
            if let Some(c) = self.current() {
                return Ok(c);
            }
            let target = self.link.read().expect("lock").target.clone();
            let c = target
                .connect(&self.manager_config)
                .await
                .map_err(Fault::classify)?;
            let mut link = self.link.write().expect("lock");
            // A rebuild meanwhile brought new settings: the connection made with the old ones
            // is used once, not kept.
            if Arc::ptr_eq(&link.target, &target) {
                link.conn = Some(c.clone());
            }
            Ok(c)
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .unwrap_or(Err(Fault::Timeout))
    }

    /// After an authentication failure: a client with the secret files read again, and a new
    /// connection (the manager never retries a refused AUTH by itself). Under Sentinel, after a
    /// lost master: the next connection asks the Sentinels again.
    fn rebuild(&self) {
        if !self.health.claim_rebuild() {
            return;
        }
        match build_target(&self.config) {
            Ok(target) => {
                *self.link.write().expect("lock") = Link {
                    target: Arc::new(target),
                    conn: None,
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
            match self.conn().await {
                Ok(mut conn) => {
                    let attempt = async {
                        match conn.query::<T>(&cmd).await {
                            // A dropped or never-made connection: the manager has just started
                            // a new one, and one more try waits for it instead of reporting the
                            // stale failure.
                            Err(e) if e.is_io_error() => conn.query::<T>(&cmd).await,
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
                if f.needs_new_link(self.follows_master) {
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
mod tests;
