//! The HTTP metrics of `/v2` requests: per (endpoint, method, status) handles looked up once,
//! and a response body that counts the bytes it hands to the connection.

use axum::body::Body;
use axum::http::Method;

/// The HTTP metrics of one (endpoint, method, status): looked up once, not built from their
/// labels on every request.
#[derive(Clone)]
pub(super) struct RequestMetrics {
    pub(super) requests: metrics::Counter,
    pub(super) duration: metrics::Histogram,
    pub(super) bytes: metrics::Counter,
}

/// Sets of [`RequestMetrics`] by (endpoint, method, status), bounded: a client inventing
/// methods gets its handles built each time rather than growing the map.
#[derive(Default)]
pub(super) struct RequestMetricsCache(
    std::sync::Mutex<std::collections::HashMap<(&'static str, Method, u16), RequestMetrics>>,
);

const MAX_REQUEST_METRICS: usize = 256;

impl RequestMetricsCache {
    pub(super) fn get(&self, kind: &'static str, method: &Method, status: u16) -> RequestMetrics {
        let key = (kind, method.clone(), status);
        let mut sets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = sets.get(&key) {
            return m.clone();
        }
        let m = RequestMetrics {
            requests: metrics::counter!(crate::metrics::HTTP_REQUESTS, "endpoint" => kind, "method" => method.as_str().to_owned(), "status" => status.to_string()),
            duration: metrics::histogram!(crate::metrics::HTTP_REQUEST_DURATION, "endpoint" => kind),
            bytes: metrics::counter!(crate::metrics::HTTP_RESPONSE_BYTES, "endpoint" => kind),
        };
        if sets.len() < MAX_REQUEST_METRICS {
            sets.insert(key, m.clone());
        }
        m
    }
}

/// A response body that counts its data bytes in `ocimirror_http_response_bytes_total` as they
/// are handed to the connection (a streamed blob is counted chunk by chunk, so a client that
/// goes away mid-blob is counted for what it was sent). Size hints pass through unchanged.
pub(super) struct CountedBody {
    pub(super) inner: Body,
    pub(super) bytes: metrics::Counter,
}

impl hyper::body::Body for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.increment(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
