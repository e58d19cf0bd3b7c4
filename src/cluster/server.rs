//! The peer listener: `GET /fills/<digest>?from=<offset>` with the fleet's secret as a bearer
//! token streams this replica's fill of `digest` in progress, from `offset` on, exactly as its
//! own clients get it: bytes as they arrive, the last one only after the digest has been
//! verified, and a broken connection (never a clean end) when the fill fails. So a clean end of
//! the body is the holder's word that the blob is whole. 404 when no fill of it is in progress:
//! finished blobs are read from storage, never from here.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;

use super::client::{REPOSITORY_HEADER, SIZE_HEADER};
use super::{PeerBounds, Secret};
use crate::http::stream::{BlobStreams, ConnCloser};
use crate::oci::Digest;
use crate::registry::Registry;

struct Peer {
    registry: Arc<Registry>,
    secret: Secret,
    /// The public listener's cap and send timeout hold here too: a stalled or greedy peer
    /// holds no more than a client could.
    streams: BlobStreams,
}

pub fn router(registry: Arc<Registry>, secret: Secret, streams: BlobStreams) -> Router {
    Router::new()
        .route("/fills/{digest}", get(fill))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not a peer endpoint\n") })
        .with_state(Arc::new(Peer {
            registry,
            secret,
            streams,
        }))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    secret: Secret,
    bounds: PeerBounds,
) {
    let app = router(
        registry,
        secret,
        BlobStreams::new(bounds.max_blob_streams, bounds.send_timeout),
    );
    // Until the process ends: peers may be streaming fills this replica still commits while
    // it drains.
    if let Err(e) =
        crate::http::conn::serve(listener, app, bounds.conn, std::future::pending::<()>()).await
    {
        tracing::error!(error = %e, "the peer listener stopped");
    }
}

async fn fill(
    State(peer): State<Arc<Peer>>,
    Path(digest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    conn: Option<Extension<ConnCloser>>,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !peer.secret.matches(presented.as_bytes()) {
        metrics::counter!(crate::metrics::PEER_REQUESTS_REFUSED).increment(1);
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
    // Peers hold the fleet's secret and relay for many clients each: only the process-wide cap
    // applies to them, not a single client's share.
    let Ok(permit) = peer.streams.open(None) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many blob streams open\n",
        )
            .into_response();
    };
    let Some(f) = peer.registry.fill_in_progress(&digest, from).await else {
        return (StatusCode::NOT_FOUND, "no fill of it in progress\n").into_response();
    };
    metrics::counter!(crate::metrics::PEER_STREAMS_SERVED).increment(1);
    let served = metrics::counter!(crate::metrics::PEER_BYTES_SERVED);
    let body = f.body.map(move |chunk| {
        if let Ok(c) = &chunk {
            served.increment(c.len() as u64);
        }
        chunk
    });
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(name) = &f.name {
        resp = resp.header(REPOSITORY_HEADER, name.as_str());
    }
    if let Some(size) = f.size {
        resp = resp
            .header(SIZE_HEADER, size)
            .header(header::CONTENT_LENGTH, size - from);
    }
    let body = peer
        .streams
        .guard(Body::from_stream(body), permit, conn.map(|c| c.0));
    resp.body(body).expect("valid response")
}
