//! The token protocol as `warm --mirror` speaks it to a mirror with `auth`: like any client, it
//! answers a `401` Bearer challenge by asking the realm for a token for the repository's pull
//! scope (with Basic credentials when given), keeps one token per scope until shortly before it
//! expires, and asks again when it has expired or the mirror refuses it. A scope the token
//! service does not grant comes back as the mirror's `403 DENIED`, reported for the image that
//! needed it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use url::Url;

use crate::oci::RepoName;
use crate::upstream::Challenge;

/// What the token endpoint answers when it says nothing of a token's life (the token spec's
/// default).
const DEFAULT_EXPIRES_IN: u64 = 60;

/// Credentials for the mirror's token service.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

struct Token {
    value: String,
    /// When it is no longer used (a little before the token service says it expires).
    renew_at: Instant,
}

/// The realm and service a Bearer challenge named.
#[derive(Clone)]
struct Realm {
    url: Url,
    service: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Tokens per scope for one mirror.
#[derive(Default)]
pub struct MirrorAuth {
    credentials: Option<Credentials>,
    realm: Mutex<Option<Realm>>,
    tokens: Mutex<HashMap<String, Token>>,
    /// Tokens obtained so far (for reports and tests).
    obtained: std::sync::atomic::AtomicUsize,
}

/// When a token that lives `expires_in` seconds from `now` should be replaced: a tenth of its
/// life early, at most 30 s, so a request never starts with a token about to expire.
fn renew_at(now: Instant, expires_in: u64) -> Instant {
    let life = Duration::from_secs(expires_in);
    now + life - (life / 10).min(Duration::from_secs(30))
}

/// The pull scope of `name`.
pub fn pull_scope(name: &RepoName) -> String {
    format!("repository:{name}:pull")
}

impl MirrorAuth {
    pub fn new(credentials: Option<Credentials>) -> Self {
        MirrorAuth {
            credentials,
            ..Default::default()
        }
    }

    /// How many tokens were obtained from the realm.
    pub fn tokens_obtained(&self) -> usize {
        self.obtained.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The token for `scope` if it is still good at `now`.
    fn cached(&self, scope: &str, now: Instant) -> Option<String> {
        let tokens = self.tokens.lock().expect("lock");
        tokens
            .get(scope)
            .filter(|t| now < t.renew_at)
            .map(|t| t.value.clone())
    }

    fn remember(&self, scope: &str, value: String, expires_in: u64, now: Instant) {
        self.tokens.lock().expect("lock").insert(
            scope.to_owned(),
            Token {
                value,
                renew_at: renew_at(now, expires_in),
            },
        );
    }

    /// Ask the realm for a token for `scope`.
    async fn obtain(
        &self,
        client: &reqwest::Client,
        realm: &Realm,
        scope: &str,
    ) -> Result<String, String> {
        let mut url = realm.url.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &realm.service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
            if let Some(c) = &self.credentials {
                q.append_pair("account", &c.username);
            }
        }
        let mut req = client.get(url.clone());
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the token service at {}: {e}", realm.url))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(match &self.credentials {
                Some(c) => format!(
                    "the mirror's token service refused the credentials of {:?}",
                    c.username
                ),
                None => "the mirror's token service wants credentials: give --username and \
                         --password-file"
                    .to_owned(),
            });
        }
        if !status.is_success() {
            return Err(format!(
                "the mirror's token service answered {status} for {scope}"
            ));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("the mirror's token service sent no token: {e}"))?;
        let body: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the mirror's token service sent no token: {e}"))?;
        let value = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or("the mirror's token service sent no token")?;
        self.remember(
            scope,
            value.clone(),
            body.expires_in.unwrap_or(DEFAULT_EXPIRES_IN),
            Instant::now(),
        );
        self.obtained
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(value)
    }

    /// Send the request `build` makes for repository `name` (None: one that needs no
    /// repository, such as `/v2/`), with a token for its pull scope: the one kept, else a new
    /// one when the realm is known. A `401` Bearer challenge is answered once with a new token;
    /// a `401` Basic challenge with the credentials.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        name: Option<&RepoName>,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let scope = name.map(pull_scope);
        let mut token = match &scope {
            Some(s) => match self.cached(s, Instant::now()) {
                Some(t) => Some(t),
                None => {
                    let realm = self.realm.lock().expect("lock").clone();
                    match realm {
                        Some(r) => Some(self.obtain(client, &r, s).await?),
                        None => None,
                    }
                }
            },
            None => None,
        };
        let mut retried = false;
        loop {
            let mut req = build();
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("cannot reach the mirror: {}", super::warm::chain(&e)))?;
            if resp.status() != reqwest::StatusCode::UNAUTHORIZED || retried {
                return refused(resp, token.is_some(), scope.as_deref());
            }
            retried = true;
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Challenge::parse(v).ok());
            match challenge {
                Some(c) if c.scheme == "bearer" => {
                    let realm = c
                        .param("realm")
                        .and_then(|r| Url::parse(r).ok())
                        .ok_or("the mirror's challenge names no usable realm")?;
                    let realm = Realm {
                        url: realm,
                        service: c.param("service").map(str::to_owned),
                    };
                    *self.realm.lock().expect("lock") = Some(realm.clone());
                    let wanted = scope
                        .clone()
                        .or_else(|| c.param("scope").map(str::to_owned))
                        .unwrap_or_default();
                    token = Some(self.obtain(client, &realm, &wanted).await?);
                }
                Some(c) if c.scheme == "basic" && self.credentials.is_some() => {
                    let c = self.credentials.as_ref().expect("checked");
                    let resp = build()
                        .basic_auth(&c.username, Some(&c.password))
                        .send()
                        .await
                        .map_err(|e| {
                            format!("cannot reach the mirror: {}", super::warm::chain(&e))
                        })?;
                    return refused(resp, true, scope.as_deref());
                }
                _ => return refused(resp, false, scope.as_deref()),
            }
        }
    }
}

/// The response, unless the mirror refused the credentials or token it was given (a `401`
/// after a token): then what was refused. A `403` (the token does not grant the scope, or the
/// repository is outside the upstream's allow-list) is the caller's to report, with the
/// mirror's own message.
fn refused(
    resp: reqwest::Response,
    authenticated: bool,
    scope: Option<&str>,
) -> Result<reqwest::Response, String> {
    if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    if !authenticated {
        return Err(
            "the mirror requires authentication: give --username and --password-file".into(),
        );
    }
    Err(match scope {
        Some(s) => format!("the mirror refused the token it issued for {s} (401)"),
        None => "the mirror refused the token it issued (401)".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_kept_per_scope_until_shortly_before_they_expire() {
        let a = MirrorAuth::new(None);
        let t0 = Instant::now();
        a.remember("repository:x:pull", "tx".into(), 300, t0);
        a.remember("repository:y:pull", "ty".into(), 5, t0);
        assert_eq!(a.cached("repository:x:pull", t0).as_deref(), Some("tx"));
        assert_eq!(a.cached("repository:z:pull", t0), None);
        // Renewed 30 s early at most, a tenth of a short life early.
        let later = t0 + Duration::from_secs(269);
        assert_eq!(a.cached("repository:x:pull", later).as_deref(), Some("tx"));
        assert_eq!(
            a.cached("repository:x:pull", t0 + Duration::from_secs(271)),
            None
        );
        assert_eq!(
            a.cached("repository:y:pull", t0 + Duration::from_millis(4400))
                .as_deref(),
            Some("ty")
        );
        assert_eq!(
            a.cached("repository:y:pull", t0 + Duration::from_millis(4600)),
            None
        );
        // A new token replaces the old one.
        a.remember("repository:x:pull", "tx2".into(), 300, later);
        assert_eq!(a.cached("repository:x:pull", later).as_deref(), Some("tx2"));
    }

    #[test]
    fn the_password_is_never_shown() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
