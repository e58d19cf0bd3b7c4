//! The HTTP face: parse each request into an [`endpoint::Endpoint`], gate it, call the registry,
//! and render the answer with the distribution API's headers. All errors go through
//! [`crate::error::ApiError`].

pub mod access;
pub mod conn;
pub mod endpoint;
pub mod gate;
pub mod limit;
pub mod redirect;
mod request_metrics;
pub mod scrape;
pub mod sendfile;
pub mod stream;
pub mod tls;
pub mod token;
pub mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::realip::{self, RealIp};
use crate::error::{ApiError, Code};
use crate::oci::{ByteRange, Digest, Reference, RepoName};
use crate::registry::{Registry, TagList, Take};
use endpoint::Endpoint;
use gate::Gate;
use limit::ClientLimits;
use token::TokenEndpoint;

const API_VERSION: &str = "registry/2.0";
/// Cap on `n` for tag and catalog pages, so one request cannot ask for an unbounded answer.
const MAX_PAGE: usize = 10_000;

pub struct AppState {
    /// `None` in a token-service-only process.
    pub registry: Option<Arc<Registry>>,
    /// `Some` when `/v2` requires tokens.
    pub gate: Option<Gate>,
    pub metrics: Option<PrometheusHandle>,
    pub draining: AtomicBool,
    next_request_id: AtomicU64,
    /// Random per process, so request ids do not repeat across replicas or restarts.
    process_tag: String,
    /// Per-client request rate limits, when configured.
    pub limits: Option<Arc<ClientLimits>>,
    /// The status page at `/` and `/status.json`: `None` when off, `Some(restricted)` when on;
    /// restricted (the mirror requires authentication) shows no fills and no upstream hosts.
    pub status_page: Option<bool>,
    /// Where `/metrics` is served and what it requires.
    pub metrics_access: scrape::MetricsAccess,
    /// The cap on open blob streams and their send timeout; `None`: unbounded.
    pub blob_streams: Option<stream::BlobStreams>,
    /// Who may be sent to the store for a blob's bytes; `None`: redirects are off.
    pub redirect: Option<redirect::RedirectClients>,
    request_metrics: request_metrics::RequestMetricsCache,
    /// How a request's client address is found (behind trusted proxies, from their header).
    pub real_ip: RealIp,
}

impl AppState {
    pub fn new(
        registry: Option<Arc<Registry>>,
        gate: Option<Gate>,
        metrics: Option<PrometheusHandle>,
        limits: Option<Arc<ClientLimits>>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            registry,
            gate,
            metrics,
            draining: AtomicBool::new(false),
            next_request_id: AtomicU64::new(1),
            process_tag: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            limits,
            status_page: None,
            metrics_access: scrape::MetricsAccess::default(),
            blob_streams: None,
            redirect: None,
            request_metrics: request_metrics::RequestMetricsCache::default(),
            real_ip: RealIp::peer_only(),
        })
    }

    /// Find clients' addresses as `real_ip` says (`limits.real_ip_header`, `trusted_proxies`).
    pub fn with_real_ip(mut self: Arc<Self>, real_ip: RealIp) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before it is shared")
            .real_ip = real_ip;
        self
    }

    /// Send the clients `clients` allows to the store for stored blobs.
    pub fn with_redirect(mut self: Arc<Self>, clients: redirect::RedirectClients) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before it is shared")
            .redirect = Some(clients);
        self
    }

    /// Serve `/metrics` as `access` says (on its own listener, behind a token).
    pub fn with_metrics_access(mut self: Arc<Self>, access: scrape::MetricsAccess) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before it is shared")
            .metrics_access = access;
        self
    }

    /// Bound blob streams (count, send timeout).
    pub fn with_blob_streams(mut self: Arc<Self>, streams: stream::BlobStreams) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before it is shared")
            .blob_streams = Some(streams);
        self
    }

    /// Serve the status page; `restricted` shows counts only.
    pub fn with_status_page(mut self: Arc<Self>, restricted: bool) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before it is shared")
            .status_page = Some(restricted);
        self
    }
}

/// The whole HTTP surface: health always, metrics unless they have a listener of their own, `/v2` when this process serves the
/// registry, and the token endpoint at `token.0` when it issues tokens.
pub fn router(state: Arc<AppState>, token: Option<(String, Arc<TokenEndpoint>)>) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if !state.metrics_access.separate {
        app = app.route("/metrics", get(scrape::render));
    }
    if state.status_page.is_some() {
        app = app
            .route("/", get(status_html))
            .route("/status.json", get(status_json));
    }
    if state.registry.is_some() {
        app = app
            .route("/v2", axum::routing::any(distribution))
            .route("/v2/", axum::routing::any(distribution))
            .route("/v2/{*rest}", axum::routing::any(distribution));
    }
    let app = app.with_state(state);
    match token {
        Some((path, ep)) => app.merge(
            Router::new()
                .route(&path, get(token::get_token).post(token::post_token))
                .route(
                    &format!("{}/jwks.json", path.trim_end_matches('/')),
                    get(token::jwks),
                )
                .with_state(ep),
        ),
        None => app,
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        // Still ready with the store failing: the replica answers from memory and the upstream,
        // and every replica shares the store, so taking them out would leave clients nothing.
        match crate::status::storage_health().as_str() {
            "ok" => (StatusCode::OK, "ready").into_response(),
            degraded => (StatusCode::OK, format!("ready (storage {degraded})")).into_response(),
        }
    }
}

fn status_snapshot(state: &AppState) -> crate::status::Snapshot {
    let restricted = state.status_page.unwrap_or(true);
    crate::status::snapshot(!restricted)
}

async fn status_html(State(state): State<Arc<AppState>>) -> Response {
    let page = crate::status::render_html(&status_snapshot(&state));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

async fn status_json(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(status_snapshot(&state)),
    )
        .into_response()
}

async fn distribution(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let id = request_id(&state, req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    // The one place a /v2 request's client is decided: every per-client bound and the log use it.
    let client = state.real_ip.client(req.headers(), peer);
    let reached = realip::Reached {
        authority: req.uri().authority().map(|a| a.as_str()),
        tls: req.extensions().get::<conn::OverTls>().is_some(),
    };
    let caller = Caller {
        client,
        peer,
        reached,
    };
    let conn = req.extensions().get::<stream::ConnCloser>().cloned();
    let files = req.extensions().get::<Arc<sendfile::FileQueue>>().cloned();
    let parsed = endpoint::parse(&method, &path);
    let kind = parsed.as_ref().map(Endpoint::kind).unwrap_or("other");
    // Every log line of the request carries its id, which the client gets as `x-request-id`.
    let span = tracing::info_span!("request", id = %id);
    let mut resp = match parsed {
        Ok(ep) => tracing::Instrument::instrument(
            dispatch(
                &state,
                ep,
                &method,
                req.uri().query(),
                req.headers(),
                caller,
                (conn, files),
            ),
            span,
        )
        .await
        .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if resp.status() == StatusCode::UNAUTHORIZED {
        metrics::counter!(crate::metrics::AUTH_CHALLENGES).increment(1);
    }
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    let m = state.request_metrics.get(kind, &method, status);
    m.requests.increment(1);
    m.duration.record(elapsed.as_secs_f64());
    access::log(access::Line {
        id,
        client,
        method,
        path,
        status,
        ms: elapsed.as_millis() as u64,
    });
    resp.map(|inner| {
        Body::new(request_metrics::CountedBody {
            inner,
            bytes: m.bytes,
        })
    })
}

/// The proxy's `x-request-id` when it sent a sane one, else this process's tag and a counter
/// (unique across the replicas of a fleet).
fn request_id(state: &AppState, headers: &HeaderMap) -> String {
    let given = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    match given {
        Some(v) => v.to_owned(),
        None => format!(
            "{}-{}",
            state.process_tag,
            state.next_request_id.fetch_add(1, Ordering::Relaxed)
        ),
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

async fn dispatch(
    state: &AppState,
    ep: Endpoint,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    caller: Caller<'_>,
    conn: ConnParts,
) -> Result<Response, ApiError> {
    let head = *method == Method::HEAD;
    if ep == Endpoint::Upload || !matches!(*method, Method::GET | Method::HEAD) {
        return Err(ApiError::new(
            Code::Unsupported,
            "ocimirror is a pull-through mirror: pushes and deletes are not accepted",
        ));
    }
    let (ep, ns) = with_namespace(state, ep, query)?;
    let mut resp = serve(state, ep, query, headers, caller, head, conn)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    // The distribution spec's "Registry Proxying": the `ns` that chose the upstream is named
    // in the answer.
    if let Some(v) = ns.and_then(|ns| HeaderValue::from_str(&ns).ok()) {
        resp.headers_mut().insert("oci-namespace", v);
    }
    Ok(resp)
}

/// A read request, its `ns` applied: the gate, the limits, then the registry.
async fn serve(
    state: &AppState,
    ep: Endpoint,
    query: Option<&str>,
    headers: &HeaderMap,
    caller: Caller<'_>,
    head: bool,
    conn: ConnParts,
) -> Result<Response, ApiError> {
    let client = caller.client;
    let account = match &state.gate {
        Some(gate) => Some(gate.check(headers, caller.peer, caller.reached, &ep)?),
        None => None,
    };
    if let Some(limits) = &state.limits {
        limits.check(account.as_deref(), client)?;
    }
    let registry = state
        .registry
        .as_ref()
        .expect("/v2 is routed only with a registry");
    match ep {
        Endpoint::Base => Ok(axum::Json(serde_json::json!({})).into_response()),
        Endpoint::Manifest(name, reference) => {
            manifest(registry, &name, &reference, head, headers).await
        }
        Endpoint::Blob(name, digest) => {
            let streams = state.blob_streams.as_ref();
            let permit = match streams {
                // Taken before any work, so that refused requests cost nothing (no fill, no file).
                Some(s) if !head => Some(s.open(client)?),
                _ => None,
            };
            let redirect = state
                .redirect
                .as_ref()
                .is_some_and(|r| r.allow(headers, client));
            blob(
                registry,
                &name,
                &digest,
                (head, redirect),
                headers,
                streams.zip(permit),
                conn,
            )
            .await
        }
        Endpoint::Tags(name) => tags(registry, &name, query).await,
        Endpoint::Catalog => catalog(registry, query).await,
        Endpoint::Referrers(name, digest) => referrers(registry, &name, &digest, query).await,
        Endpoint::Upload => unreachable!("refused above"),
    }
}

/// containerd names the registry it wants in `?ns=`: the registry says which configured
/// upstream answers for it, and the name is qualified for that upstream; the `ns` used is
/// returned (lowercase, as configured). Any other `ns` is 404, so the client falls back to the
/// registry itself and nothing is dialled on a request's say-so.
fn with_namespace(
    state: &AppState,
    ep: Endpoint,
    query: Option<&str>,
) -> Result<(Endpoint, Option<String>), ApiError> {
    let (Some(registry), Some(q)) = (&state.registry, query) else {
        return Ok((ep, None));
    };
    let Some(ns) = url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
    else {
        return Ok((ep, None));
    };
    let Some(namespace) = registry.namespace(&ns) else {
        return Err(ApiError::new(
            Code::NameUnknown,
            format!("no upstream is configured for ns={}", truncate(&ns)),
        ));
    };
    let qualify = |name: RepoName| {
        let shown = name.to_string();
        namespace.qualify(name).map_err(|e| {
            ApiError::new(
                Code::NameInvalid,
                format!("{shown} under ns={}: {e}", truncate(&ns)),
            )
        })
    };
    let ep = match ep {
        Endpoint::Manifest(n, r) => Endpoint::Manifest(qualify(n)?, r),
        Endpoint::Blob(n, d) => Endpoint::Blob(qualify(n)?, d),
        Endpoint::Tags(n) => Endpoint::Tags(qualify(n)?),
        Endpoint::Referrers(n, d) => Endpoint::Referrers(qualify(n)?, d),
        other => other,
    };
    Ok((ep, Some(ns.trim().to_ascii_lowercase())))
}

/// The referrers of `digest`, as an OCI image index; `artifactType` filters it (and says so).
async fn referrers(
    registry: &Arc<Registry>,
    name: &RepoName,
    digest: &Digest,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let artifact_type = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "artifactType")
            .map(|(_, v)| v.into_owned())
    });
    let body = registry
        .referrers(name, digest, artifact_type.as_deref())
        .await?;
    let mut builder =
        Response::builder().header(header::CONTENT_TYPE, crate::oci::manifest::OCI_INDEX);
    if artifact_type.is_some() {
        builder = builder.header("oci-filters-applied", "artifactType");
    }
    Ok(builder.body(Body::from(body)).expect("valid response"))
}

fn etag(d: &Digest) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{d}\"")).expect("digest is header-safe")
}

fn not_modified(headers: &HeaderMap, d: &Digest) -> bool {
    let Some(v) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let tag = format!("\"{d}\"");
    v.split(',').any(|t| t.trim() == tag || t.trim() == "*")
}

async fn manifest(
    registry: &Arc<Registry>,
    name: &RepoName,
    reference: &Reference,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let m = registry.manifest(name, reference).await?;
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, m.media_type.as_str())
        .header("docker-content-digest", m.digest.to_string())
        .header(header::ETAG, etag(&m.digest));
    if not_modified(headers, &m.digest) {
        builder = builder.status(StatusCode::NOT_MODIFIED);
        return Ok(builder.body(Body::empty()).expect("valid response"));
    }
    builder = builder.header(header::CONTENT_LENGTH, m.body.len());
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.body)
    };
    Ok(builder.body(body).expect("valid response"))
}

/// Who sent a request: the client's address, decided once per request as `real_ip` says, the
/// connection's peer (whose headers the gate believes only if it is a trusted proxy), and where
/// the request and its connection say it was sent.
#[derive(Clone, Copy)]
struct Caller<'r> {
    client: Option<std::net::IpAddr>,
    peer: Option<std::net::SocketAddr>,
    reached: realip::Reached<'r>,
}

/// What a request knows of its connection: the closer (send timeout) and, on a connection
/// that sends files itself, its file queue.
type ConnParts = (Option<stream::ConnCloser>, Option<Arc<sendfile::FileQueue>>);

/// `(head, redirect)`: a HEAD; whether the client may be sent to the store.
async fn blob(
    registry: &Arc<Registry>,
    name: &RepoName,
    digest: &Digest,
    (head, redirect): (bool, bool),
    headers: &HeaderMap,
    streams: Option<(&stream::BlobStreams, stream::StreamPermit)>,
    (conn, files): ConnParts,
) -> Result<Response, ApiError> {
    let range = headers
        .get(header::RANGE)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::new(Code::RangeInvalid, "Range header is not ASCII"))
                .and_then(|s| ByteRange::parse(s).map_err(ApiError::from))
        })
        .transpose()?;
    let take = Take {
        redirect,
        file: files.is_some(),
    };
    let reply = registry.blob_for(name, digest, range, head, take).await?;
    if let Some(location) = &reply.location {
        return Ok(redirect::response(digest, location));
    }
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest.to_string())
        .header(header::ETAG, etag(digest))
        .header(header::ACCEPT_RANGES, "bytes")
        // Content-addressed: it can never change.
        .header(header::CACHE_CONTROL, "max-age=31536000");
    let length = match reply.range {
        Some((a, b)) => {
            builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {a}-{b}/{}", reply.size),
            );
            b - a + 1
        }
        None => reply.size,
    };
    builder = builder.header(header::CONTENT_LENGTH, length);
    let body = match (reply.body, reply.file, reply.pieces, files) {
        (Some(s), _, _, _) => Some(Body::from_stream(s)),
        (None, Some(f), _, Some(files)) => Some(sendfile::body(files, f)),
        (None, Some(f), _, None) => Some(sendfile::streamed(f)),
        (None, None, Some(p), Some(files)) => Some(sendfile::spooled(files, p)),
        (None, None, Some(p), None) => Some(sendfile::spooled_read(p)),
        (None, None, None, _) => None,
    };
    let body = match (body, streams) {
        (Some(b), Some((streams, permit))) => streams.guard(b, permit, conn),
        (Some(b), None) => b,
        (None, _) => Body::empty(),
    };
    Ok(builder.body(body).expect("valid response"))
}

fn page_params(query: Option<&str>) -> Result<(Option<usize>, Option<String>), ApiError> {
    let mut n = None;
    let mut last = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "n" => {
                let parsed: usize = v.parse().map_err(|_| {
                    ApiError::new(
                        Code::PaginationNumberInvalid,
                        format!("n must be a non-negative integer, got {:?}", truncate(&v)),
                    )
                })?;
                n = Some(parsed.min(MAX_PAGE));
            }
            "last" => last = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok((n, last))
}

fn link_header(path: &str, next: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("<{path}?{next}>; rel=\"next\""))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn tags(
    registry: &Arc<Registry>,
    name: &RepoName,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let (n, last) = page_params(query)?;
    let page = registry.tags(name, n, last.as_deref()).await?;
    let mut resp = axum::Json(TagList {
        name: page.list.name,
        tags: page.list.tags,
    })
    .into_response();
    if let Some(next) = page.next {
        resp.headers_mut().insert(
            header::LINK,
            link_header(&format!("/v2/{name}/tags/list"), &next),
        );
    }
    Ok(resp)
}

async fn catalog(registry: &Arc<Registry>, query: Option<&str>) -> Result<Response, ApiError> {
    let (n, last) = page_params(query)?;
    let page = registry.catalog(n, last.as_deref()).await?;
    let mut resp =
        axum::Json(serde_json::json!({ "repositories": page.repositories })).into_response();
    if let Some(next) = page.next {
        resp.headers_mut()
            .insert(header::LINK, link_header("/v2/_catalog", &next));
    }
    Ok(resp)
}
