//! Bearer tokens of the Docker token flow, as an upstream's token endpoint hands them out: the
//! shapes of its answer (`token` or `access_token`, with or without `expires_in`), what it says
//! when it refuses, and the cache of tokens per scope, each kept until shortly before it expires
//! and only for the password it was obtained with. Requests needing a token for the same scope
//! at once wait for one fetch of it (see [`TokenCache::gate`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::UpstreamError;

/// The token spec's default lifetime when the server does not say.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A token endpoint's answer: the token and its lifetime in seconds.
pub fn parse(body: &[u8]) -> Result<(String, u64), UpstreamError> {
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Invalid(format!("token response: {e}")))?;
    let token = [parsed.token, parsed.access_token]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
        .ok_or_else(|| UpstreamError::Invalid("token response has no token".into()))?;
    Ok((
        token,
        parsed.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME).max(1),
    ))
}

/// What an upstream said when it refused: the first OCI error's code and message, or a short
/// printable prefix of the body.
pub fn refusal_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<OneError>,
    }
    #[derive(Deserialize)]
    struct OneError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body)
        && let Some(first) = e.errors.first()
    {
        return format!("{} {}", first.code, first.message)
            .trim()
            .to_owned();
    }
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    text.trim().to_owned()
}

struct Cached {
    token: String,
    expires: Instant,
    generation: u64,
    obtained: Instant,
}

/// Tokens per scope.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, Cached>>,
    /// One lock per scope being fetched: the requests behind the first take what it obtained.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenCache {
    /// The token for `scope`, if one is cached, unexpired, and was obtained with the password
    /// of `generation`.
    pub fn get(&self, scope: &str, generation: u64) -> Option<String> {
        let tokens = self.tokens.lock().expect("lock");
        tokens
            .get(scope)
            .filter(|t| t.expires > Instant::now() && t.generation == generation)
            .map(|t| t.token.clone())
    }

    /// Like [`get`](Self::get), for a token obtained at `since` or later: one another request
    /// fetched while this one waited at the scope's [`gate`](Self::gate).
    pub fn get_since(&self, scope: &str, generation: u64, since: Instant) -> Option<String> {
        let tokens = self.tokens.lock().expect("lock");
        tokens
            .get(scope)
            .filter(|t| t.expires > Instant::now() && t.generation == generation)
            .filter(|t| t.obtained >= since)
            .map(|t| t.token.clone())
    }

    /// The lock that requests fetching a token for `scope` take in turn, so that N requests
    /// needing one at once make one request to the token endpoint.
    pub fn gate(&self, scope: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().expect("lock");
        // Locks nobody holds or waits for any more.
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        gates.entry(scope.to_owned()).or_default().clone()
    }

    pub fn put(&self, scope: &str, token: &str, lifetime: u64, generation: u64) {
        // Renew a little early so a token never expires between our check and the upstream's.
        let margin = (lifetime / 10).clamp(1, 30);
        let mut tokens = self.tokens.lock().expect("lock");
        // Tokens of an older password are of no more use.
        tokens.retain(|_, t| t.generation == generation);
        tokens.insert(
            scope.to_owned(),
            Cached {
                token: token.to_owned(),
                expires: Instant::now() + Duration::from_secs(lifetime - margin.min(lifetime - 1)),
                generation,
                obtained: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_shape() {
        assert_eq!(parse(br#"{"token":"a"}"#).unwrap(), ("a".into(), 60));
        assert_eq!(
            parse(br#"{"access_token":"b","expires_in":3}"#).unwrap(),
            ("b".into(), 3)
        );
        assert_eq!(
            parse(br#"{"token":"","access_token":"c","expires_in":0,"issued_at":"2024-01-01T00:00:00Z"}"#)
                .unwrap(),
            ("c".into(), 1)
        );
        assert!(parse(br#"{"token":""}"#).is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn refusals_say_what_the_upstream_said() {
        assert_eq!(
            refusal_detail(br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#),
            "DENIED requested access to the resource is denied"
        );
        assert_eq!(refusal_detail(b"nope\n"), "nope");
    }

    #[test]
    fn tokens_of_an_older_password_are_not_used() {
        let c = TokenCache::default();
        c.put("repository:a:pull", "t0", 300, 0);
        assert_eq!(c.get("repository:a:pull", 0).as_deref(), Some("t0"));
        assert_eq!(c.get("repository:a:pull", 1), None);
        c.put("repository:b:pull", "t1", 300, 1);
        assert_eq!(c.get("repository:a:pull", 0), None, "dropped");
        assert_eq!(c.get("repository:b:pull", 1).as_deref(), Some("t1"));
    }
}
