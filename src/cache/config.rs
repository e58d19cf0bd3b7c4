//! The `cache` section as written in the config file, and its check.

use serde::{Deserialize, Serialize};

use super::RedisConfig;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub backend: CacheBackend,
    pub memory: MemoryCacheConfig,
    /// Shared by replicas; advisory (a down Redis costs misses, never failed requests).
    pub redis: RedisConfig,
    /// Referrers answers (an index filtered by `artifactType`) kept in process memory.
    pub referrers: ReferrersCacheConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReferrersCacheConfig {
    /// Memory for kept answers (`32MiB`); beyond it, all are dropped and rebuilt on demand.
    pub max_bytes: String,
    /// Answers (filters) kept per index, so that varying the filter cannot grow one entry.
    pub filters_per_index: usize,
}

impl Default for ReferrersCacheConfig {
    fn default() -> Self {
        ReferrersCacheConfig {
            max_bytes: "32MiB".into(),
            filters_per_index: 16,
        }
    }
}

impl ReferrersCacheConfig {
    /// The memory bound in bytes, or why `max_bytes` is not a size.
    pub fn max_bytes(&self) -> Result<usize, String> {
        self.max_bytes
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| usize::try_from(b.as_u64()).unwrap_or(usize::MAX))
            .map_err(|e| format!("{:?} is not a size like 32MiB: {e}", self.max_bytes))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryCacheConfig {
    pub max_entries: usize,
}

impl Default for MemoryCacheConfig {
    fn default() -> Self {
        MemoryCacheConfig {
            max_entries: 100_000,
        }
    }
}

impl CacheConfig {
    /// Every problem, keyed within this section (`redis.url`, `memory.max_entries`).
    pub fn check(&self) -> Result<(), Vec<(String, String)>> {
        let mut problems = Vec::new();
        if self.backend == CacheBackend::Redis
            && let Err(ps) = self.redis.validate()
        {
            problems.extend(ps.into_iter().map(|(k, m)| (format!("redis.{k}"), m)));
        }
        if self.memory.max_entries == 0 {
            problems.push(("memory.max_entries".into(), "must be at least 1".into()));
        }
        if let Err(m) = self.referrers.max_bytes() {
            problems.push(("referrers.max_bytes".into(), m));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
