//! GitHub: the password is a personal access token.
//!
//! docker_auth runs an OAuth web flow and hands out its own throw-away passwords; here the client
//! sends a GitHub token (`docker login -u <login> -p <token>`), checked with `GET /user`. The
//! user name must be the token's login (ASCII case-insensitive); the identity's account is the
//! login as GitHub spells it. Labels:
//! - `org`: the user's organisations (`GET /user/orgs`),
//! - `team`: `org/team-slug` for each of the user's teams (`GET /user/teams`),
//! - `teams`: with `organization` set, the slugs of the user's teams in it (docker_auth's label),
//!
//! all as GitHub spells them. Pages are followed through `Link: rel="next"` up to `max_pages`,
//! only on the API's own origin; a user with more pages than that is refused as unavailable
//! rather than given partial labels (a partial list could dodge an ACL rule). Classic tokens
//! need the `read:org` scope for private memberships.
//!
//! Decisions:
//! - A password that does not look like a GitHub token (`ghp_`, `github_pat_`, `gho_`, `ghu_`,
//!   `ghs_`, `ghr_`, or a legacy 40-hex token) is not this authenticator's: `Ok(None)`, and it is
//!   never sent to GitHub, so a static user's mistyped password does not leak to a third party.
//! - With `organization` set, a valid token of a non-member is refused as a wrong password.
//! - 401 is a wrong password; 403 too, unless it is GitHub's rate limit (then unavailable, as are
//!   429, 5xx, other answers, timeouts and connection failures).
//! - Results are cached by the chain (default 5 min): a revoked token or a changed membership
//!   takes that long to take effect.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, LINK};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use super::{
    Authenticator, AuthnError, ConfigProblem, describe_reqwest, parse_service_url, parse_timeout,
    provider_client, read_body,
};
use crate::auth::Identity;

const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// The `github_auth` config section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitHubConfig {
    /// The REST API root: `https://api.github.com`, or `https://HOST/api/v3` for GitHub
    /// Enterprise Server.
    pub api_url: String,
    /// Only members of this organisation may log in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    pub http_timeout: String,
    /// Pages (of 100) of organisations and of teams followed at most.
    pub max_pages: u32,
}

impl Default for GitHubConfig {
    fn default() -> Self {
        GitHubConfig {
            api_url: "https://api.github.com".into(),
            organization: None,
            http_timeout: "10s".into(),
            max_pages: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GitHubSettings {
    pub api_url: Url,
    pub organization: Option<String>,
    pub http_timeout: Duration,
    pub max_pages: u32,
}

impl GitHubConfig {
    /// Validate; `prefix` is the section's key path, for problem reports.
    pub fn settings(&self, prefix: &str) -> Result<GitHubSettings, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let key = |k: &str| format!("{prefix}.{k}");
        let api_url = parse_service_url(&key("api_url"), &self.api_url, &mut problems);
        let timeout = parse_timeout(&key("http_timeout"), &self.http_timeout, &mut problems);
        if self.max_pages == 0 {
            problems.push(ConfigProblem::new(key("max_pages"), "must be at least 1"));
        }
        if let Some(org) = &self.organization
            && (org.is_empty() || !org.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            problems.push(ConfigProblem::new(
                key("organization"),
                format!("{org:?} is not a GitHub organisation name"),
            ));
        }
        match (api_url, timeout) {
            (Some(api_url), Some(http_timeout)) if problems.is_empty() => Ok(GitHubSettings {
                api_url,
                organization: self.organization.clone(),
                http_timeout,
                max_pages: self.max_pages,
            }),
            _ => Err(problems),
        }
    }
}

/// Whether `s` has the shape of a GitHub token.
fn looks_like_token(s: &str) -> bool {
    const PREFIXES: [&str; 6] = ["github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"];
    if s.len() > 255 {
        return false;
    }
    if let Some(rest) = PREFIXES.iter().find_map(|p| s.strip_prefix(p)) {
        return rest.len() >= 20 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    }
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `rel="next"` target of `Link` headers.
fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let link = link.trim();
            let Some(rest) = link.strip_prefix('<') else {
                continue;
            };
            let Some((target, params)) = rest.split_once('>') else {
                continue;
            };
            let is_next = params.split(';').any(|p| {
                let Some((k, v)) = p.split_once('=') else {
                    return false;
                };
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|r| r == "next")
            });
            if is_next {
                return Some(target.to_owned());
            }
        }
    }
    None
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Org {
    login: String,
}

#[derive(Deserialize)]
struct Team {
    slug: String,
    organization: Org,
}

pub struct GitHubAuthenticator {
    settings: GitHubSettings,
    client: reqwest::Client,
}

impl std::fmt::Debug for GitHubAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubAuthenticator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl GitHubAuthenticator {
    pub fn new(settings: GitHubSettings) -> Result<Self, ConfigProblem> {
        let client = provider_client("github_auth", settings.http_timeout)?;
        Ok(GitHubAuthenticator { settings, client })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.settings.api_url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{path}"));
        url
    }

    async fn get(&self, url: Url, token: &str) -> Result<(HeaderMap, Vec<u8>), AuthnError> {
        let path = url.path().to_owned();
        let resp = self
            .client
            .get(url)
            .bearer_auth(token)
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|e| AuthnError::Unavailable(format!("GitHub: {}", describe_reqwest(&e))))?;
        let status = resp.status();
        metrics::counter!(crate::metrics::AUTHN_GITHUB_REQUESTS, "status" => status.as_u16().to_string())
            .increment(1);
        let headers = resp.headers().clone();
        let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
            || headers
                .get("x-ratelimit-remaining")
                .is_some_and(|v| v.as_bytes() == b"0")
            || headers.contains_key("retry-after");
        match status {
            s if s.is_success() => {
                let body = read_body(resp, MAX_RESPONSE)
                    .await
                    .map_err(|e| AuthnError::Unavailable(format!("GitHub {path}: {e}")))?;
                Ok((headers, body))
            }
            StatusCode::UNAUTHORIZED => Err(AuthnError::WrongPassword),
            StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS if rate_limited => Err(
                AuthnError::Unavailable(format!("GitHub rate limit reached ({path})")),
            ),
            StatusCode::FORBIDDEN => {
                tracing::info!(
                    path,
                    "GitHub refused the token (403): missing scope or access?"
                );
                Err(AuthnError::WrongPassword)
            }
            s => Err(AuthnError::Unavailable(format!(
                "GitHub answered {s} to {path}"
            ))),
        }
    }

    fn parse<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, AuthnError> {
        serde_json::from_slice(body).map_err(|e| {
            AuthnError::Unavailable(format!("GitHub: unexpected answer to {path}: {e}"))
        })
    }

    /// All pages of a list endpoint.
    async fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
    ) -> Result<Vec<T>, AuthnError> {
        let mut url = self.url(path);
        url.set_query(Some("per_page=100"));
        let mut all = Vec::new();
        let mut pages = 0;
        loop {
            if pages == self.settings.max_pages {
                return Err(AuthnError::Unavailable(format!(
                    "GitHub: more than {} pages of {path}; raise github_auth.max_pages",
                    self.settings.max_pages
                )));
            }
            pages += 1;
            let (headers, body) = self.get(url.clone(), token).await?;
            all.extend(Self::parse::<Vec<T>>(path, &body)?);
            let Some(next) = next_link(&headers) else {
                return Ok(all);
            };
            let next = url.join(&next).map_err(|_| {
                AuthnError::Unavailable(format!("GitHub: bad pagination link for {path}"))
            })?;
            if next.origin() != self.settings.api_url.origin() {
                return Err(AuthnError::Unavailable(format!(
                    "GitHub: refused a pagination link for {path} to another host"
                )));
            }
            url = next;
        }
    }
}

#[async_trait]
impl Authenticator for GitHubAuthenticator {
    fn name(&self) -> &'static str {
        "github"
    }

    async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<Identity>, AuthnError> {
        if !looks_like_token(password) {
            return Ok(None);
        }
        let (headers, body) = self.get(self.url("/user"), password).await?;
        let valid_until = token_expiration(&headers);
        let login = Self::parse::<User>("/user", &body)?.login;
        if !login.eq_ignore_ascii_case(user) {
            tracing::info!(user, login, "GitHub token belongs to another user");
            return Err(AuthnError::WrongPassword);
        }
        let (orgs, teams) = tokio::join!(
            self.get_all::<Org>("/user/orgs", password),
            self.get_all::<Team>("/user/teams", password)
        );
        let (orgs, teams) = (orgs?, teams?);

        let mut org_labels: Vec<String> = orgs.into_iter().map(|o| o.login).collect();
        // Team memberships imply organisation memberships a token may not list otherwise.
        org_labels.extend(teams.iter().map(|t| t.organization.login.clone()));
        org_labels.sort();
        org_labels.dedup();
        if let Some(required) = &self.settings.organization
            && !org_labels.iter().any(|o| o.eq_ignore_ascii_case(required))
        {
            tracing::info!(
                user = login,
                organization = required,
                "not a member of the required GitHub organisation"
            );
            return Err(AuthnError::WrongPassword);
        }
        let mut team_labels: Vec<String> = teams
            .iter()
            .map(|t| format!("{}/{}", t.organization.login, t.slug))
            .collect();
        team_labels.sort();
        team_labels.dedup();
        let mut labels = BTreeMap::new();
        if let Some(required) = &self.settings.organization {
            let mut slugs: Vec<String> = teams
                .iter()
                .filter(|t| t.organization.login.eq_ignore_ascii_case(required))
                .map(|t| t.slug.clone())
                .collect();
            slugs.sort();
            slugs.dedup();
            if !slugs.is_empty() {
                labels.insert("teams".to_owned(), slugs);
            }
        }
        if !org_labels.is_empty() {
            labels.insert("org".to_owned(), org_labels);
        }
        if !team_labels.is_empty() {
            labels.insert("team".to_owned(), team_labels);
        }
        Ok(Some(Identity {
            account: login,
            labels,
            valid_until,
        }))
    }
}

/// When a fine-grained or expiring token stops working, from GitHub's
/// `github-authentication-token-expiration` header (`2026-01-31 12:00:00 UTC`), Unix seconds.
fn token_expiration(headers: &HeaderMap) -> Option<i64> {
    let v = headers
        .get("github-authentication-token-expiration")?
        .to_str()
        .ok()?;
    let t = humantime::parse_rfc3339_weak(v.trim().trim_end_matches("UTC").trim()).ok()?;
    Some(crate::util::unix_secs(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::authn::tests::ip;
    use crate::auth::authn::{Chain, ChainSettings};
    use axum::Router;
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    const ALICE: &str = "ghp_alice0000000000000000000000000000000";
    const BOB: &str = "github_pat_bob_00000000000000000000000000";
    const LOOP: &str = "ghp_loop00000000000000000000000000000000";
    const EVIL: &str = "ghp_evil00000000000000000000000000000000";
    const FAIL: &str = "ghp_fail00000000000000000000000000000000";
    const SLOW: &str = "ghp_slow00000000000000000000000000000000";
    const LIMITED: &str = "ghp_limited0000000000000000000000000000";
    const SCOPELESS: &str = "ghp_scopeless00000000000000000000000000";

    #[derive(Default)]
    struct Gh {
        base: Mutex<String>,
        elsewhere: Mutex<String>,
        calls: Mutex<HashMap<String, usize>>,
        seen_headers: Mutex<Vec<(String, String, String)>>,
    }

    impl Gh {
        fn calls(&self, path: &str) -> usize {
            self.calls.lock().unwrap().get(path).copied().unwrap_or(0)
        }
        fn total(&self) -> usize {
            self.calls.lock().unwrap().values().sum()
        }
    }

    fn token(h: &AxHeaders) -> String {
        h.get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_owned()
    }

    fn record(gh: &Gh, path: &str, h: &AxHeaders) {
        *gh.calls.lock().unwrap().entry(path.into()).or_default() += 1;
        let get = |n: &str| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        gh.seen_headers.lock().unwrap().push((
            get("accept"),
            get("user-agent"),
            get("authorization"),
        ));
    }

    async fn user(State(gh): State<Arc<Gh>>, h: AxHeaders) -> Response {
        record(&gh, "/user", &h);
        match token(&h).as_str() {
            ALICE | LOOP | EVIL | SCOPELESS => {
                Json(json!({"login": "Alice", "id": 1})).into_response()
            }
            BOB => Json(json!({"login": "bob"})).into_response(),
            FAIL => (AxStatus::INTERNAL_SERVER_ERROR, "boom").into_response(),
            SLOW => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Json(json!({"login": "Alice"})).into_response()
            }
            LIMITED => (
                AxStatus::FORBIDDEN,
                [("x-ratelimit-remaining", "0")],
                "rate limit",
            )
                .into_response(),
            _ => (AxStatus::UNAUTHORIZED, "Bad credentials").into_response(),
        }
    }

    use axum::Json;

    async fn orgs(State(gh): State<Arc<Gh>>, h: AxHeaders) -> Response {
        record(&gh, "/user/orgs", &h);
        match token(&h).as_str() {
            ALICE | LOOP | EVIL | SCOPELESS => {
                Json(json!([{"login": "acme"}, {"login": "Other-Org"}])).into_response()
            }
            BOB => Json(json!([])).into_response(),
            _ => AxStatus::UNAUTHORIZED.into_response(),
        }
    }

    async fn teams(
        State(gh): State<Arc<Gh>>,
        Query(q): Query<HashMap<String, String>>,
        h: AxHeaders,
    ) -> Response {
        record(&gh, "/user/teams", &h);
        let base = gh.base.lock().unwrap().clone();
        let page: u32 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
        assert_eq!(q.get("per_page").map(String::as_str), Some("100"));
        let team = |org: &str, slug: &str| json!({"slug": slug, "name": slug, "organization": {"login": org}});
        match token(&h).as_str() {
            ALICE => match page {
                1 => (
                    [(
                        "link",
                        format!(
                            "<{base}/user/teams?per_page=100&page=2>; rel=\"next\", <{base}/user/teams?per_page=100&page=2>; rel=\"last\""
                        ),
                    )],
                    Json(json!([team("acme", "devs"), team("acme", "ops")])),
                )
                    .into_response(),
                _ => (
                    [(
                        "link",
                        format!("<{base}/user/teams?per_page=100&page=1>; rel=\"prev\""),
                    )],
                    Json(json!([team("Other-Org", "readers"), team("third", "x")])),
                )
                    .into_response(),
            },
            LOOP => (
                [(
                    "link",
                    format!("<{base}/user/teams?per_page=100&page={}>; rel=\"next\"", page + 1),
                )],
                Json(json!([team("acme", &format!("t{page}"))])),
            )
                .into_response(),
            EVIL => {
                let elsewhere = gh.elsewhere.lock().unwrap().clone();
                (
                    [(
                        "link",
                        format!("<{elsewhere}/user/teams?per_page=100&page=2>; rel=\"next\""),
                    )],
                    Json(json!([])),
                )
                    .into_response()
            }
            SCOPELESS => (AxStatus::FORBIDDEN, "Resource not accessible").into_response(),
            BOB => Json(json!([])).into_response(),
            _ => AxStatus::UNAUTHORIZED.into_response(),
        }
    }

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    /// A stand-in GitHub API under `/api/v3` (as GitHub Enterprise Server has it), and a second
    /// server on another origin that only counts requests.
    async fn stand_in() -> (Arc<Gh>, String) {
        let gh = Arc::new(Gh::default());
        let api = Router::new()
            .route("/api/v3/user", get(user))
            .route("/api/v3/user/orgs", get(orgs))
            .route("/api/v3/user/teams", get(teams))
            .with_state(gh.clone());
        let base = format!("{}/api/v3", serve(api).await);
        *gh.base.lock().unwrap() = base.clone();
        let other = Router::new()
            .route(
                "/user/teams",
                get(|State(gh): State<Arc<Gh>>, h: AxHeaders| async move {
                    record(&gh, "elsewhere", &h);
                    Json(json!([]))
                }),
            )
            .with_state(gh.clone());
        *gh.elsewhere.lock().unwrap() = serve(other).await;
        (gh, base)
    }

    fn authenticator(base: &str, organization: Option<&str>) -> GitHubAuthenticator {
        let cfg = GitHubConfig {
            api_url: base.into(),
            organization: organization.map(Into::into),
            http_timeout: "500ms".into(),
            max_pages: 3,
        };
        GitHubAuthenticator::new(cfg.settings("github_auth").unwrap()).unwrap()
    }

    #[tokio::test]
    async fn token_login_with_orgs_and_paginated_teams() {
        let (gh, base) = stand_in().await;
        let a = authenticator(&base, None);
        let id = a.authenticate("alice", ALICE).await.unwrap().unwrap();
        assert_eq!(id.account, "Alice");
        assert_eq!(id.labels["org"], vec!["Other-Org", "acme", "third"]);
        assert_eq!(
            id.labels["team"],
            vec!["Other-Org/readers", "acme/devs", "acme/ops", "third/x"]
        );
        assert!(!id.labels.contains_key("teams"));
        assert_eq!(gh.calls("/user/teams"), 2, "second page not followed");
        // Every request carried the token as a Bearer, GitHub's media type and a User-Agent.
        for (accept, ua, auth) in gh.seen_headers.lock().unwrap().iter() {
            assert_eq!(accept, "application/vnd.github+json");
            assert!(ua.starts_with("ocimirror/"), "{ua}");
            assert_eq!(auth, &format!("Bearer {ALICE}"));
        }
    }

    #[tokio::test]
    async fn organization_membership_and_docker_auth_teams_label() {
        let (_, base) = stand_in().await;
        let id = authenticator(&base, Some("ACME"))
            .authenticate("Alice", ALICE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id.labels["teams"], vec!["devs", "ops"]);
        // A team membership counts as membership of its organisation.
        assert!(
            authenticator(&base, Some("third"))
                .authenticate("alice", ALICE)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            authenticator(&base, Some("acme"))
                .authenticate("bob", BOB)
                .await,
            Err(AuthnError::WrongPassword)
        );
        assert!(
            authenticator(&base, None)
                .authenticate("bob", BOB)
                .await
                .unwrap()
                .unwrap()
                .labels
                .is_empty()
        );
    }

    #[tokio::test]
    async fn refusals() {
        let (gh, base) = stand_in().await;
        let a = authenticator(&base, None);
        // Somebody else's valid token.
        assert_eq!(
            a.authenticate("mallory", ALICE).await,
            Err(AuthnError::WrongPassword)
        );
        // GitHub says 401.
        assert_eq!(
            a.authenticate("alice", "ghp_revoked000000000000000000000000000")
                .await,
            Err(AuthnError::WrongPassword)
        );
        // 403 without rate limiting: the token may not list teams.
        assert_eq!(
            a.authenticate("alice", SCOPELESS).await,
            Err(AuthnError::WrongPassword)
        );
        // Not a token: not ours, and nothing is sent to GitHub.
        let before = gh.total();
        for p in ["hunter2", "ghp_short", "", &"a".repeat(41)] {
            assert_eq!(a.authenticate("alice", p).await, Ok(None), "{p:?}");
        }
        assert_eq!(gh.total(), before);
        assert!(looks_like_token("0123456789abcdef0123456789abcdef01234567"));
    }

    #[tokio::test]
    async fn outages_are_unavailable() {
        let (gh, base) = stand_in().await;
        let a = authenticator(&base, None);
        let unavailable = |r: Result<Option<Identity>, AuthnError>, what: &str| match r {
            Err(AuthnError::Unavailable(m)) => {
                assert!(!m.contains("ghp_"), "token in message: {m}");
                m
            }
            other => panic!("{what}: {other:?}"),
        };
        let m = unavailable(a.authenticate("alice", FAIL).await, "500");
        assert!(m.contains("500"), "{m}");
        let m = unavailable(a.authenticate("alice", SLOW).await, "timeout");
        assert!(m.contains("timed out"), "{m}");
        let m = unavailable(a.authenticate("alice", LIMITED).await, "rate limit");
        assert!(m.contains("rate limit"), "{m}");
        let m = unavailable(a.authenticate("alice", LOOP).await, "endless pages");
        assert!(m.contains("max_pages"), "{m}");
        assert_eq!(gh.calls("/user/teams"), 3);
        let m = unavailable(a.authenticate("alice", EVIL).await, "foreign link");
        assert!(m.contains("another host"), "{m}");
        assert_eq!(
            gh.calls("elsewhere"),
            0,
            "the token was sent to another host"
        );
        // Nobody listening.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let m = unavailable(
            authenticator(&gone, None)
                .authenticate("alice", ALICE)
                .await,
            "down",
        );
        assert!(m.contains("connection failed"), "{m}");
    }

    #[tokio::test]
    async fn the_chain_caches_github_logins() {
        let (gh, base) = stand_in().await;
        let chain = Chain::new(
            vec![Arc::new(authenticator(&base, None))],
            ChainSettings::default(),
        );
        for _ in 0..3 {
            let id = chain
                .authenticate(ip(1), Some(("alice", ALICE)))
                .await
                .unwrap();
            assert_eq!(id.account, "Alice");
        }
        assert_eq!(gh.calls("/user"), 1);
        // A 500 is not a failed login: no throttling however often it happens.
        for _ in 0..10 {
            assert!(matches!(
                chain.authenticate(ip(2), Some(("alice", FAIL))).await,
                Err(AuthnError::Unavailable(_))
            ));
        }
    }

    #[test]
    fn link_headers() {
        let mut h = HeaderMap::new();
        h.append(LINK, "<https://x/a?page=1>; rel=\"prev\"".parse().unwrap());
        assert_eq!(next_link(&h), None);
        h.append(
            LINK,
            "<https://x/a?page=3>; rel=\"last\", <https://x/a?page=2>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("https://x/a?page=2"));
        let mut h = HeaderMap::new();
        h.append(LINK, "<https://x/b>;rel=next".parse().unwrap());
        assert_eq!(next_link(&h).as_deref(), Some("https://x/b"));
    }

    #[test]
    fn config_validation() {
        let p = GitHubConfig {
            api_url: "http://github.example.com".into(),
            organization: Some("a b".into()),
            http_timeout: "0s".into(),
            max_pages: 0,
        }
        .settings("gh")
        .unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "gh.api_url",
                "gh.http_timeout",
                "gh.max_pages",
                "gh.organization"
            ]
        );
        let s = GitHubConfig::default().settings("gh").unwrap();
        assert_eq!(s.api_url.as_str(), "https://api.github.com/");
        let a = GitHubAuthenticator::new(s).unwrap();
        assert_eq!(a.url("/user").as_str(), "https://api.github.com/user");
    }
}
