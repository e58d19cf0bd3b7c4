//! `/metrics`: the Prometheus exposition, on the main listener or on a listener of its own
//! (`server.metrics_listen`), behind a bearer token when `server.metrics_token_file` is set. The
//! counters say what is stored and what the upstream was asked (a `manifest_head` against a
//! `manifest_get`), so a mirror open to untrusted clients keeps them off its public face.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

/// Who may read `/metrics` and where it is served.
#[derive(Clone, Debug, Default)]
pub struct MetricsAccess {
    /// The bearer token a scrape must present; `None`: anyone who reaches the listener.
    pub token: Option<String>,
    /// Served on a listener of its own (then the main listener answers 404).
    pub separate: bool,
}

/// The metrics listener's routes: `/metrics` and the health checks a scraper's probe may use.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// Comparing every byte whatever the first difference: the token's length alone leaks.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) async fn render(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(want) = &state.metrics_access.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !given.is_some_and(|t| same(t.as_bytes(), want.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
                "/metrics needs the bearer token of server.metrics_token_file",
            )
                .into_response();
        }
    }
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics disabled").into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"ab"));
        assert!(!super::same(b"", b"a"));
    }
}
