//! The metrics catalogue: every `ocimirror_*` family's name, kind, labels and help text, declared
//! once here. Emitters name a family by its constant (`metrics::counter!(CACHE_HITS, …)`), the
//! help texts are described when the Prometheus recorder is installed, and the few totals the
//! status page shows are kept here as they are recorded, so `status` reads them without parsing
//! the `/metrics` text. A leaf: it imports nothing of ocimirror.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family as `/metrics` exports it.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    /// Every label its series may carry.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! catalogue {
    ($($konst:ident = $kind:ident $name:literal [$($label:literal),*] $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $konst: &str = $name;
        )*
        /// Every family, in the order of this file.
        pub const FAMILIES: &[Family] = &[$(Family {
            name: $konst,
            kind: Kind::$kind,
            labels: &[$($label),*],
            help: $help,
        }),*];
    };
}

catalogue! {
    // The HTTP face (`http/`).
    HTTP_REQUESTS = Counter "ocimirror_http_requests_total" ["endpoint", "method", "status"]
        "Requests to /v2, by endpoint, method and response status.";
    HTTP_REQUEST_DURATION = Histogram "ocimirror_http_request_duration_seconds" ["endpoint"]
        "Time from a /v2 request's arrival to its response head, by endpoint.";
    HTTP_RESPONSE_BYTES = Counter "ocimirror_http_response_bytes_total" ["endpoint"]
        "Response body bytes handed to connections, by endpoint (a streamed blob chunk by chunk).";
    AUTH_CHALLENGES = Counter "ocimirror_auth_challenges_total" []
        "401 answers sending a client to the token endpoint.";
    AUTH_TOKEN_REJECTED = Counter "ocimirror_auth_token_rejected_total" []
        "Bearer tokens refused by the /v2 gate (bad signature, expired, wrong audience).";
    CLIENT_RATE_LIMITED = Counter "ocimirror_client_rate_limited_total" []
        "Requests refused with 429 by the per-client rate limits.";
    BLOB_STREAMS_OPEN = Gauge "ocimirror_blob_streams_open" []
        "Blob response streams open now (bounded by server.max_blob_streams).";
    BLOB_STREAMS_REFUSED = Counter "ocimirror_blob_streams_refused_total" []
        "Blob GETs answered 503 because server.max_blob_streams streams were open.";
    BLOB_STREAMS_CLIENT_REFUSED = Counter "ocimirror_blob_streams_client_refused_total" []
        "Blob GETs answered 503 because their client had server.max_blob_streams_per_client open.";
    SEND_TIMEOUTS = Counter "ocimirror_send_timeouts_total" []
        "Connections closed because a client read nothing of a blob for server.send_timeout.";
    TLS_HANDSHAKE_FAILURES = Counter "ocimirror_tls_handshake_failures_total" []
        "TLS handshakes that failed or timed out.";
    TLS_RELOADS = Counter "ocimirror_tls_reloads_total" ["result"]
        "Reloads of the TLS certificate and key, by result (ok, refused).";
    // The token service (`auth/`, `server`).
    AUTH_RELOADS = Counter "ocimirror_auth_reloads_total" ["result"]
        "Reloads of users and ACL, by result (ok, refused).";
    AUTH_SCOPES = Counter "ocimirror_auth_scopes_total" ["result"]
        "Requested token scopes, by result (granted, denied).";
    AUTHN = Counter "ocimirror_authn_total" ["result"]
        "Authentications at the token endpoint, by result.";
    AUTHN_GITHUB_REQUESTS = Counter "ocimirror_authn_github_requests_total" ["status"]
        "Requests to GitHub's API by the GitHub authenticator, by status.";
    AUTHN_OIDC_REQUESTS = Counter "ocimirror_authn_oidc_requests_total" ["status"]
        "Requests to the OIDC provider by the OIDC authenticator, by status.";
    AUTHN_CHECKS_REFUSED = Counter "ocimirror_authn_checks_refused_total" []
        "Logins answered 503 because login_throttle.max_pending_checks password checks were waiting.";
    AUTHN_THROTTLE_EVICTIONS = Counter "ocimirror_authn_throttle_evictions_total" []
        "Clients dropped from the login throttle's table to bound its memory.";
    // The pull-through rules (`registry/`).
    CACHE_HITS = Counter "ocimirror_cache_hits_total" ["kind"]
        "Requests answered without fetching a body upstream, by kind (blob, manifest).";
    CACHE_MISSES = Counter "ocimirror_cache_misses_total" ["kind"]
        "Requests that needed the upstream's body, by kind (blob, manifest).";
    STALE_SERVED = Counter "ocimirror_stale_served_total" []
        "Answers from the cache after the upstream failed to revalidate them.";
    FILLS_STARTED = Counter "ocimirror_fills_started_total" []
        "Blob fills started from an upstream.";
    FILLS_IN_FLIGHT = Gauge "ocimirror_fills_in_flight" []
        "Blob fills running now.";
    FILLS_FAILED = Counter "ocimirror_fills_failed_total" []
        "Blob fills that ended without a verified blob.";
    FILLS_ABANDONED = Counter "ocimirror_fills_abandoned_total" []
        "Blob fills stopped because nobody read them any more (upstream.abandon_fills_after).";
    FILL_JOINS = Counter "ocimirror_fill_joins_total" []
        "Requests that joined a fill already running instead of fetching again.";
    FILL_REMOTE_WAITS = Counter "ocimirror_fill_remote_waits_total" ["result"]
        "Waits for another replica's fill, by result (stored, took_over).";
    FILL_TAKEOVERS = Counter "ocimirror_fill_takeovers_total" ["reason"]
        "Fill leases taken over from another replica, by reason (holder_gone, lease_free).";
    FILL_RESUMES = Counter "ocimirror_fill_resumes_total" ["from"]
        "Fills continued from the bytes already held instead of restarting, by where the rest came from.";
    BLOB_REDIRECTS = Counter "ocimirror_blob_redirects_total" []
        "Blob GETs answered with a redirect to a presigned URL of the stored object (storage.redirect).";
    BLOB_FIRST_BYTE = Histogram "ocimirror_blob_first_byte_seconds" ["source"]
        "Time from a blob GET to its first body byte being available, by source (upstream, peer, storage).";
    // The fleet's peer streams (`registry/fetch.rs` relaying, `cluster/` serving).
    PEER_STREAMS_OPENED = Counter "ocimirror_peer_streams_opened_total" []
        "Streams of another replica's fill in progress opened by this replica.";
    PEER_STREAMS_FAILED = Counter "ocimirror_peer_streams_failed_total" ["reason"]
        "Peer streams that could not be opened or broke, by reason.";
    PEER_BYTES_RELAYED = Counter "ocimirror_peer_bytes_relayed_total" []
        "Blob bytes received from other replicas' fills in progress.";
    PEER_STREAMS_SERVED = Counter "ocimirror_peer_streams_served_total" []
        "Streams of this replica's fills in progress served to other replicas.";
    PEER_BYTES_SERVED = Counter "ocimirror_peer_bytes_served_total" []
        "Blob bytes of this replica's fills in progress sent to other replicas.";
    PEER_REQUESTS_REFUSED = Counter "ocimirror_peer_requests_refused_total" []
        "Requests to the peer listener refused (missing or wrong secret, or not a fill stream).";
    VERIFY = Counter "ocimirror_verify_total" ["result"]
        "Manifests checked against a verify rule as they were served, by result (passed, unsigned, untrusted, malformed, other_digest, other_repository).";
    VERIFY_RELOADS = Counter "ocimirror_verify_reloads_total" ["result"]
        "Reloads of the verify rules and their keys, by result (ok, refused).";
    // Storage and the descriptor cache.
    STORAGE_ERRORS = Counter "ocimirror_storage_errors_total" ["op"]
        "Failed storage operations, by operation.";
    STORAGE_BREAKER_STATE = Gauge "ocimirror_storage_breaker_state" ["circuit"]
        "The storage circuit breaker by circuit (read, write): 0 closed, 1 half-open, 2 open.";
    STORAGE_BREAKER_TRANSITIONS = Counter "ocimirror_storage_breaker_transitions_total" ["circuit", "to"]
        "Storage circuit breaker transitions, by circuit and new state.";
    STORAGE_BREAKER_REFUSED = Counter "ocimirror_storage_breaker_refused_total" ["circuit"]
        "Storage operations refused at once by an open circuit, by circuit.";
    DEGRADED_SERVED = Counter "ocimirror_degraded_served_total" ["kind"]
        "Requests answered while storage could not be read (passed through from the upstream uncommitted, or from memory), by kind (blob, manifest, tags, referrers).";
    CACHE_ERRORS = Counter "ocimirror_cache_errors_total" ["backend", "op"]
        "Failed descriptor-cache operations, by backend and operation.";
    CACHE_LEASES_RETAKEN = Counter "ocimirror_cache_leases_retaken_total" []
        "Fleet leases found gone while their holder renewed them (a Redis failover lost the write) and taken again.";
    // Expiry (`expiry/`).
    STORAGE_BYTES = Gauge "ocimirror_storage_bytes" []
        "Bytes held in storage, as of the last expiry pass.";
    ACCESS_RECORDS_WRITTEN = Counter "ocimirror_access_records_written_total" []
        "Access records written to storage for expiry.";
    EXPIRY_PASSES = Counter "ocimirror_expiry_passes_total" ["result"]
        "Expiry passes, by result.";
    EXPIRY_REMOVED_BYTES = Counter "ocimirror_expiry_removed_bytes_total" []
        "Bytes of blobs removed by expiry.";
    EXPIRY_REMOVED_BLOBS = Counter "ocimirror_expiry_removed_blobs_total" []
        "Blobs removed by expiry.";
    // The upstream clients (`upstream/`).
    UPSTREAM_REQUESTS = Counter "ocimirror_upstream_requests_total" ["upstream", "op", "status"]
        "Requests to an upstream, by upstream, operation and status (or timeout, error, cooldown).";
    UPSTREAM_PASSWORD_RELOADS = Counter "ocimirror_upstream_password_reloads_total" ["upstream"]
        "Times an upstream's password_file was read again (changed, SIGHUP, or refused credentials).";
    UPSTREAM_BYTES = Counter "ocimirror_upstream_bytes_total" ["upstream"]
        "Blob and manifest body bytes fetched from an upstream.";
    UPSTREAM_RATELIMIT_LIMIT = Gauge "ocimirror_upstream_ratelimit_limit" ["upstream"]
        "The upstream's pull quota, from its ratelimit-limit header.";
    UPSTREAM_RATELIMIT_REMAINING = Gauge "ocimirror_upstream_ratelimit_remaining" ["upstream"]
        "Pulls left in the upstream's quota window, from its ratelimit-remaining header.";
    UPSTREAM_COOLDOWNS = Counter "ocimirror_upstream_cooldowns_total" ["upstream"]
        "Manifest cooldowns started after an upstream answered 429.";
    UPSTREAM_QUEUED = Counter "ocimirror_upstream_queued_total" ["upstream", "kind"]
        "Upstream requests that waited for a slot of max_concurrent_requests, by kind (blob: every slot blob downloads may hold was taken; other).";
    UPSTREAM_SHARED = Counter "ocimirror_upstream_shared_total" ["op"]
        "Upstream reads answered by an identical one already in flight instead of a request of their own, by op (tags, referrers, token).";
    REFERRERS_UNKEPT = Counter "ocimirror_referrers_answers_unkept_total" ["reason"]
        "Referrers answers not kept in memory, by reason: large (above a quarter of cache.referrers.max_bytes), full (every kept answer dropped to make room), filters (the index has cache.referrers.filters_per_index answers).";
    UPSTREAM_BOUNDS = Counter "ocimirror_upstream_bounds_total" ["bound"]
        "Upstream bodies cut off by a bound (max_blob_size, declared_size, min_blob_rate, body_size, max_manifest_descriptors).";
    UPSTREAM_REFUSED = Counter "ocimirror_upstream_refused_total" ["reason"]
        "Upstream calls the mirror refused to make, by reason (allow_list).";
}

/// The family named `name`.
pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// Give every family its help text (shown as `# HELP` on `/metrics`).
pub fn describe_all() {
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => metrics::describe_counter!(f.name, f.help),
            Kind::Gauge => metrics::describe_gauge!(f.name, f.help),
            Kind::Histogram => metrics::describe_histogram!(f.name, f.help),
        }
    }
}

/// How often histogram samples are folded into their buckets. The recorder keeps every sample
/// until then; only a scrape folded them before, so a mirror nobody scraped grew by 8 bytes
/// a request without end.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Folds done by the upkeep thread (for its test).
static UPKEEPS: AtomicU64 = AtomicU64::new(0);

/// Install the process-wide Prometheus recorder, wrapped so that the status page's totals are
/// kept, describe every family, and start the thread that keeps its histograms folded (once;
/// later calls get the same handle).
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ];
            let prometheus = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION.into()), &buckets)
                .ok()?
                .set_buckets_for_metric(Matcher::Full(BLOB_FIRST_BYTE.into()), &buckets)
                .ok()?
                .build_recorder();
            let handle = prometheus.handle();
            metrics::set_global_recorder(Tracking { inner: prometheus }).ok()?;
            describe_all();
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("ocimirror-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                        UPKEEPS.fetch_add(1, Ordering::Relaxed);
                    }
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start the metrics upkeep; histograms are folded only when scraped");
            }
            Some(handle)
        })
        .clone()
}

/// The sum of every sample of `name` in Prometheus text, or `None` when it has none.
pub fn total_in_text(text: &str, name: &str) -> Option<f64> {
    total_in_text_where(text, name, "")
}

/// The sum of the series of `name` whose labels contain `label` (empty: every series).
pub fn total_in_text_where(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled
                .rsplit_once('}')
                .filter(|(labels, _)| labels.contains(label))
                .map(|(_, v)| v)
        } else if rest.starts_with(' ') && label.is_empty() {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

// ---- the status page's totals ------------------------------------------------------------------

/// A float kept in an atomic (its bits), as a gauge needs.
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    const fn new(v: f64) -> Self {
        AtomicF64(AtomicU64::new(v.to_bits()))
    }
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    fn update(&self, f: impl Fn(f64) -> f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(f(f64::from_bits(b)).to_bits())
            });
    }
}

/// What the status page shows of the metrics, kept as they are recorded.
struct Totals {
    blob_hits: AtomicU64,
    blob_misses: AtomicU64,
    requests: AtomicU64,
    response_bytes: AtomicU64,
    stale_served: AtomicU64,
    verify_passed: AtomicU64,
    verify_failed: AtomicU64,
    fills_in_flight: AtomicF64,
    /// NaN until an expiry pass sets it.
    storage_bytes: AtomicF64,
}

static TOTALS: Totals = Totals {
    blob_hits: AtomicU64::new(0),
    blob_misses: AtomicU64::new(0),
    requests: AtomicU64::new(0),
    response_bytes: AtomicU64::new(0),
    stale_served: AtomicU64::new(0),
    verify_passed: AtomicU64::new(0),
    verify_failed: AtomicU64::new(0),
    fills_in_flight: AtomicF64::new(0.0),
    storage_bytes: AtomicF64::new(f64::NAN),
};

/// The totals as the status page shows them; all zero (and no stored bytes) before the
/// recorder is installed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatusTotals {
    pub blob_hits: u64,
    pub blob_misses: u64,
    pub requests: u64,
    pub response_bytes: u64,
    pub stale_served: u64,
    /// Manifests that passed / failed a `verify` rule as they were served.
    pub verify_passed: u64,
    pub verify_failed: u64,
    pub fills_in_flight: u64,
    /// `None` until an expiry pass has measured it.
    pub storage_bytes: Option<u64>,
}

pub fn status_totals() -> StatusTotals {
    let t = &TOTALS;
    let stored = t.storage_bytes.get();
    StatusTotals {
        blob_hits: t.blob_hits.load(Ordering::Relaxed),
        blob_misses: t.blob_misses.load(Ordering::Relaxed),
        requests: t.requests.load(Ordering::Relaxed),
        response_bytes: t.response_bytes.load(Ordering::Relaxed),
        stale_served: t.stale_served.load(Ordering::Relaxed),
        verify_passed: t.verify_passed.load(Ordering::Relaxed),
        verify_failed: t.verify_failed.load(Ordering::Relaxed),
        fills_in_flight: t.fills_in_flight.get().max(0.0) as u64,
        storage_bytes: (!stored.is_nan()).then_some(stored.max(0.0) as u64),
    }
}

/// The total a counter series adds to, if the status page shows it.
fn counter_total(key: &Key) -> Option<&'static AtomicU64> {
    let blob = || {
        key.labels()
            .any(|l| l.key() == "kind" && l.value() == "blob")
    };
    let passed = || {
        key.labels()
            .any(|l| l.key() == "result" && l.value() == "passed")
    };
    match key.name() {
        HTTP_REQUESTS => Some(&TOTALS.requests),
        HTTP_RESPONSE_BYTES => Some(&TOTALS.response_bytes),
        STALE_SERVED => Some(&TOTALS.stale_served),
        VERIFY if passed() => Some(&TOTALS.verify_passed),
        VERIFY => Some(&TOTALS.verify_failed),
        CACHE_HITS if blob() => Some(&TOTALS.blob_hits),
        CACHE_MISSES if blob() => Some(&TOTALS.blob_misses),
        _ => None,
    }
}

fn gauge_total(key: &Key) -> Option<&'static AtomicF64> {
    match key.name() {
        FILLS_IN_FLIGHT => Some(&TOTALS.fills_in_flight),
        STORAGE_BYTES => Some(&TOTALS.storage_bytes),
        _ => None,
    }
}

/// The Prometheus recorder, with the series the status page shows also added to [`TOTALS`].
struct Tracking<R> {
    inner: R,
}

struct TeeCounter(Counter, &'static AtomicU64);

impl CounterFn for TeeCounter {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        self.1.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        self.1.fetch_max(value, Ordering::Relaxed);
    }
}

struct TeeGauge(Gauge, &'static AtomicF64);

impl GaugeFn for TeeGauge {
    fn increment(&self, value: f64) {
        self.0.increment(value);
        self.1
            .update(|v| if v.is_nan() { value } else { v + value });
    }
    fn decrement(&self, value: f64) {
        self.0.decrement(value);
        self.1
            .update(|v| if v.is_nan() { -value } else { v - value });
    }
    fn set(&self, value: f64) {
        self.0.set(value);
        self.1.update(|_| value);
    }
}

impl<R: Recorder> Recorder for Tracking<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let inner = self.inner.register_counter(key, metadata);
        match counter_total(key) {
            Some(total) => Counter::from_arc(Arc::new(TeeCounter(inner, total))),
            None => inner,
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let inner = self.inner.register_gauge(key, metadata);
        match gauge_total(key) {
            Some(total) => Gauge::from_arc(Arc::new(TeeGauge(inner, total))),
            None => inner,
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_samples_are_folded_without_a_scrape() {
        install().expect("the recorder installs");
        let before = UPKEEPS.load(Ordering::Relaxed);
        metrics::histogram!(HTTP_REQUEST_DURATION, "endpoint" => "manifest").record(0.001);
        let deadline = std::time::Instant::now() + 10 * UPKEEP_EVERY;
        while UPKEEPS.load(Ordering::Relaxed) == before {
            assert!(std::time::Instant::now() < deadline, "no upkeep ran");
            std::thread::sleep(UPKEEP_EVERY / 10);
        }
    }

    #[test]
    fn total_in_texts_sum_every_series_of_exactly_that_name() {
        let text = "# TYPE a counter\na{x=\"1\"} 2\na{x=\"}\"} 3\na_b 10\na 1\nab{y=\"z\"} 7\n";
        assert_eq!(total_in_text(text, "a"), Some(6.0));
        assert_eq!(total_in_text(text, "a_b"), Some(10.0));
        assert_eq!(total_in_text(text, "c"), None);
        assert_eq!(total_in_text_where(text, "a", "x=\"1\""), Some(2.0));
    }

    #[test]
    fn names_are_unique_and_prometheus_shaped() {
        let mut seen = std::collections::BTreeSet::new();
        for f in FAMILIES {
            assert!(seen.insert(f.name), "{} twice", f.name);
            assert!(f.name.starts_with("ocimirror_"), "{}", f.name);
            assert!(
                f.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                f.name
            );
            // Prometheus's conventions: counters end in `_total`, nothing else does.
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(!f.help.is_empty() && f.help.ends_with('.'), "{}", f.name);
        }
        assert_eq!(family(CACHE_HITS).map(|f| f.labels), Some(&["kind"][..]));
    }

    /// The totals follow the series they tee, and only those: a manifest hit is not a blob hit.
    #[test]
    fn tracked_series_add_to_the_totals() {
        let key = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            let labels: Vec<metrics::Label> = labels
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, *v))
                .collect();
            Key::from_parts(name, labels)
        };
        let hits = counter_total(&key(CACHE_HITS, &[("kind", "blob")])).unwrap();
        assert!(counter_total(&key(CACHE_HITS, &[("kind", "manifest")])).is_none());
        assert!(counter_total(&key(FILLS_STARTED, &[])).is_none());
        let before = hits.load(Ordering::Relaxed);
        let noop = Counter::noop();
        TeeCounter(noop, hits).increment(3);
        assert_eq!(hits.load(Ordering::Relaxed), before + 3);

        let g = AtomicF64::new(f64::NAN);
        let g: &'static AtomicF64 = Box::leak(Box::new(g));
        let tee = TeeGauge(Gauge::noop(), g);
        tee.increment(2.0);
        tee.decrement(1.0);
        assert_eq!(g.get(), 1.0);
        tee.set(7.0);
        assert_eq!(g.get(), 7.0);
    }
}
