//! Which clients a blob GET may send to the store (`storage.redirect`), and the `307` they get.
//! The registry decides whether a blob is in storage and makes the URL; this decides only who
//! may follow one: not a client in `except`, nor one whose request carries
//! `Ocimirror-No-Redirect` (a client, or the proxy in front, that cannot reach the store).

use std::net::IpAddr;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use crate::oci::Digest;
use crate::storage::config::{NO_REDIRECT_HEADER, RedirectPolicy};

pub struct RedirectClients {
    policy: RedirectPolicy,
}

impl RedirectClients {
    pub fn new(policy: RedirectPolicy) -> Self {
        RedirectClients { policy }
    }

    /// Whether this request's client (its address as [`crate::auth::realip::RealIp`] found it)
    /// may be sent to the store.
    pub fn allow(&self, headers: &HeaderMap, client: Option<IpAddr>) -> bool {
        !headers.contains_key(NO_REDIRECT_HEADER) && self.policy.applies_to(client)
    }
}

/// `307` to the object in the store. Not cacheable: the URL expires, unlike the blob.
pub fn response(digest: &Digest, location: &str) -> Response {
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(header::LOCATION, location)
        .header("docker-content-digest", digest.to_string())
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_else(|_| {
            // A URL that is not a header value: never from the stores' signers, which encode.
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Body::empty())
                .expect("valid response")
        })
}
