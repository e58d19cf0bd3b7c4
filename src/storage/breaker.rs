//! A circuit breaker around the storage: after `failures` consecutive failed operations
//! (timeouts, connection errors, 5xx; a missing key is an answer) the circuit opens and every
//! operation fails at once with [`StorageError::Unavailable`] instead of waiting out the
//! backend's own retries. An operation that has not answered within `timeout` fails and counts
//! too, so a hung store (a stopped process, a black-holed network) is noticed in seconds rather
//! than after the backend's own limits. After `open_for`, one operation is let through as a probe
//! (half-open): its success closes the circuit, its failure opens it again. While the read
//! circuit is open the registry passes misses through from the upstream without committing them
//! ([`Storage::reads_refused`]).
//!
//! Reads (stat, read, ranges, listing) and writes (put, writers, delete) have a circuit each, so
//! a store that still reads but refuses writes (a full disk, a bucket quota, a read-only mount)
//! keeps serving what it holds while new content passes through uncommitted.
//!
//! The state is per replica (each process judges its own path to the store), reported in
//! `ocimirror_storage_breaker_state{circuit}` (0 closed, 1 half-open, 2 open), with transitions
//! counted, and on `/readyz` and the status page through [`crate::status`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{ByteStream, ObjectMeta, ObjectWriter, Storage, StorageError};

/// `storage.breaker` as written: when to stop waiting on the store, and how long before trying
/// it again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Off: every operation waits on the store, however long it takes to fail.
    pub enabled: bool,
    /// Consecutive failed operations that open the circuit.
    pub failures: u32,
    /// How long an open circuit fails operations at once before a probe tries the store (`10s`).
    pub open_for: String,
    /// How long one operation (a look-up, a small read or write, opening a stream, one streamed
    /// write) may take before it fails and counts as a failure (`10s`).
    pub timeout: String,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failures: 5,
            open_for: "10s".into(),
            timeout: "10s".into(),
        }
    }
}

/// The checked section: `None` when the breaker is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub failures: u32,
    pub open_for: Duration,
    pub timeout: Duration,
}

impl BreakerConfig {
    /// The policy, or every problem keyed within this section.
    pub fn check(&self) -> Result<Option<BreakerPolicy>, Vec<(String, String)>> {
        let mut problems = Vec::new();
        if self.failures == 0 {
            problems.push((
                "failures".into(),
                "must be at least 1 (set enabled: false to turn the breaker off)".into(),
            ));
        }
        // `zero` says what a zero duration would do.
        let mut duration =
            |key: &str, value: &str, zero: &str| match humantime::parse_duration(value.trim()) {
                Ok(d) => {
                    if d.is_zero() {
                        problems.push((key.into(), format!("must be longer than 0s: {zero}")));
                    }
                    d
                }
                Err(e) => {
                    problems.push((
                        key.into(),
                        format!("{value:?} is not a duration like 10s or 1m: {e}"),
                    ));
                    Duration::ZERO
                }
            };
        let open_for = duration(
            "open_for",
            &self.open_for,
            "an open circuit would probe on every request",
        );
        let timeout = duration("timeout", &self.timeout, "every operation would fail");
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(self.enabled.then_some(BreakerPolicy {
            failures: self.failures,
            open_for,
            timeout,
        }))
    }
}

/// A circuit's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half-open",
            CircuitState::Open => "open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight; if it has not reported by `until` (its request was dropped),
    /// another is let through.
    HalfOpen {
        until: Instant,
    },
}

/// Whether an operation was let through as the half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    Probe,
}

/// One circuit (reads or writes).
#[derive(Debug)]
pub struct Circuit {
    name: &'static str,
    failures: u32,
    open_for: Duration,
    timeout: Duration,
    state: Mutex<State>,
}

impl Circuit {
    fn new(name: &'static str, c: &BreakerPolicy) -> Circuit {
        let circuit = Circuit {
            name,
            failures: c.failures.max(1),
            open_for: c.open_for,
            timeout: c.timeout,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        circuit.publish(CircuitState::Closed);
        circuit
    }

    pub fn state(&self) -> CircuitState {
        match *self.state.lock().expect("breaker lock") {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn admit(&self, key: &str) -> Result<Admission, StorageError> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("breaker lock");
        match *state {
            State::Closed { .. } => Ok(Admission::Normal),
            State::Open { until } | State::HalfOpen { until } if now < until => {
                metrics::counter!(crate::metrics::STORAGE_BREAKER_REFUSED, "circuit" => self.name)
                    .increment(1);
                Err(StorageError::Unavailable(format!(
                    "{key}: the storage {} circuit is open after repeated failures; not waiting on the store",
                    self.name
                )))
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen {
                    until: now + self.open_for,
                };
                drop(state);
                self.transition(CircuitState::HalfOpen);
                Ok(Admission::Probe)
            }
        }
    }

    /// The outcome of an admitted operation. An error that is an answer (not found, a bad
    /// key) counts as the store working.
    fn record<T>(&self, admission: Admission, r: &Result<T, StorageError>) {
        let failed = matches!(r, Err(StorageError::Io { .. }));
        let mut state = self.state.lock().expect("breaker lock");
        let next = match (&mut *state, failed) {
            (State::Closed { failures }, false) => {
                *failures = 0;
                None
            }
            (State::Closed { failures }, true) => {
                *failures += 1;
                (*failures >= self.failures).then_some(CircuitState::Open)
            }
            // Only the probe's own outcome decides a half-open circuit; a late answer of an
            // operation admitted before the circuit opened says nothing new.
            (State::HalfOpen { .. }, false) if admission == Admission::Probe => {
                Some(CircuitState::Closed)
            }
            (State::HalfOpen { .. }, true) if admission == Admission::Probe => {
                Some(CircuitState::Open)
            }
            _ => None,
        };
        match next {
            Some(CircuitState::Open) => {
                *state = State::Open {
                    until: Instant::now() + self.open_for,
                }
            }
            Some(CircuitState::Closed) => *state = State::Closed { failures: 0 },
            _ => {}
        }
        drop(state);
        if let Some(s) = next {
            self.transition(s);
        }
    }

    fn transition(&self, to: CircuitState) {
        // The one log line of a degraded period (requests are only counted).
        let (down, up) = if self.name == "read" {
            (
                "; misses are passed through from the upstream, uncommitted",
                "; fills are committed again",
            )
        } else {
            ("; new content is passed through, uncommitted", "")
        };
        match to {
            CircuitState::Open => tracing::warn!(
                circuit = self.name,
                open_for = ?self.open_for,
                "storage circuit open: {} consecutive failures; not waiting on the store until a probe succeeds{down}",
                self.failures
            ),
            CircuitState::Closed => {
                tracing::info!(
                    circuit = self.name,
                    "storage circuit closed: the store answers again{up}"
                )
            }
            CircuitState::HalfOpen => {
                tracing::debug!(circuit = self.name, "storage circuit half-open: probing")
            }
        }
        metrics::counter!(crate::metrics::STORAGE_BREAKER_TRANSITIONS, "circuit" => self.name, "to" => to.as_str())
            .increment(1);
        self.publish(to);
    }

    fn publish(&self, s: CircuitState) {
        metrics::gauge!(crate::metrics::STORAGE_BREAKER_STATE, "circuit" => self.name)
            .set(s.gauge());
        crate::status::storage_circuit(self.name, s.as_str());
    }
}

/// The decorator: the wrapped storage behind a read and a write circuit.
pub struct Breaker {
    inner: Arc<dyn Storage>,
    reads: Arc<Circuit>,
    writes: Arc<Circuit>,
}

impl Breaker {
    pub fn new(inner: Arc<dyn Storage>, config: &BreakerPolicy) -> Breaker {
        Breaker {
            inner,
            reads: Arc::new(Circuit::new("read", config)),
            writes: Arc::new(Circuit::new("write", config)),
        }
    }

    pub fn reads(&self) -> CircuitState {
        self.reads.state()
    }

    pub fn writes(&self) -> CircuitState {
        self.writes.state()
    }
}

/// `op` within `limit`: one that has not answered by then fails as timed out.
async fn within<T>(
    limit: Duration,
    key: &str,
    op: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    tokio::time::timeout(limit, op).await.unwrap_or_else(|_| {
        Err(StorageError::Io {
            key: key.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {limit:?} (storage.breaker.timeout)"),
            ),
        })
    })
}

async fn guarded<T>(
    circuit: &Circuit,
    key: &str,
    op: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let admission = circuit.admit(key)?;
    let r = within(circuit.timeout, key, op).await;
    circuit.record(admission, &r);
    r
}

#[async_trait]
impl Storage for Breaker {
    fn reads_refused(&self) -> bool {
        self.reads.state() != CircuitState::Closed
    }
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        guarded(&self.reads, key, self.inner.stat(key)).await
    }
    async fn read(&self, key: &str) -> Result<Bytes, StorageError> {
        guarded(&self.reads, key, self.inner.read(key)).await
    }
    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let s = guarded(&self.reads, key, self.inner.read_range(key, offset, len)).await?;
        // A store that dies mid-stream counts too.
        let reads = self.reads.clone();
        Ok(s.map(move |r| {
            if r.is_err() {
                reads.record(Admission::Normal, &r);
            }
            r
        })
        .boxed())
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        guarded(&self.writes, key, self.inner.put(key, data)).await
    }
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let admission = self.writes.admit(key)?;
        let r = within(self.writes.timeout, key, self.inner.writer(key)).await;
        // Opening a writer says little of a store that then refuses its bytes (a full disk
        // still creates the file): only its writes and its commit count as the store working,
        // or a full disk would reset the count with every fill and never open the circuit.
        if r.is_err() {
            self.writes.record(admission, &r);
        }
        Ok(Box::new(GuardedWriter {
            inner: r?,
            writes: self.writes.clone(),
            admission,
        }))
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        guarded(&self.writes, key, self.inner.delete(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        guarded(&self.reads, prefix, self.inner.list(prefix)).await
    }
    async fn remove_abandoned(&self, age: Duration) -> Result<usize, StorageError> {
        // A pass over every upload may take long: only the backend's own limits apply.
        let key = "abandoned uploads";
        let admission = self.writes.admit(key)?;
        let r = self.inner.remove_abandoned(age).await;
        self.writes.record(admission, &r);
        r
    }
    /// Not guarded: signing is local, and a failure to sign says nothing of the store's health.
    async fn presign_read(
        &self,
        key: &str,
        expiry: Duration,
    ) -> Result<Option<String>, StorageError> {
        self.inner.presign_read(key, expiry).await
    }
    /// Not guarded: only a path; the open that follows fails on its own, and the stat before it
    /// went through the read circuit.
    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_path(key)
    }
}

struct GuardedWriter {
    inner: Box<dyn ObjectWriter>,
    writes: Arc<Circuit>,
    /// A probe's writer decides the half-open circuit by its outcome.
    admission: Admission,
}

#[async_trait]
impl ObjectWriter for GuardedWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        // Opened before the circuit opened: stop at once rather than wait on the store.
        if self.admission == Admission::Normal && self.writes.state() != CircuitState::Closed {
            metrics::counter!(crate::metrics::STORAGE_BREAKER_REFUSED, "circuit" => self.writes.name)
                .increment(1);
            return Err(StorageError::Unavailable(
                "the storage write circuit opened during this write".into(),
            ));
        }
        let r = within(
            self.writes.timeout,
            "streamed write",
            self.inner.write(chunk),
        )
        .await;
        if r.is_err() {
            self.writes.record(self.admission, &r);
        }
        r
    }
    fn local_file(&self) -> Option<std::fs::File> {
        self.inner.local_file()
    }
    /// Not timed: the client has every byte by now, and a big commit (an fsync, a multipart
    /// completion) may take long on a healthy store.
    async fn commit(self: Box<Self>) -> Result<(), StorageError> {
        let GuardedWriter {
            inner,
            writes,
            admission,
        } = *self;
        let r = inner.commit().await;
        writes.record(admission, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::storage::faulty::Faulty;

    fn config(open_for: Duration) -> BreakerPolicy {
        BreakerPolicy {
            failures: 3,
            open_for,
            timeout: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_then_fails_without_asking_the_store() {
        let store = Faulty::default();
        let b = Breaker::new(Arc::new(store.clone()), &config(Duration::from_secs(3600)));
        store.reads_fail.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(matches!(b.stat("k").await, Err(StorageError::Io { .. })));
        }
        assert_eq!(b.reads(), CircuitState::Open);
        let before = store.calls.load(Ordering::SeqCst);
        for _ in 0..10 {
            let e = b.read("k").await.unwrap_err();
            assert!(matches!(e, StorageError::Unavailable(_)), "{e}");
            assert!(e.to_string().contains("circuit is open"), "{e}");
        }
        assert_eq!(
            store.calls.load(Ordering::SeqCst),
            before,
            "the store was asked"
        );
        // Writes have their own circuit.
        assert_eq!(b.writes(), CircuitState::Closed);
        b.put("k", Bytes::from_static(b"x")).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_key_or_a_success_resets_the_count() {
        let store = Faulty::default();
        let b = Breaker::new(Arc::new(store.clone()), &config(Duration::from_secs(3600)));
        for _ in 0..5 {
            store.reads_fail.store(true, Ordering::SeqCst);
            b.stat("k").await.unwrap_err();
            b.stat("k").await.unwrap_err();
            store.reads_fail.store(false, Ordering::SeqCst);
            assert!(b.read("absent").await.unwrap_err().is_not_found());
        }
        assert_eq!(b.reads(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn one_probe_after_open_for_closes_or_reopens() {
        let store = Faulty::default();
        let b = Breaker::new(Arc::new(store.clone()), &config(Duration::from_millis(50)));
        store.reads_fail.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            b.stat("k").await.unwrap_err();
        }
        assert_eq!(b.reads(), CircuitState::Open);
        tokio::time::sleep(Duration::from_millis(60)).await;
        // The probe fails: open again, and the store is not asked meanwhile.
        assert!(matches!(b.stat("k").await, Err(StorageError::Io { .. })));
        assert_eq!(b.reads(), CircuitState::Open);
        let before = store.calls.load(Ordering::SeqCst);
        assert!(matches!(
            b.stat("k").await,
            Err(StorageError::Unavailable(_))
        ));
        assert_eq!(store.calls.load(Ordering::SeqCst), before);
        // The store is back: the next probe closes the circuit.
        store.reads_fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(b.stat("k").await.unwrap(), None);
        assert_eq!(b.reads(), CircuitState::Closed);
        assert_eq!(b.stat("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn failing_writes_leave_reads_served() {
        let store = Faulty::default();
        let b = Breaker::new(Arc::new(store.clone()), &config(Duration::from_secs(3600)));
        b.put("held", Bytes::from_static(b"bytes")).await.unwrap();
        store.writes_fail.store(true, Ordering::SeqCst);
        for i in 0..3 {
            b.put(&format!("new{i}"), Bytes::from_static(b"x"))
                .await
                .unwrap_err();
        }
        assert_eq!(b.writes(), CircuitState::Open);
        assert!(matches!(
            b.writer("new").await.err(),
            Some(StorageError::Unavailable(_))
        ));
        assert_eq!(b.reads(), CircuitState::Closed);
        assert_eq!(b.read("held").await.unwrap().as_ref(), b"bytes");
    }

    #[tokio::test]
    async fn a_hung_store_times_out_counts_and_opens_the_circuit() {
        let store = Faulty::default();
        let policy = BreakerPolicy {
            timeout: Duration::from_millis(20),
            ..config(Duration::from_secs(3600))
        };
        let b = Breaker::new(Arc::new(store.clone()), &policy);
        store.reads_hang.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let e = b.stat("k").await.unwrap_err();
            assert!(e.to_string().contains("storage.breaker.timeout"), "{e}");
        }
        assert_eq!(b.reads(), CircuitState::Open);
        assert!(b.reads_refused());
        assert!(matches!(
            b.stat("k").await,
            Err(StorageError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_probe_writer_is_judged_by_its_writes_not_by_opening() {
        let store = Faulty::default();
        let b = Breaker::new(Arc::new(store.clone()), &config(Duration::from_millis(50)));
        // A full disk: writers open, their bytes are refused.
        store.chunks_fail.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let mut w = b.writer("blob").await.unwrap();
            w.write(Bytes::from_static(b"x")).await.unwrap_err();
        }
        assert_eq!(b.writes(), CircuitState::Open);
        assert!(
            !b.reads_refused(),
            "reads are not refused for failing writes"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut probe = b.writer("blob").await.unwrap();
        assert_eq!(
            b.writes(),
            CircuitState::HalfOpen,
            "opening decided nothing"
        );
        probe.write(Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!(b.writes(), CircuitState::Open);
        // The disk has room again: the next probe's commit closes the circuit.
        store.chunks_fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut probe = b.writer("blob").await.unwrap();
        probe.write(Bytes::from_static(b"x")).await.unwrap();
        probe.commit().await.unwrap();
        assert_eq!(b.writes(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn a_writer_opened_before_the_circuit_opened_stops_at_once() {
        let store = Faulty::default();
        let b = Breaker::new(Arc::new(store.clone()), &config(Duration::from_secs(3600)));
        let mut w = b.writer("blob").await.unwrap();
        w.write(Bytes::from_static(b"x")).await.unwrap();
        store.writes_fail.store(true, Ordering::SeqCst);
        for i in 0..3 {
            b.put(&format!("k{i}"), Bytes::from_static(b"x"))
                .await
                .unwrap_err();
        }
        assert_eq!(b.writes(), CircuitState::Open);
        assert!(matches!(
            w.write(Bytes::from_static(b"y")).await,
            Err(StorageError::Unavailable(_))
        ));
    }

    #[test]
    fn config_refuses_what_cannot_work() {
        let bad = BreakerConfig {
            enabled: true,
            failures: 0,
            open_for: "0s".into(),
            timeout: "0s".into(),
        };
        let keys: Vec<_> = bad
            .check()
            .unwrap_err()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["failures", "open_for", "timeout"]);
        let unreadable = BreakerConfig {
            open_for: "soon".into(),
            ..BreakerConfig::default()
        };
        let e = unreadable.check().unwrap_err();
        assert!(e[0].1.contains("not a duration"), "{e:?}");
        assert_eq!(
            BreakerConfig::default().check().unwrap(),
            Some(BreakerPolicy {
                failures: 5,
                open_for: Duration::from_secs(10),
                timeout: Duration::from_secs(10),
            })
        );
        let off = BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        };
        assert_eq!(off.check().unwrap(), None);
    }
}
