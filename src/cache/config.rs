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
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
