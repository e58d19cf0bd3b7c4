//! Authentication: who a client is, from the Basic credentials it sends to the token endpoint.
//!
//! A [`Chain`] asks its [`Authenticator`]s in order, as docker_auth does: static users
//! (docker_auth's `users:` map and an htpasswd file), GitHub personal access tokens, OpenID
//! Connect ID tokens. The first to recognise the user decides; a known user with a bad secret is
//! refused without asking the others. Around that the chain adds what docker_auth lacks: failed
//! logins are throttled per client address, and successful checks are cached briefly so that a
//! bcrypt hash (~0.3 s at cost 12) or a round trip to GitHub is paid once per few minutes, not
//! once per token request.
//!
//! How the token endpoint should answer each outcome: [`AuthnError::WrongPassword`],
//! [`AuthnError::UnknownUser`] and [`AuthnError::AnonymousNotAllowed`] all become the same 401
//! (never tell a client which one it was); [`AuthnError::Throttled`] becomes 429 with
//! `Retry-After`; [`AuthnError::Unavailable`] becomes 503, and [`AuthnError::Busy`] (the
//! bounded queue of password checks is full) 503 with `Retry-After`.
//!
//! Secrets (passwords, tokens) never appear in errors, logs or `Debug` output. The success cache
//! is keyed by an HMAC-SHA-256 of user and password under a random per-process key, so even a
//! memory dump does not yield a fast-to-crack unsalted hash.

mod cache;
mod checks;
mod github;
mod ldap;
mod oidc;
mod static_users;
mod throttle;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Identity;
use super::external::{ExternalAuthenticator, ExternalConfig};
use cache::LoginCache;
pub(crate) use checks::{parse_duration, parse_service_url, parse_timeout};

pub use github::{GitHubAuthenticator, GitHubConfig, GitHubSettings};
pub use ldap::{LdapAuthenticator, LdapConfig, LdapLabel};
pub use oidc::{OidcAuthenticator, OidcConfig, OidcSettings};
pub use static_users::{
    HashPasswordError, HtpasswdEntry, StaticUser, StaticUsers, hash_password, parse_htpasswd,
    try_hash_password,
};
pub(crate) use throttle::client_key;
pub use throttle::{Attempt, LoginThrottle, ThrottleConfig, ThrottleSettings};

/// Longest user name the chain passes to an authenticator; longer ones are refused outright.
pub const MAX_USERNAME_LEN: usize = 256;
/// Longest password (or token) the chain passes on. ID tokens with many groups run to a few KiB.
pub const MAX_PASSWORD_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// The user is known to an authenticator and the secret is wrong (or the token is invalid,
    /// expired, or for somebody else).
    #[error("wrong password")]
    WrongPassword,
    /// No authenticator recognised the user. Answer exactly as for `WrongPassword`.
    #[error("unknown user")]
    UnknownUser,
    /// A request without credentials, and anonymous access is not configured.
    #[error("anonymous access is not allowed")]
    AnonymousNotAllowed,
    /// Too many failed logins from this client address; the password was not checked.
    #[error("too many failed logins from this address; retry in {}s", retry_after_secs(*.retry_after))]
    Throttled { retry_after: Duration },
    /// A backend (GitHub, the OIDC provider, the blocking pool) could not give an answer.
    #[error("authentication backend unavailable: {0}")]
    Unavailable(String),
    /// Every password check is busy and `login_throttle.max_pending_checks` wait already: the
    /// password was not checked (the client retries, rather than wait behind the queue).
    #[error("too many logins are being checked; retry shortly")]
    Busy,
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl AuthnError {
    /// Whether the client should get a plain 401 (as opposed to 429 or 503).
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            AuthnError::WrongPassword | AuthnError::UnknownUser | AuthnError::AnonymousNotAllowed
        )
    }

    /// For `Throttled`: the value of a `Retry-After` header, in whole seconds (at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AuthnError::Throttled { retry_after } => Some(retry_after_secs(*retry_after).max(1)),
            _ => None,
        }
    }
}

/// One way of checking credentials.
#[async_trait]
pub trait Authenticator: Send + Sync {
    fn name(&self) -> &'static str;

    /// `Ok(Some)`: authenticated. `Ok(None)`: not this authenticator's user (the chain asks the
    /// next). `Err(WrongPassword)`: this authenticator's user, bad secret (the chain refuses).
    /// `Err(Unavailable)`: no answer (the chain asks the next, and answers 503 if nobody
    /// authenticates the user).
    async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<Identity>, AuthnError>;

    /// Whether the chain may cache this authenticator's successes. Authenticators whose check is
    /// cheap and whose credentials carry their own expiry (ID tokens) say no, so that a cached
    /// success never outlives the credential.
    fn cacheable(&self) -> bool {
        true
    }

    /// Whether `account`, whom this authenticator let in before, may still log in, and with
    /// which labels: asked when a refresh token is redeemed. The default, for authenticators
    /// that can only check a credential (GitHub and OIDC tokens, external programs): cannot
    /// tell. `Err(Unavailable)`: no answer now.
    async fn recheck(&self, _account: &str) -> Result<Recheck, AuthnError> {
        Ok(Recheck::CannotTell)
    }
}

/// The answer of [`Authenticator::recheck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// The account is there, with these labels now.
    Exists(BTreeMap<String, Vec<String>>),
    /// The account was removed or disabled.
    Gone,
    /// The authenticator cannot look an account up without its credential.
    CannotTell,
}

/// A successful authentication and the authenticator that made it (`None`: anonymous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub identity: Identity,
    pub authenticator: Option<&'static str>,
}

/// A problem in the authentication config, located by its dotted key path (relative to the
/// section that holds [`AuthnConfig`]) so that the config loader can add the line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl ConfigProblem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The time source for throttling and caches: the system clock, or a manual one for tests.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<Mutex<Instant>>>);

impl Clock {
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock that stands still until [`Clock::advance`]d.
    pub fn manual() -> Self {
        Clock(Some(Arc::new(Mutex::new(Instant::now()))))
    }

    pub fn now(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(t) => *lock(t),
        }
    }

    /// Move a manual clock forward. Panics on the system clock.
    pub fn advance(&self, d: Duration) {
        match &self.0 {
            None => panic!("cannot advance the system clock"),
            Some(t) => *lock(t) += d,
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock::manual"
        } else {
            "Clock::system"
        })
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn lock_read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn lock_write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The HTTP client an authenticator asks its provider with: `timeout` for connecting and for
/// the whole request, redirects not followed. `section` names the config section in the problem.
pub(crate) fn provider_client(
    section: &str,
    timeout: Duration,
) -> Result<reqwest::Client, ConfigProblem> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ocimirror/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigProblem::new(section, format!("HTTP client: {e}")))
}

/// Read a response body, refusing more than `limit` bytes.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe_reqwest(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("response larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error for a message: its kind and URL (ours never carry secrets), never headers.
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    match e.url() {
        Some(u) => format!("{kind}: {u}"),
        None => kind.to_owned(),
    }
}

/// Runtime settings of a [`Chain`].
#[derive(Debug, Clone)]
pub struct ChainSettings {
    /// Requests without credentials (or with an empty user name) get the anonymous identity.
    pub allow_anonymous: bool,
    pub throttle: ThrottleSettings,
    /// How long a successful check is remembered; zero disables the cache.
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
}

impl Default for ChainSettings {
    fn default() -> Self {
        ChainSettings {
            allow_anonymous: false,
            throttle: ThrottleSettings::default(),
            cache_ttl: Duration::from_secs(300),
            cache_max_entries: 10_000,
        }
    }
}

fn outcome(result: &'static str) {
    metrics::counter!(crate::metrics::AUTHN, "result" => result).increment(1);
}

/// The authenticators, in order, with throttling of failures and a cache of successes.
pub struct Chain {
    authenticators: Vec<Arc<dyn Authenticator>>,
    allow_anonymous: bool,
    throttle: Arc<LoginThrottle>,
    cache: LoginCache,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field(
                "authenticators",
                &self
                    .authenticators
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>(),
            )
            .field("allow_anonymous", &self.allow_anonymous)
            .finish_non_exhaustive()
    }
}

impl Chain {
    pub fn new(authenticators: Vec<Arc<dyn Authenticator>>, settings: ChainSettings) -> Self {
        Self::with_clock(authenticators, settings, Clock::system())
    }

    pub fn with_clock(
        authenticators: Vec<Arc<dyn Authenticator>>,
        settings: ChainSettings,
        clock: Clock,
    ) -> Self {
        Chain {
            authenticators,
            allow_anonymous: settings.allow_anonymous,
            throttle: Arc::new(LoginThrottle::new(settings.throttle, clock.clone())),
            cache: LoginCache::new(settings.cache_ttl, settings.cache_max_entries, clock),
        }
    }

    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// The throttle, for other endpoints that check secrets (e.g. refresh tokens) to share.
    pub fn throttle(&self) -> &Arc<LoginThrottle> {
        &self.throttle
    }

    /// Number of cached successful checks (for tests and metrics).
    pub fn cached_logins(&self) -> usize {
        self.cache.len()
    }

    /// Authenticate a request from `ip` with optional Basic credentials `(user, password)`.
    ///
    /// No credentials, or an empty user name (docker_auth's `""` user), is the anonymous
    /// identity if anonymous access is allowed. Anonymous requests are never throttled.
    pub async fn authenticate(
        &self,
        ip: IpAddr,
        credentials: Option<(&str, &str)>,
    ) -> Result<Identity, AuthnError> {
        self.login(ip, credentials).await.map(|l| l.identity)
    }

    /// [`Chain::authenticate`], also saying which authenticator recognised the user.
    pub async fn login(
        &self,
        ip: IpAddr,
        credentials: Option<(&str, &str)>,
    ) -> Result<Login, AuthnError> {
        let Some((user, password)) = credentials.filter(|(u, _)| !u.is_empty()) else {
            return if self.allow_anonymous {
                outcome("anonymous");
                Ok(Login {
                    identity: Identity::anonymous(),
                    authenticator: None,
                })
            } else {
                outcome("anonymous_refused");
                Err(AuthnError::AnonymousNotAllowed)
            };
        };
        let shown_user = if user.len() > MAX_USERNAME_LEN {
            "<too long>"
        } else {
            user
        };
        let throttled = |retry_after: Duration| {
            outcome("throttled");
            tracing::warn!(%ip, user = shown_user, "login refused: too many failed logins from this address");
            AuthnError::Throttled { retry_after }
        };
        // Refused before anything else, even the cache: a throttled address learns nothing.
        self.throttle.check(ip).map_err(throttled)?;

        if user.len() > MAX_USERNAME_LEN || password.len() > MAX_PASSWORD_LEN {
            let attempt = self.throttle.begin(ip).await.map_err(throttled)?;
            attempt.failed();
            outcome("unknown_user");
            tracing::info!(%ip, "login refused: user name or password too long");
            return Err(AuthnError::UnknownUser);
        }

        let key = self.cache.key(user, password);
        if let Some((identity, by)) = self.cache.get(&key) {
            outcome("cached");
            tracing::debug!(%ip, user, authenticator = by, "login ok (cached)");
            return Ok(Login {
                identity,
                authenticator: Some(by),
            });
        }
        // Reserve one of this address's remaining failure allowances for the duration of the
        // check, so that a burst of concurrent guesses cannot all slip past the limit.
        let attempt = self.throttle.begin(ip).await.map_err(throttled)?;
        // A concurrent identical login may have filled the cache while we waited.
        if let Some((identity, by)) = self.cache.get(&key) {
            attempt.succeeded();
            outcome("cached");
            return Ok(Login {
                identity,
                authenticator: Some(by),
            });
        }

        let mut unavailable: Option<String> = None;
        for a in &self.authenticators {
            match a.authenticate(user, password).await {
                Ok(Some(identity)) => {
                    attempt.succeeded();
                    if a.cacheable() {
                        self.cache.insert(key, identity.clone(), a.name());
                    }
                    outcome("ok");
                    tracing::info!(%ip, user, account = %identity.account, authenticator = a.name(), "login ok");
                    return Ok(Login {
                        identity,
                        authenticator: Some(a.name()),
                    });
                }
                Ok(None) => {}
                Err(AuthnError::Unavailable(msg)) => {
                    tracing::warn!(%ip, user, authenticator = a.name(), error = %msg, "authenticator unavailable");
                    unavailable.get_or_insert(msg);
                }
                Err(AuthnError::WrongPassword | AuthnError::UnknownUser) => {
                    attempt.failed();
                    outcome("wrong_password");
                    tracing::info!(%ip, user, authenticator = a.name(), "login refused: wrong password");
                    return Err(AuthnError::WrongPassword);
                }
                Err(AuthnError::Busy) => {
                    drop(attempt);
                    outcome("busy");
                    tracing::warn!(%ip, user, authenticator = a.name(), "login refused: the queue of password checks is full");
                    return Err(AuthnError::Busy);
                }
                Err(e) => {
                    // Not expected from an authenticator; pass it on without counting a failure.
                    drop(attempt);
                    return Err(e);
                }
            }
        }
        match unavailable {
            Some(msg) => {
                drop(attempt);
                outcome("unavailable");
                Err(AuthnError::Unavailable(msg))
            }
            None => {
                attempt.failed();
                outcome("unknown_user");
                tracing::info!(%ip, user, "login refused: unknown user");
                Err(AuthnError::UnknownUser)
            }
        }
    }

    /// The `'static` name of a configured authenticator (refresh tokens name it as a string).
    pub fn authenticator_name(&self, name: &str) -> Option<&'static str> {
        self.authenticators
            .iter()
            .map(|a| a.name())
            .find(|n| *n == name)
    }

    /// Ask the authenticator named `authenticator` whether `account` still exists (a refresh
    /// token is being redeemed). An authenticator no longer configured knows nobody.
    pub async fn recheck(&self, authenticator: &str, account: &str) -> Result<Recheck, AuthnError> {
        match self
            .authenticators
            .iter()
            .find(|a| a.name() == authenticator)
        {
            Some(a) => a.recheck(account).await,
            None => Ok(Recheck::Gone),
        }
    }
}

/// Settings of the success cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginCacheConfig {
    /// How long a successful check is remembered (`0s` disables the cache).
    pub ttl: String,
    pub max_entries: usize,
}

impl Default for LoginCacheConfig {
    fn default() -> Self {
        LoginCacheConfig {
            ttl: "5m".into(),
            max_entries: 10_000,
        }
    }
}

/// The authentication part of the config, in docker_auth's shape where it has one:
///
/// ```yaml
/// users:                      # docker_auth's static user map
///   admin:
///     password: "$2y$05$..."  # bcrypt, as from `htpasswd -nB` or `ocimirror hash-password`
///     labels: {group: [admins]}
///   "": {}                    # the anonymous user: allows requests without credentials
/// htpasswd: /etc/ocimirror/htpasswd   # more static users, `user:$2y$...` lines
/// allow_anonymous: false      # the same as the "" user
/// github_auth:                # password = a GitHub personal access token
///   organization: acme        # optional: only members of this organisation
///   api_url: https://api.github.com
///   http_timeout: 10s
///   max_pages: 10
/// oidc_auth:                  # password = an OpenID Connect ID token
///   issuer: https://accounts.example.com
///   client_id: ocimirror      # the expected `aud`
///   jwks_url: ...             # optional; else discovered from the issuer
///   username_claim: email     # or preferred_username, sub, ...
///   groups_claim: groups      # becomes the label `groups`
///   http_timeout: 10s
/// login_throttle: {max_failures: 5, window: 1m, max_clients: 10000}
/// login_cache: {ttl: 5m, max_entries: 10000}
/// ```
///
/// The chain asks static users first, then GitHub, then OIDC, then LDAP, then the external program
/// (`ext_auth: {command, args, timeout}`, see [`crate::auth::external`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthnConfig {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, StaticUser>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    pub allow_anonymous: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_auth: Option<GitHubConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc_auth: Option<OidcConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ldap_auth: Option<LdapConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext_auth: Option<ExternalConfig>,
    pub login_throttle: ThrottleConfig,
    pub login_cache: LoginCacheConfig,
}

impl AuthnConfig {
    /// Validate everything (reporting every problem at once) and build the chain. Reads the
    /// htpasswd file; contacts no network service (OIDC discovery happens on first use).
    pub fn build(&self) -> Result<Chain, Vec<ConfigProblem>> {
        self.build_with_clock(Clock::system())
    }

    pub fn build_with_clock(&self, clock: Clock) -> Result<Chain, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut authenticators: Vec<Arc<dyn Authenticator>> = Vec::new();
        let mut anonymous = self.allow_anonymous;
        if !self.users.is_empty() || self.htpasswd.is_some() {
            match StaticUsers::load(&self.users, self.htpasswd.as_deref()) {
                Ok(s) => {
                    let s = s.with_max_pending(self.login_throttle.max_pending_checks);
                    anonymous |= s.allows_anonymous();
                    if !s.is_empty() {
                        authenticators.push(Arc::new(s));
                    }
                }
                Err(p) => problems.extend(p),
            }
        }
        if let Some(g) = &self.github_auth {
            match g
                .settings("github_auth")
                .and_then(|s| GitHubAuthenticator::new(s).map_err(|p| vec![p]))
            {
                Ok(a) => authenticators.push(Arc::new(a)),
                Err(p) => problems.extend(p),
            }
        }
        if let Some(o) = &self.oidc_auth {
            match o
                .settings("oidc_auth")
                .and_then(|s| OidcAuthenticator::with_clock(s, clock.clone()).map_err(|p| vec![p]))
            {
                Ok(a) => authenticators.push(Arc::new(a)),
                Err(p) => problems.extend(p),
            }
        }
        if let Some(l) = &self.ldap_auth {
            match l.build("ldap_auth") {
                Ok(a) => authenticators.push(Arc::new(a)),
                Err(p) => problems.extend(p),
            }
        }
        if let Some(e) = &self.ext_auth {
            match e.program("ext_auth") {
                Ok(p) => authenticators.push(Arc::new(ExternalAuthenticator::new(p))),
                Err(p) => problems.extend(p),
            }
        }
        let throttle = match self.login_throttle.settings("login_throttle") {
            Ok(t) => Some(t),
            Err(p) => {
                problems.extend(p);
                None
            }
        };
        let cache_ttl = parse_duration("login_cache.ttl", &self.login_cache.ttl, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let settings = ChainSettings {
            allow_anonymous: anonymous,
            throttle: throttle.unwrap_or_default(),
            cache_ttl: cache_ttl.unwrap_or_default(),
            cache_max_entries: self.login_cache.max_entries,
        };
        Ok(Chain::with_clock(authenticators, settings, clock))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub(crate) fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    /// An authenticator with a fixed table: user → (password, outcome), counting calls.
    pub(crate) struct Fake {
        pub name: &'static str,
        pub users: Vec<(&'static str, &'static str)>,
        pub unavailable: bool,
        pub cacheable: bool,
        pub delay: Duration,
        pub calls: AtomicUsize,
    }

    impl Fake {
        pub(crate) fn new(name: &'static str, users: &[(&'static str, &'static str)]) -> Self {
            Fake {
                name,
                users: users.to_vec(),
                unavailable: false,
                cacheable: true,
                delay: Duration::ZERO,
                calls: AtomicUsize::new(0),
            }
        }
        pub(crate) fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Authenticator for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn authenticate(
            &self,
            user: &str,
            password: &str,
        ) -> Result<Option<Identity>, AuthnError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if self.unavailable {
                return Err(AuthnError::Unavailable(format!("{} is down", self.name)));
            }
            match self.users.iter().find(|(u, _)| *u == user) {
                None => Ok(None),
                Some((_, p)) if *p == password => Ok(Some(Identity {
                    account: user.to_owned(),
                    labels: BTreeMap::from([("by".into(), vec![self.name.to_owned()])]),
                    valid_until: None,
                })),
                Some(_) => Err(AuthnError::WrongPassword),
            }
        }
        fn cacheable(&self) -> bool {
            self.cacheable
        }
    }

    fn chain(auths: Vec<Arc<dyn Authenticator>>, settings: ChainSettings) -> (Chain, Clock) {
        let clock = Clock::manual();
        (Chain::with_clock(auths, settings, clock.clone()), clock)
    }

    #[tokio::test]
    async fn first_match_wins_and_wrong_password_stops_the_chain() {
        let a = Arc::new(Fake::new("a", &[("alice", "pw-a")]));
        let b = Arc::new(Fake::new("b", &[("alice", "pw-b"), ("bob", "pw-b")]));
        let (c, _) = chain(vec![a.clone(), b.clone()], ChainSettings::default());
        let id = c
            .authenticate(ip(1), Some(("alice", "pw-a")))
            .await
            .unwrap();
        assert_eq!(id.labels["by"], vec!["a"]);
        // alice is a's user: a wrong password there is final, b is not asked.
        assert_eq!(
            c.authenticate(ip(1), Some(("alice", "pw-b"))).await,
            Err(AuthnError::WrongPassword)
        );
        assert_eq!(b.calls(), 0);
        // bob is not a's: the chain goes on to b.
        let id = c.authenticate(ip(1), Some(("bob", "pw-b"))).await.unwrap();
        assert_eq!(id.account, "bob");
        assert_eq!(id.labels["by"], vec!["b"]);
        assert_eq!(
            c.authenticate(ip(1), Some(("carol", "x"))).await,
            Err(AuthnError::UnknownUser)
        );
    }

    #[tokio::test]
    async fn anonymous_only_when_allowed() {
        let a: Arc<dyn Authenticator> = Arc::new(Fake::new("a", &[]));
        let (c, _) = chain(vec![a.clone()], ChainSettings::default());
        assert_eq!(
            c.authenticate(ip(1), None).await,
            Err(AuthnError::AnonymousNotAllowed)
        );
        assert!(AuthnError::AnonymousNotAllowed.is_denied());
        let settings = ChainSettings {
            allow_anonymous: true,
            ..ChainSettings::default()
        };
        let (c, _) = chain(vec![a], settings);
        assert_eq!(c.authenticate(ip(1), None).await, Ok(Identity::anonymous()));
        // An empty user name is docker_auth's "" user: anonymous, whatever the password.
        assert_eq!(
            c.authenticate(ip(1), Some(("", "whatever"))).await,
            Ok(Identity::anonymous())
        );
    }

    #[tokio::test]
    async fn unavailable_backend_does_not_block_others_and_is_not_a_failure() {
        let mut down = Fake::new("down", &[("alice", "pw")]);
        down.unavailable = true;
        let down = Arc::new(down);
        let up = Arc::new(Fake::new("up", &[("bob", "pw")]));
        let settings = ChainSettings {
            throttle: ThrottleSettings {
                max_failures: 2,
                ..ThrottleSettings::default()
            },
            ..ChainSettings::default()
        };
        let (c, _) = chain(vec![down.clone(), up.clone()], settings);
        assert_eq!(
            c.authenticate(ip(1), Some(("bob", "pw")))
                .await
                .unwrap()
                .account,
            "bob"
        );
        for _ in 0..5 {
            let e = c
                .authenticate(ip(1), Some(("alice", "pw")))
                .await
                .unwrap_err();
            assert!(
                matches!(e, AuthnError::Unavailable(ref m) if m.contains("down")),
                "{e:?}"
            );
            assert!(!e.is_denied());
        }
    }

    #[tokio::test]
    async fn successes_are_cached_by_user_and_password() {
        let a = Arc::new(Fake::new("a", &[("alice", "pw"), ("bob", "pw")]));
        let (c, clock) = chain(vec![a.clone()], ChainSettings::default());
        for _ in 0..3 {
            c.authenticate(ip(1), Some(("alice", "pw"))).await.unwrap();
        }
        assert_eq!(a.calls(), 1);
        // Another address with the same credentials is served from the cache too.
        c.authenticate(ip(2), Some(("alice", "pw"))).await.unwrap();
        assert_eq!(a.calls(), 1);
        // A different password, or the same password for another user, is checked afresh.
        assert_eq!(
            c.authenticate(ip(1), Some(("alice", "other"))).await,
            Err(AuthnError::WrongPassword)
        );
        c.authenticate(ip(1), Some(("bob", "pw"))).await.unwrap();
        assert_eq!(a.calls(), 3);
        // Expiry.
        clock.advance(Duration::from_secs(301));
        c.authenticate(ip(1), Some(("alice", "pw"))).await.unwrap();
        assert_eq!(a.calls(), 4);
    }

    #[tokio::test]
    async fn cache_key_separates_user_and_password() {
        let a = Arc::new(Fake::new("a", &[("ab", "c"), ("a", "bc")]));
        let (c, _) = chain(vec![a.clone()], ChainSettings::default());
        c.authenticate(ip(1), Some(("ab", "c"))).await.unwrap();
        let id = c.authenticate(ip(1), Some(("a", "bc"))).await.unwrap();
        assert_eq!(id.account, "a");
        assert_eq!(a.calls(), 2);
    }

    #[tokio::test]
    async fn uncacheable_authenticators_are_always_asked() {
        let mut a = Fake::new("a", &[("alice", "pw")]);
        a.cacheable = false;
        let a = Arc::new(a);
        let (c, _) = chain(vec![a.clone()], ChainSettings::default());
        c.authenticate(ip(1), Some(("alice", "pw"))).await.unwrap();
        c.authenticate(ip(1), Some(("alice", "pw"))).await.unwrap();
        assert_eq!(a.calls(), 2);
        assert_eq!(c.cached_logins(), 0);
    }

    #[tokio::test]
    async fn cache_is_bounded_and_can_be_disabled() {
        let users: Vec<(&'static str, &'static str)> = vec![
            ("u0", "p"),
            ("u1", "p"),
            ("u2", "p"),
            ("u3", "p"),
            ("u4", "p"),
        ];
        let a = Arc::new(Fake::new("a", &users));
        let settings = ChainSettings {
            cache_max_entries: 2,
            ..ChainSettings::default()
        };
        let (c, clock) = chain(vec![a.clone()], settings);
        for (u, p) in &users {
            c.authenticate(ip(1), Some((u, p))).await.unwrap();
            clock.advance(Duration::from_secs(1));
            assert!(c.cached_logins() <= 2);
        }
        assert_eq!(c.cached_logins(), 2);
        // The newest survive.
        let before = a.calls();
        c.authenticate(ip(1), Some(("u4", "p"))).await.unwrap();
        assert_eq!(a.calls(), before);
        c.authenticate(ip(1), Some(("u0", "p"))).await.unwrap();
        assert_eq!(a.calls(), before + 1);

        let settings = ChainSettings {
            cache_ttl: Duration::ZERO,
            ..ChainSettings::default()
        };
        let a = Arc::new(Fake::new("a", &users));
        let (c, _) = chain(vec![a.clone()], settings);
        c.authenticate(ip(1), Some(("u0", "p"))).await.unwrap();
        c.authenticate(ip(1), Some(("u0", "p"))).await.unwrap();
        assert_eq!(a.calls(), 2);
    }

    #[tokio::test]
    async fn throttles_after_n_failures_then_recovers() {
        let a = Arc::new(Fake::new("a", &[("alice", "right")]));
        let (c, clock) = chain(vec![a.clone()], ChainSettings::default());
        for i in 0..5 {
            assert_eq!(
                c.authenticate(ip(1), Some(("alice", "wrong"))).await,
                Err(AuthnError::WrongPassword),
                "attempt {i}"
            );
            clock.advance(Duration::from_secs(1));
        }
        let calls = a.calls();
        // Even the right password is refused, and not checked.
        let e = c
            .authenticate(ip(1), Some(("alice", "right")))
            .await
            .unwrap_err();
        let AuthnError::Throttled { retry_after } = e else {
            panic!("{e:?}")
        };
        assert_eq!(retry_after, Duration::from_secs(55));
        assert_eq!(e.retry_after_secs(), Some(55));
        assert_eq!(a.calls(), calls);
        // Unknown users count too, and other addresses are unaffected.
        c.authenticate(ip(2), Some(("alice", "right")))
            .await
            .unwrap();
        // Once the oldest failure leaves the window, one more attempt is allowed.
        clock.advance(Duration::from_secs(55));
        c.authenticate(ip(1), Some(("alice", "right")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_cached_success_does_not_bypass_the_throttle() {
        let a = Arc::new(Fake::new("a", &[("alice", "right")]));
        let (c, _) = chain(vec![a.clone()], ChainSettings::default());
        c.authenticate(ip(1), Some(("alice", "right")))
            .await
            .unwrap();
        for _ in 0..5 {
            let _ = c.authenticate(ip(1), Some(("mallory", "guess"))).await;
        }
        assert!(matches!(
            c.authenticate(ip(1), Some(("alice", "right"))).await,
            Err(AuthnError::Throttled { .. })
        ));
    }

    #[tokio::test]
    async fn successes_reset_nothing() {
        let a = Arc::new(Fake::new("a", &[("alice", "right"), ("eve", "eve")]));
        let (c, _) = chain(vec![a.clone()], ChainSettings::default());
        for _ in 0..4 {
            let _ = c.authenticate(ip(1), Some(("alice", "guess"))).await;
        }
        // A success from another address, and one from the same address (an attacker with an
        // account of its own interleaving logins), leave the failures standing.
        c.authenticate(ip(2), Some(("alice", "right")))
            .await
            .unwrap();
        c.authenticate(ip(1), Some(("eve", "eve"))).await.unwrap();
        let _ = c.authenticate(ip(1), Some(("alice", "guess"))).await;
        assert!(matches!(
            c.authenticate(ip(1), Some(("alice", "right"))).await,
            Err(AuthnError::Throttled { .. })
        ));
    }

    #[tokio::test]
    async fn concurrent_guesses_cannot_exceed_the_limit() {
        let mut a = Fake::new("a", &[("alice", "right")]);
        a.delay = Duration::from_millis(50);
        let a = Arc::new(a);
        let (c, _) = chain(vec![a.clone()], ChainSettings::default());
        let c = Arc::new(c);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let guess = format!("guess{i}");
                c.authenticate(ip(1), Some(("alice", &guess))).await
            }));
        }
        let mut wrong = 0;
        let mut throttled = 0;
        for t in tasks {
            match t.await.unwrap() {
                Err(AuthnError::WrongPassword) => wrong += 1,
                Err(AuthnError::Throttled { .. }) => throttled += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((wrong, throttled), (5, 15));
        assert_eq!(a.calls(), 5);
    }

    #[tokio::test]
    async fn concurrent_identical_logins_are_not_refused() {
        let mut a = Fake::new("a", &[("alice", "right")]);
        a.delay = Duration::from_millis(50);
        let a = Arc::new(a);
        let (c, _) = chain(vec![a.clone()], ChainSettings::default());
        let c = Arc::new(c);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.authenticate(ip(1), Some(("alice", "right"))).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().account, "alice");
        }
        // At most max_failures checks ran at once; the rest found the cache filled.
        assert!(a.calls() <= 5, "{}", a.calls());
    }

    #[tokio::test]
    async fn oversized_credentials_are_refused_and_counted() {
        let a = Arc::new(Fake::new("a", &[]));
        let (c, _) = chain(vec![a.clone()], ChainSettings::default());
        let long_user = "u".repeat(MAX_USERNAME_LEN + 1);
        let long_password = "p".repeat(MAX_PASSWORD_LEN + 1);
        assert_eq!(
            c.authenticate(ip(1), Some((&long_user, "p"))).await,
            Err(AuthnError::UnknownUser)
        );
        assert_eq!(
            c.authenticate(ip(1), Some(("u", &long_password))).await,
            Err(AuthnError::UnknownUser)
        );
        assert_eq!(a.calls(), 0);
        assert_eq!(c.throttle().tracked_clients(), 1);
    }

    #[test]
    fn error_messages_and_mapping() {
        let e = AuthnError::Throttled {
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(e.retry_after_secs(), Some(2));
        assert!(e.to_string().contains("retry in 2s"), "{e}");
        assert!(!e.is_denied());
        assert!(AuthnError::WrongPassword.is_denied());
        assert!(AuthnError::UnknownUser.is_denied());
        assert!(!AuthnError::Unavailable("x".into()).is_denied());
        assert_eq!(
            AuthnError::Throttled {
                retry_after: Duration::ZERO
            }
            .retry_after_secs(),
            Some(1)
        );
    }

    #[test]
    fn service_urls_must_be_https_except_loopback() {
        let mut p = Vec::new();
        assert!(parse_service_url("k", "https://api.github.com", &mut p).is_some());
        assert!(parse_service_url("k", "http://127.0.0.1:8080/x", &mut p).is_some());
        assert!(parse_service_url("k", "http://localhost:8080", &mut p).is_some());
        assert!(parse_service_url("k", "http://[::1]:8080", &mut p).is_some());
        assert!(p.is_empty());
        assert!(parse_service_url("k", "http://example.com", &mut p).is_none());
        assert!(parse_service_url("k", "https://u:p@example.com", &mut p).is_none());
        assert!(parse_service_url("k", "https://example.com/?q", &mut p).is_none());
        assert!(parse_service_url("k", "not a url", &mut p).is_none());
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|p| p.key == "k"));
    }

    #[test]
    fn config_yaml_shape_and_build() {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("bob:{}\n", static_users::tests::BOB)).unwrap();
        let yaml = format!(
            r#"
users:
  alice:
    password: "{alice}"
    labels: {{group: [admins]}}
  "": {{}}
htpasswd: {htpasswd}
github_auth:
  organization: acme
  api_url: http://127.0.0.1:1
  http_timeout: 2s
oidc_auth:
  issuer: https://accounts.example.com
  client_id: ocimirror
  username_claim: preferred_username
login_throttle: {{max_failures: 3, window: 30s}}
login_cache: {{ttl: 1m}}
"#,
            alice = static_users::tests::ALICE,
            htpasswd = htpasswd.display()
        );
        let cfg: AuthnConfig = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(cfg.users["alice"].labels["group"], vec!["admins"]);
        assert_eq!(cfg.login_throttle.max_failures, 3);
        assert_eq!(cfg.login_throttle.max_clients, 10_000);
        assert_eq!(
            cfg.github_auth.as_ref().unwrap().organization.as_deref(),
            Some("acme")
        );
        let chain = cfg.build().unwrap();
        assert!(chain.allows_anonymous());
        assert_eq!(
            format!("{chain:?}"),
            "Chain { authenticators: [\"static\", \"github\", \"oidc\"], allow_anonymous: true, .. }"
        );
        // Round trip.
        let text = serde_saphyr::to_string(&cfg).unwrap();
        let again: AuthnConfig = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(again, cfg);
        // Unknown keys are refused, at every level.
        for bad in [
            "user: {}",
            "github_auth: {client_id: x}",
            "users: {alice: {pasword: x}}",
            "login_throttle: {max_failure: 3}",
            "oidc_auth: {issuer: https://x, client_id: y, token_db: z}",
        ] {
            assert!(
                serde_saphyr::from_str::<AuthnConfig>(bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn build_reports_every_problem() {
        let yaml = r#"
users:
  alice: {password: "plaintext"}
  bob: {}
htpasswd: /nonexistent/htpasswd
github_auth: {api_url: "http://github.example.com", http_timeout: soon}
oidc_auth: {issuer: "ftp://x", client_id: ""}
login_throttle: {window: never}
login_cache: {ttl: "-1"}
"#;
        let cfg: AuthnConfig = serde_saphyr::from_str(yaml).unwrap();
        let problems = cfg.build().unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "users.alice.password",
            "users.bob.password",
            "htpasswd",
            "github_auth.api_url",
            "github_auth.http_timeout",
            "oidc_auth.issuer",
            "oidc_auth.client_id",
            "login_throttle.window",
            "login_cache.ttl",
        ] {
            assert!(keys.contains(&k), "{k} missing from {problems:#?}");
        }
        // No problem message carries a password hash or the plaintext.
        assert!(problems.iter().all(|p| !p.message.contains("plaintext")));
    }

    #[test]
    fn empty_config_builds_an_empty_chain() {
        let chain = AuthnConfig::default().build().unwrap();
        assert!(!chain.allows_anonymous());
        let chain = AuthnConfig {
            allow_anonymous: true,
            ..AuthnConfig::default()
        }
        .build()
        .unwrap();
        assert!(chain.allows_anonymous());
    }
}
