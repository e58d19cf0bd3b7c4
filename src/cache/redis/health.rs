//! Failure bookkeeping of the Redis cache: what kind of failure an error is, the back-off
//! window after one, the log rate limit and the error count.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError};

/// How long the cache leaves Redis alone after a connection failure or a timeout.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per kind of failure in this period; the others are counted in the next.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    GetTag,
    SetTag,
    GetManifest,
    SetManifest,
    GetVerdict,
    SetVerdict,
    AcquireLease,
    RenewLease,
    ReleaseLease,
}

impl Op {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Op::GetTag => "get_tag",
            Op::SetTag => "set_tag",
            Op::GetManifest => "get_manifest",
            Op::SetManifest => "set_manifest",
            Op::GetVerdict => "get_verdict",
            Op::SetVerdict => "set_verdict",
            Op::AcquireLease => "acquire_lease",
            Op::RenewLease => "renew_lease",
            Op::ReleaseLease => "release_lease",
        }
    }
}

/// Why an operation did not reach Redis or got no usable answer.
#[derive(Debug)]
pub(super) enum Fault {
    /// Skipped: Redis failed moments ago (see [`BACKOFF`]).
    BackingOff,
    Timeout,
    Connection(RedisError),
    Auth(RedisError),
    /// Redis answered with an error (out of memory, read-only replica, …).
    Reply(RedisError),
    /// A stored value that this version cannot read.
    Decode(String),
}

/// Kinds of failure for the log rate limit.
const KINDS: usize = 5;

impl Fault {
    pub(super) fn classify(e: RedisError) -> Fault {
        if e.kind() == ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        {
            Fault::Auth(e)
        } else if e.is_timeout() {
            Fault::Timeout
        } else if e.is_io_error() {
            Fault::Connection(e)
        } else {
            Fault::Reply(e)
        }
    }

    /// Index for the log rate limit; `None`: not logged (a consequence of a logged failure).
    pub(super) fn kind(&self) -> Option<usize> {
        match self {
            Fault::BackingOff => None,
            Fault::Timeout => Some(0),
            Fault::Connection(_) => Some(1),
            Fault::Auth(_) => Some(2),
            Fault::Reply(_) => Some(3),
            Fault::Decode(_) => Some(4),
        }
    }

    /// Whether the connection must be made anew (and, under Sentinel, the master looked up
    /// again): a refused login (a rotated secret), or, when `follows_master`, a master that is
    /// gone or has become a replica (a failover).
    pub(super) fn needs_new_link(&self, follows_master: bool) -> bool {
        match self {
            Fault::Auth(_) => true,
            Fault::Timeout | Fault::Connection(_) => follows_master,
            Fault::Reply(e) => follows_master && e.code() == Some("READONLY"),
            Fault::BackingOff | Fault::Decode(_) => false,
        }
    }

    /// Whether Redis looks unreachable, so that asking again right away is pointless.
    pub(super) fn backs_off(&self) -> bool {
        matches!(self, Fault::Timeout | Fault::Connection(_) | Fault::Auth(_))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::BackingOff => f.write_str("skipped while Redis is failing"),
            Fault::Timeout => f.write_str("timed out"),
            Fault::Connection(e) | Fault::Auth(e) | Fault::Reply(e) => write!(f, "{e}"),
            Fault::Decode(m) => write!(f, "undecodable value: {m}"),
        }
    }
}

/// Failure bookkeeping: the back-off window, the log rate limit, the error count.
pub(super) struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not asked; 0: ask.
    backoff_until: AtomicU64,
    /// Per kind: milliseconds since `epoch` of the last log line, plus one; 0: never.
    last_log: [AtomicU64; KINDS],
    suppressed: [AtomicU64; KINDS],
    pub(super) errors: AtomicU64,
    failing: AtomicBool,
    /// Milliseconds since `epoch` of the last client rebuild, plus one; 0: never.
    last_rebuild: AtomicU64,
}

impl Health {
    pub(super) fn new() -> Self {
        Health {
            epoch: Instant::now(),
            backoff_until: AtomicU64::new(0),
            last_log: Default::default(),
            suppressed: Default::default(),
            errors: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            last_rebuild: AtomicU64::new(0),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn backing_off(&self) -> bool {
        self.now_ms() < self.backoff_until.load(Ordering::Relaxed)
    }

    pub(super) fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("redis cache: Redis answers again");
        }
    }

    pub(super) fn failed(&self, op: Op, fault: &Fault) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::CACHE_ERRORS, "backend" => "redis", "op" => op.as_str())
            .increment(1);
        let now = self.now_ms();
        if fault.backs_off() {
            self.failing.store(true, Ordering::Relaxed);
            self.backoff_until
                .store(now + BACKOFF.as_millis() as u64, Ordering::Relaxed);
        }
        let Some(kind) = fault.kind() else { return };
        if let Some(suppressed) = self.may_log(kind, now) {
            tracing::warn!(
                op = op.as_str(),
                error = %fault,
                suppressed,
                "redis cache: operation failed, read as a miss or write skipped (failures \
                 of one kind are logged at most every {}s; `suppressed`: those not logged)",
                LOG_EVERY.as_secs()
            );
        }
    }

    /// Whether a failure of `kind` at `now` may be logged; if so, how many were not since.
    pub(super) fn may_log(&self, kind: usize, now: u64) -> Option<u64> {
        let last = self.last_log[kind].load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + LOG_EVERY.as_millis() as u64;
        if due
            && self.last_log[kind]
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed[kind].swap(0, Ordering::Relaxed))
        } else {
            self.suppressed[kind].fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Whether a client rebuild is due (at most one per [`BACKOFF`]); claims it if so.
    pub(super) fn claim_rebuild(&self) -> bool {
        let now = self.now_ms() + 1;
        let last = self.last_rebuild.load(Ordering::Relaxed);
        (last == 0 || now >= last + BACKOFF.as_millis() as u64)
            && self
                .last_rebuild
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
