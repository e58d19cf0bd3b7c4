//! The HTTP client for one upstream registry: pooled connections, the Docker token flow
//! (challenges → token for the repository's pull scope → cached until it expires), Basic auth,
//! credentials re-read when the upstream refuses them, timeouts, and the mapping of upstream
//! statuses to [`UpstreamError`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderName, LINK, RANGE,
    RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::credentials::Credentials;
use super::ratelimit::RateLimits;
use super::slots::{Slot, Slots};
use super::token::{self, TokenCache};
use super::{
    BlobResponse, Challenge, FetchedManifest, ManifestHead, TagsResponse, Upstream, UpstreamError,
};
use crate::oci::manifest::{ACCEPT_ALL, MAX_MANIFEST_SIZE, OCI_INDEX};
use crate::oci::{Digest, Reference, RepoName};
use crate::percore::PerCore;

#[derive(Clone)]
pub struct UpstreamSettings {
    /// `default`, or the configured name: the `upstream` label of its metrics.
    pub name: String,
    pub url: Url,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Where `password` was read from: read again when it changes or is refused.
    pub password_file: Option<PathBuf>,
    pub library_prefix: bool,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub read_timeout: Duration,
    /// Requests in flight to this upstream at most (a blob counts until its body ends); 0: no cap.
    pub max_concurrent_requests: usize,
    /// Of those, slots blob downloads never take (at most half of them), so that manifest, tag
    /// list and referrers requests get through while blobs are downloading.
    pub manifest_slots: usize,
    /// Size and rate every blob body is held to.
    pub blob_bounds: super::bounds::BlobBounds,
}

/// Debug output never shows the password (settings end up in logs and panic messages).
impl std::fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("library_prefix", &self.library_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("manifest_slots", &self.manifest_slots)
            .field("blob_bounds", &self.blob_bounds)
            .finish()
    }
}

#[derive(Clone, Debug)]
enum Scheme {
    /// Not yet challenged: send credentials only once the upstream asks.
    Unknown,
    Basic,
    Bearer {
        realm: Url,
        service: Option<String>,
    },
}

pub struct HttpUpstream {
    settings: UpstreamSettings,
    /// One per connection worker, so a fill's upstream connection is driven on the thread that
    /// runs the fill.
    client: PerCore<reqwest::Client>,
    scheme: Mutex<Scheme>,
    credentials: Arc<Credentials>,
    tokens: TokenCache,
    limits: Arc<RateLimits>,
    slots: Option<Slots>,
}

/// A response with the concurrency permit it holds until dropped.
struct Sent {
    resp: Response,
    permit: Option<Slot>,
}

fn count(upstream: &str, op: &'static str, status: String) {
    crate::status::upstream_outcome(upstream, &status);
    metrics::counter!(crate::metrics::UPSTREAM_REQUESTS, "upstream" => upstream.to_owned(), "op" => op, "status" => status)
        .increment(1);
}

fn unavailable(e: &reqwest::Error) -> UpstreamError {
    // reqwest's Display includes the URL; we never put credentials in URLs, so it is safe to log.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    UpstreamError::Unavailable(format!("{kind}: {e}"))
}

impl HttpUpstream {
    pub fn new(settings: UpstreamSettings) -> Result<Self, reqwest::Error> {
        let client = PerCore::try_new(|| {
            crate::client_tls::builder()
                .connect_timeout(settings.connect_timeout)
                .read_timeout(settings.read_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                .user_agent(concat!("ocimirror/", env!("CARGO_PKG_VERSION")))
                .build()
        })?;
        let slots = Slots::new(
            &settings.name,
            settings.max_concurrent_requests,
            settings.manifest_slots,
        );
        let limits = Arc::new(RateLimits::new(&settings.name));
        let state = limits.clone();
        crate::status::register_upstream(
            &settings.name,
            &settings.url,
            Arc::new(move || state.snapshot()),
        );
        let credentials = Credentials::new(
            &settings.name,
            settings.username.clone(),
            settings.password.clone(),
            settings.password_file.clone(),
        );
        credentials.watch();
        Ok(HttpUpstream {
            settings,
            client,
            scheme: Mutex::new(Scheme::Unknown),
            credentials,
            tokens: TokenCache::default(),
            limits,
            slots,
        })
    }

    fn url(&self, path: &str, query: Option<&str>) -> Url {
        let mut url = self.settings.url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{path}"));
        url.set_query(query);
        url
    }

    fn scope(name: &RepoName) -> String {
        format!("repository:{name}:pull")
    }

    /// A token for `scope`: the cached one unless `force`, else a new one. A refusal is the
    /// upstream's answer about the repository when the mirror asked anonymously; with
    /// credentials, the password file is read again and, when that changes nothing, the
    /// operator is told.
    async fn token(
        &self,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
        force: bool,
    ) -> Result<String, UpstreamError> {
        let asked = std::time::Instant::now();
        if !force && let Some(t) = self.tokens.get(scope, self.credentials.generation()) {
            return Ok(t);
        }
        // One fetch per scope at a time; a request that waited takes the token fetched
        // meanwhile (newer than the one it was refused with, when `force`).
        let gate = self.tokens.gate(scope);
        let _turn = gate.lock().await;
        if let Some(t) = self
            .tokens
            .get_since(scope, self.credentials.generation(), asked)
        {
            metrics::counter!(crate::metrics::UPSTREAM_SHARED, "op" => "token").increment(1);
            return Ok(t);
        }
        let (status, detail) = match self.fetch_token(realm, service, scope).await? {
            Ok(t) => return Ok(t),
            Err(refused) => refused,
        };
        if !self.credentials.configured() {
            return Err(UpstreamError::Denied(format!(
                "its token endpoint refused an anonymous token for {scope}: {status} {detail}"
            )));
        }
        if self.credentials.reload()
            && let Ok(t) = self.fetch_token(realm, service, scope).await?
        {
            return Ok(t);
        }
        tracing::error!(upstream = %self.settings.name, %status, scope, detail,
            "the upstream's token endpoint refused the configured credentials; renew upstream.password or the password_file");
        Err(UpstreamError::CredentialsRefused(format!(
            "its token endpoint answered {status} {detail} for {scope}"
        )))
    }

    /// One request to the token endpoint: the token (now cached), or the status and detail of
    /// a refusal (401 or 403).
    async fn fetch_token(
        &self,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Result<String, (StatusCode, String)>, UpstreamError> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.client.get().get(url);
        // The generation before the password: a token is never filed under a newer password
        // than the one it was obtained with.
        let generation = self.credentials.generation();
        if let Some((u, p)) = self.credentials.basic() {
            req = req.basic_auth(u, Some(p));
        }
        let resp = tokio::time::timeout(self.settings.first_byte_timeout, req.send())
            .await
            .map_err(|_| {
                count(&self.settings.name, "token", "timeout".into());
                UpstreamError::Unavailable("token endpoint timed out".into())
            })?
            .map_err(|e| {
                count(&self.settings.name, "token", "error".into());
                unavailable(&e)
            })?;
        let status = resp.status();
        count(&self.settings.name, "token", status.as_str().to_owned());
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let body = read_capped(resp).await.unwrap_or_default();
            return Ok(Err((status, token::refusal_detail(&body))));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(UpstreamError::RateLimited {
                retry_after: retry_after(resp.headers()),
            });
        }
        if !status.is_success() {
            return Err(UpstreamError::Unavailable(format!(
                "token endpoint answered {status}"
            )));
        }
        let body =
            super::bounds::read_capped(resp, super::bounds::MAX_TOKEN_BODY, "token response")
                .await?;
        let (token, lifetime) = token::parse(&body)?;
        self.tokens.put(scope, &token, lifetime, generation);
        Ok(Ok(token))
    }

    /// Settle on the most preferred of the offered challenges the mirror can answer: Bearer
    /// with an http(s) realm, then Basic. False when it can answer none.
    fn learn(&self, challenges: &[Challenge]) -> bool {
        let mut offered: Vec<&Challenge> = challenges.iter().collect();
        offered.sort_by_key(|c| c.preference());
        for c in offered {
            let scheme = match c.scheme.as_str() {
                "basic" => Scheme::Basic,
                "bearer" => match c.param("realm").and_then(|r| Url::parse(r).ok()) {
                    Some(realm) if matches!(realm.scheme(), "http" | "https") => Scheme::Bearer {
                        realm,
                        service: c.param("service").map(str::to_owned),
                    },
                    _ => continue,
                },
                _ => continue,
            };
            *self.scheme.lock().expect("lock") = scheme;
            return true;
        }
        false
    }

    /// A place among the requests in flight to this upstream (see `slots.rs`).
    async fn permit(&self, op: &'static str) -> Result<Option<Slot>, UpstreamError> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        match slots.acquire(op, self.settings.first_byte_timeout).await {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                count(&self.settings.name, op, "queue_timeout".into());
                Err(e)
            }
        }
    }

    /// Send a request with authentication, answering one 401 challenge. Returns the response
    /// with any status; callers map statuses.
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        query: Option<&str>,
        name: &RepoName,
        header: Option<(HeaderName, &str)>,
    ) -> Result<Sent, UpstreamError> {
        let permit = self.permit(op).await?;
        let url = self.url(path, query);
        let scope = Self::scope(name);
        // After a challenge or a new password: a new token rather than the cached one.
        let mut force = false;
        let mut reread = false;
        for attempt in 0..3 {
            let mut req = self.client.get().request(method.clone(), url.clone());
            if let Some((k, v)) = &header {
                req = req.header(k, *v);
            }
            let scheme = self.scheme.lock().expect("lock").clone();
            match &scheme {
                Scheme::Unknown => {}
                Scheme::Basic => {
                    if let Some((u, p)) = self.credentials.basic() {
                        req = req.basic_auth(u, Some(p));
                    }
                }
                Scheme::Bearer { realm, service } => {
                    let token = self.token(realm, service.as_deref(), &scope, force).await?;
                    req = req.bearer_auth(token);
                }
            }
            let resp =
                match tokio::time::timeout(self.settings.first_byte_timeout, req.send()).await {
                    Err(_) => {
                        count(&self.settings.name, op, "timeout".into());
                        return Err(UpstreamError::Unavailable(format!(
                            "no response within {:?}",
                            self.settings.first_byte_timeout
                        )));
                    }
                    Ok(Err(e)) => {
                        count(&self.settings.name, op, "error".into());
                        return Err(unavailable(&e));
                    }
                    Ok(Ok(r)) => r,
                };
            count(&self.settings.name, op, resp.status().as_str().to_owned());
            self.limits.observe(resp.headers());
            if resp.status() == StatusCode::TOO_MANY_REQUESTS && op.starts_with("manifest") {
                self.limits.limited(resp.headers());
            }
            let status = resp.status();
            if !(status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN) {
                return Ok(Sent { resp, permit });
            }
            let last = attempt == 2;
            if status == StatusCode::UNAUTHORIZED && !force && !last {
                // Every challenge of every `WWW-Authenticate` header, the preferred answered.
                let challenges: Vec<Challenge> = resp
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| Challenge::parse_all(v).ok())
                    .flatten()
                    .collect();
                let was_basic = matches!(scheme, Scheme::Basic);
                if self.learn(&challenges) {
                    force = true;
                    let now_basic = matches!(*self.scheme.lock().expect("lock"), Scheme::Basic);
                    // Retrying Basic with the same credentials cannot succeed.
                    if !(was_basic && now_basic) {
                        continue;
                    }
                }
            }
            // Refused with the credentials in force: the password file may hold newer ones.
            let sent_credentials = !matches!(scheme, Scheme::Unknown);
            if sent_credentials && self.credentials.configured() && !reread && !last {
                reread = true;
                if self.credentials.reload() {
                    force = true;
                    continue;
                }
            }
            if status == StatusCode::UNAUTHORIZED
                && matches!(scheme, Scheme::Basic)
                && self.credentials.configured()
            {
                tracing::error!(upstream = %self.settings.name, %status, path,
                    "the upstream refused the configured credentials; renew upstream.password or the password_file");
                return Err(UpstreamError::CredentialsRefused(format!(
                    "it answered {status} to them"
                )));
            }
            return Ok(Sent { resp, permit });
        }
        unreachable!("the loop returns on its last attempt")
    }
}

impl HttpUpstream {
    async fn manifest_request(
        &self,
        op: &'static str,
        method: Method,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Response, UpstreamError> {
        if let Some(left) = self.limits.cooling() {
            count(&self.settings.name, op, "cooldown".into());
            return Err(UpstreamError::RateLimited {
                retry_after: Some(left.as_secs().max(1).to_string()),
            });
        }
        let path = format!("/v2/{name}/manifests/{reference}");
        check(
            self.send(op, method, &path, None, name, Some((ACCEPT, ACCEPT_ALL)))
                .await?
                .resp,
        )
    }
}

fn retry_after(h: &HeaderMap) -> Option<String> {
    h.get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Map a non-success status to an error.
fn check(resp: Response) -> Result<Response, UpstreamError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    Err(match status {
        StatusCode::NOT_FOUND => UpstreamError::NotFound,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            UpstreamError::Denied(format!("upstream answered {status}"))
        }
        StatusCode::TOO_MANY_REQUESTS => UpstreamError::RateLimited {
            retry_after: retry_after(resp.headers()),
        },
        _ => UpstreamError::Unavailable(format!("upstream answered {status}")),
    })
}

fn header_digest(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v.trim()).ok())
}

fn header_str(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// `bytes <first>-<last>/<total>`: the first byte's offset and the total (None when `*`).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, _) = range.split_once('-')?;
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first.parse().ok()?, total))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[async_trait]
impl Upstream for HttpUpstream {
    fn blob_bounds(&self, _: &RepoName) -> super::bounds::BlobBounds {
        self.settings.blob_bounds
    }

    fn canonical_name(&self, name: &RepoName) -> RepoName {
        name.with_library_prefix_if(self.settings.library_prefix)
    }

    fn own_name(&self, name: &RepoName) -> RepoName {
        self.canonical_name(name)
    }

    async fn head_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        let resp = self
            .manifest_request("manifest_head", Method::HEAD, name, reference)
            .await?;
        let h = resp.headers();
        Ok(ManifestHead {
            digest: header_digest(h),
            media_type: header_str(h, CONTENT_TYPE),
            size: content_length(h),
        })
    }

    async fn get_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<FetchedManifest, UpstreamError> {
        let resp = self
            .manifest_request("manifest_get", Method::GET, name, reference)
            .await?;
        if content_length(resp.headers()).is_some_and(|l| l > MAX_MANIFEST_SIZE as u64) {
            return Err(UpstreamError::ManifestTooLarge);
        }
        let media_type = header_str(resp.headers(), CONTENT_TYPE);
        let digest = header_digest(resp.headers());
        let body = read_capped(resp).await?;
        metrics::counter!(crate::metrics::UPSTREAM_BYTES, "upstream" => self.settings.name.clone())
            .increment(body.len() as u64);
        Ok(FetchedManifest {
            body,
            media_type,
            digest,
        })
    }

    async fn head_blob(&self, name: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        let path = format!("/v2/{name}/blobs/{digest}");
        let resp = check(
            self.send("blob_head", Method::HEAD, &path, None, name, None)
                .await?
                .resp,
        )?;
        content_length(resp.headers())
            .ok_or_else(|| UpstreamError::Invalid("blob HEAD without Content-Length".into()))
    }

    async fn get_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<BlobResponse, UpstreamError> {
        let path = format!("/v2/{name}/blobs/{digest}");
        let range = format!("bytes={from}-");
        let Sent { resp, permit } = self
            .send(
                "blob_get",
                Method::GET,
                &path,
                None,
                name,
                (from > 0).then_some((RANGE, range.as_str())),
            )
            .await?;
        let resp = check(resp)?;
        // A 206 says where its bytes start and how long the blob is; anything else is the
        // whole blob, whatever was asked.
        let (start, size) = if resp.status() == StatusCode::PARTIAL_CONTENT {
            match header_str(resp.headers(), CONTENT_RANGE)
                .as_deref()
                .and_then(parse_content_range)
            {
                Some((start, total)) if start <= from => (start, total),
                _ => {
                    return Err(UpstreamError::Invalid(format!(
                        "a range from byte {from} was answered with Content-Range {:?}",
                        header_str(resp.headers(), CONTENT_RANGE).unwrap_or_default()
                    )));
                }
            }
        } else {
            (0, content_length(resp.headers()))
        };
        // The permit is held until the body ends (or the stream is dropped).
        let bytes = metrics::counter!(crate::metrics::UPSTREAM_BYTES, "upstream" => self.settings.name.clone());
        let stream = resp
            .bytes_stream()
            .map(move |r| {
                let _ = &permit;
                if let Ok(chunk) = &r {
                    bytes.increment(chunk.len() as u64);
                }
                r.map_err(|e| unavailable(&e))
            })
            .boxed();
        let stream = self.settings.blob_bounds.apply_at(start, size, stream)?;
        Ok(BlobResponse {
            size,
            start,
            stream,
        })
    }

    async fn tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagsResponse, UpstreamError> {
        let path = format!("/v2/{name}/tags/list");
        let q = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(l) = last {
                q.append_pair("last", l);
            }
            q.finish()
        };
        let query = (!q.is_empty()).then_some(q.as_str());
        let resp = self
            .send("tags", Method::GET, &path, query, name, None)
            .await?
            .resp;
        let resp = check(resp)?;
        let next = header_str(resp.headers(), LINK).and_then(|l| parse_link(&l));
        let body =
            super::bounds::read_capped(resp, super::bounds::MAX_TAGS_BODY, "tag list").await?;
        Ok(TagsResponse { body, next })
    }

    async fn referrers(&self, name: &RepoName, digest: &Digest) -> Result<Bytes, UpstreamError> {
        let path = format!("/v2/{name}/referrers/{digest}");
        let resp = self
            .send(
                "referrers",
                Method::GET,
                &path,
                None,
                name,
                Some((ACCEPT, OCI_INDEX)),
            )
            .await?
            .resp;
        // Registries without the API answer 404 (Distribution 2.x), or 400/405 (some others).
        let lacks_api = matches!(
            resp.status(),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED
        );
        if !lacks_api {
            return read_capped(check(resp)?).await;
        }
        // The tag schema: referrers listed in an index tagged `<alg>-<hex>`.
        let tag = format!("{}-{}", digest.algorithm().as_str(), digest.hex());
        let reference = Reference::parse(&tag)
            .map_err(|e| UpstreamError::Invalid(format!("referrers tag {tag}: {e}")))?;
        Ok(self.get_manifest(name, &reference).await?.body)
    }
}

/// A manifest-sized body, read with a cap rather than trusting Content-Length (which may be
/// absent).
async fn read_capped(resp: Response) -> Result<Bytes, UpstreamError> {
    if content_length(resp.headers()).is_some_and(|l| l > MAX_MANIFEST_SIZE as u64) {
        return Err(UpstreamError::ManifestTooLarge);
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| unavailable(&e))?;
        if body.len() + chunk.len() > MAX_MANIFEST_SIZE {
            return Err(UpstreamError::ManifestTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// The target of `Link: </v2/x/tags/list?last=a&n=1>; rel="next"`.
fn parse_link(h: &str) -> Option<String> {
    let start = h.find('<')? + 1;
    let end = start + h[start..].find('>')?;
    let rest = &h[end + 1..];
    if !rest.contains("next") {
        return None;
    }
    Some(h[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_the_password() {
        let s = UpstreamSettings {
            name: "default".into(),
            url: Url::parse("https://registry-1.docker.io").unwrap(),
            username: Some("bot".into()),
            password: Some("hunter2-secret".into()),
            password_file: None,
            library_prefix: true,
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            max_concurrent_requests: 0,
            manifest_slots: 0,
            blob_bounds: Default::default(),
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn link_header() {
        assert_eq!(
            parse_link(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(parse_link("garbage"), None);
    }
}
