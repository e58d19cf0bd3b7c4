//! The peer listener: `GET /fills/<digest>?from=<offset>` with the fleet's secret as a bearer
//! token streams this replica's fill of `digest` in progress, from `offset` on, exactly as its
//! own clients get it: bytes as they arrive, the last one only after the digest has been
//! verified, and a broken connection (never a clean end) when the fill fails. So a clean end of
//! the body is the holder's word that the blob is whole. 404 when no fill of it is in progress:
//! finished blobs are read from storage, never from here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;

use super::Secret;
use super::client::SIZE_HEADER;
use crate::oci::Digest;
use crate::registry::Registry;

struct Peer {
    registry: Arc<Registry>,
    secret: Secret,
}

pub fn router(registry: Arc<Registry>, secret: Secret) -> Router {
    Router::new()
        .route("/fills/{digest}", get(fill))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not a peer endpoint\n") })
        .with_state(Arc::new(Peer { registry, secret }))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    secret: Secret,
    header_read_timeout: Duration,
) {
    let app = router(registry, secret);
    // Until the process ends: peers may be streaming fills this replica still commits while
    // it drains.
    if let Err(e) = crate::http::conn::serve(
        listener,
        app,
        header_read_timeout,
        std::future::pending::<()>(),
    )
    .await
    {
        tracing::error!(error = %e, "the peer listener stopped");
    }
}

async fn fill(
    State(peer): State<Arc<Peer>>,
    Path(digest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !peer.secret.matches(presented.as_bytes()) {
        metrics::counter!("ocimirror_peer_requests_refused_total").increment(1);
        return (
            StatusCode::UNAUTHORIZED,
            "the fleet's cluster secret is required\n",
        )
            .into_response();
    }
    let Ok(digest) = Digest::parse(&digest) else {
        return (StatusCode::BAD_REQUEST, "not a digest\n").into_response();
    };
    let from = match q.get("from").map(|f| f.parse::<u64>()) {
        None => 0,
        Some(Ok(f)) => f,
        Some(Err(_)) => return (StatusCode::BAD_REQUEST, "from: not an offset\n").into_response(),
    };
    let Some(f) = peer.registry.fill_in_progress(&digest, from).await else {
        return (StatusCode::NOT_FOUND, "no fill of it in progress\n").into_response();
    };
    metrics::counter!("ocimirror_peer_streams_served_total").increment(1);
    let served = metrics::counter!("ocimirror_peer_bytes_served_total");
    let body = f.body.map(move |chunk| {
        if let Ok(c) = &chunk {
            served.increment(c.len() as u64);
        }
        chunk
    });
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(size) = f.size {
        resp = resp
            .header(SIZE_HEADER, size)
            .header(header::CONTENT_LENGTH, size - from);
    }
    resp.body(Body::from_stream(body)).expect("valid response")
}
