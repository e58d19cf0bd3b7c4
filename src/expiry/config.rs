//! The `expiry` section as written in the config file, and its check into an [`ExpiryPolicy`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ExpiryPolicy;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpiryConfig {
    /// Forget what nobody pulled for this long (`30d`); unset: never by age.
    pub max_age: Option<String>,
    /// Keep stored bytes under this (`500GiB`), least recently pulled first; unset: no cap.
    pub max_size: Option<String>,
    /// How often the fleet runs a pass; `0s`: only `ocimirror gc`.
    pub interval: String,
    /// Nothing pulled more recently than this is ever deleted.
    pub min_idle: String,
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        ExpiryConfig {
            max_age: None,
            max_size: None,
            interval: "1h".into(),
            min_idle: "10m".into(),
        }
    }
}

/// A size like `500GiB`, `20 GB` or `1048576` (bytes).
pub fn parse_size(v: &str) -> Result<u64, String> {
    v.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{v:?} is not a size like 500GiB or 20GB: {e}"))
}

impl ExpiryConfig {
    /// The policy, or every problem keyed within this section (`max_age`, `min_idle`, …).
    pub fn check(&self) -> Result<ExpiryPolicy, Vec<(String, String)>> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut dur = |key: &str, v: &str| match humantime::parse_duration(v.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push((
                    key.into(),
                    format!("{v:?} is not a duration like 30d, 12h or 10m: {e}"),
                ));
                None
            }
        };
        let max_age = self.max_age.as_deref().and_then(|v| dur("max_age", v));
        let interval = dur("interval", &self.interval);
        let min_idle = dur("min_idle", &self.min_idle);
        if min_idle.is_some_and(|d| d < Duration::from_secs(1)) {
            problems.push((
                "min_idle".into(),
                "must be at least 1s: it protects pulls in progress".into(),
            ));
        }
        let max_size = self.max_size.as_deref().and_then(|v| match parse_size(v) {
            Ok(n) => Some(n),
            Err(m) => {
                problems.push(("max_size".into(), m));
                None
            }
        });
        match (interval, min_idle, problems.is_empty()) {
            (Some(interval), Some(min_idle), true) => Ok(ExpiryPolicy {
                max_age,
                max_size,
                interval,
                min_idle,
            }),
            _ => Err(problems),
        }
    }
}
