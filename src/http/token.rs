//! The token endpoint's HTTP side (Docker token protocol): `GET` with `service`, repeated
//! `scope`, `account`, `offline_token` and optional Basic credentials; and the OAuth2 `POST` form
//! (`grant_type=password|refresh_token`, `access_type=offline`). The decisions are
//! [`crate::auth::service::TokenService`]'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde_json::json;

use crate::auth::RequestInfo;
use crate::auth::realip::RealIp;
use crate::auth::service::{Credentials, TokenRequest, TokenService, TokenServiceError};
use crate::error::{ApiError, Code};

pub struct TokenEndpoint {
    pub service: Arc<TokenService>,
    /// How the client's address (for the ACL's `ip` and the login throttle) is found.
    pub real_ip: RealIp,
}

/// Form and query bodies are small; a larger one is refused before parsing.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

fn client_ip(ep: &TokenEndpoint, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    ep.real_ip
        .client(headers, Some(peer))
        .unwrap_or_else(|| peer.ip())
}

fn basic(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || ApiError::new(Code::Unauthorized, "malformed Basic credentials");
    let v = v.to_str().map_err(|_| bad())?;
    let Some((scheme, rest)) = v.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ApiError::new(
            Code::Unauthorized,
            "the token endpoint takes Basic credentials",
        ));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (u, p) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some((u.to_owned(), p.to_owned())))
}

fn to_api(e: TokenServiceError) -> ApiError {
    match e {
        TokenServiceError::BadRequest(m) => {
            ApiError::new(Code::Unsupported, m).with_status(StatusCode::BAD_REQUEST)
        }
        TokenServiceError::Unauthorized(_) => {
            // One answer for unknown user, wrong password and refused anonymous access.
            ApiError::new(Code::Unauthorized, "authentication failed")
                .with_challenge("Basic realm=\"ocimirror\"".into())
        }
        TokenServiceError::Throttled(d) => ApiError::new(
            Code::TooManyRequests,
            "too many failed logins from this address",
        )
        .with_retry_after(d.as_secs().max(1)),
        TokenServiceError::Unavailable(m) => ApiError::new(Code::Unavailable, m),
        TokenServiceError::Busy => ApiError::new(
            Code::Unavailable,
            "too many logins are being checked; retry shortly",
        )
        .with_retry_after(1),
        TokenServiceError::Internal(m) => {
            tracing::error!(error = %m, "token issue failed");
            ApiError::new(Code::Internal, "cannot issue a token")
        }
    }
}

fn respond(
    r: Result<crate::auth::service::TokenResponse, TokenServiceError>,
    oauth: bool,
) -> Response {
    match r {
        Ok(t) => {
            let mut body = json!({
                "token": t.access.token,
                "access_token": t.access.token,
                "expires_in": t.access.expires_in,
                "issued_at": t.access.issued_at,
            });
            if oauth {
                body["scope"] = json!(
                    t.granted
                        .iter()
                        .map(|g| g.to_scope())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            if let Some(rt) = t.refresh_token {
                body["refresh_token"] = json!(rt);
            }
            // Tokens are credentials: never cached by intermediaries.
            ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
        }
        Err(e) => to_api(e).into_response(),
    }
}

/// `GET <path>/jwks.json`: the public keys whose tokens are valid (Distribution 3's `jwks`).
/// Public, and cacheable for a short while: a rotation is seen within a minute.
pub async fn jwks(State(ep): State<Arc<TokenEndpoint>>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(ep.service.jwks().clone()),
    )
        .into_response()
}

pub async fn get_token(
    State(ep): State<Arc<TokenEndpoint>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    if query.len() > MAX_FORM_BYTES {
        return ApiError::new(Code::Unsupported, "query too long")
            .with_status(StatusCode::BAD_REQUEST)
            .into_response();
    }
    let mut service = None;
    let mut scopes = Vec::new();
    let mut offline = false;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "service" => service = Some(v.into_owned()),
            "scope" => scopes.push(v.into_owned()),
            "offline_token" => offline = v == "true",
            _ => {}
        }
    }
    let credentials = match basic(&headers) {
        Ok(Some((username, password))) => Credentials::Password { username, password },
        Ok(None) => Credentials::None,
        Err(e) => return e.into_response(),
    };
    let req = TokenRequest {
        service,
        scopes,
        credentials,
        client: RequestInfo {
            ip: client_ip(&ep, &headers, peer),
            service: ep.service.service.clone(),
        },
        want_refresh: offline,
    };
    respond(ep.service.handle(req).await, false)
}

pub async fn post_token(
    State(ep): State<Arc<TokenEndpoint>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if body.len() > MAX_FORM_BYTES {
        return ApiError::new(Code::Unsupported, "form too large")
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            .into_response();
    }
    let mut form = std::collections::HashMap::new();
    let mut scopes = Vec::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        if k == "scope" {
            scopes.push(v.into_owned());
        } else {
            form.insert(k.into_owned(), v.into_owned());
        }
    }
    let bad = |m: &str| {
        ApiError::new(Code::Unsupported, m)
            .with_status(StatusCode::BAD_REQUEST)
            .into_response()
    };
    let credentials = match form.get("grant_type").map(String::as_str) {
        Some("password") => match (form.remove("username"), form.remove("password")) {
            (Some(username), Some(password)) => Credentials::Password { username, password },
            _ => return bad("grant_type=password needs username and password"),
        },
        Some("refresh_token") => match form.remove("refresh_token") {
            Some(t) => Credentials::RefreshToken(t),
            None => return bad("grant_type=refresh_token needs refresh_token"),
        },
        Some(other) => {
            return bad(&format!(
                "grant_type {:?} is not supported (password, refresh_token)",
                other.chars().take(40).collect::<String>()
            ));
        }
        None => return bad("grant_type is required"),
    };
    let req = TokenRequest {
        service: form.remove("service"),
        scopes,
        credentials,
        client: RequestInfo {
            ip: client_ip(&ep, &headers, peer),
            service: ep.service.service.clone(),
        },
        want_refresh: form.get("access_type").is_some_and(|a| a == "offline"),
    };
    respond(ep.service.handle(req).await, true)
}
