//! Manifest bodies kept in process memory, bounded in bytes. Manifests are immutable by digest
//! and small; keeping the hot ones here spares a storage read per tag request, which on S3 is
//! a network round trip. Each body remembers when it was last seen in storage: where expiry may
//! delete content, a body is trusted only for a while after that, so a manifest whose blobs are
//! gone is not served from memory. A body passed through while storage could not be written is
//! marked unstored, so that the first request served from it once storage works stores it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Manifest;
use crate::oci::Digest;

/// A body, when it was last seen in storage (or kept), and whether storage holds it.
struct Body {
    manifest: Manifest,
    seen: Instant,
    stored: bool,
}

/// Each body by digest; and the bytes held.
type Bodies = (HashMap<Digest, Body>, usize);

pub struct ManifestBodies {
    max_bytes: usize,
    inner: Mutex<Bodies>,
}

impl ManifestBodies {
    pub fn new(max_bytes: usize) -> Self {
        ManifestBodies {
            max_bytes,
            inner: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// The body of `d`, if seen in storage within `trust` (None: however long ago).
    pub fn get(&self, d: &Digest, trust: Option<Duration>) -> Option<Manifest> {
        let guard = self.inner.lock().expect("lock");
        let b = guard.0.get(d)?;
        match trust {
            Some(t) if b.seen.elapsed() >= t => None,
            _ => Some(b.manifest.clone()),
        }
    }

    /// Keep `m`, seen in storage now.
    pub fn put(&self, m: &Manifest) {
        self.keep(m, true);
    }

    /// Keep `m`, which storage does not hold (passed through, or read-only). A body known to
    /// be stored stays so.
    pub fn put_unstored(&self, m: &Manifest) {
        self.keep(m, false);
    }

    /// Whether `d` is kept unstored; if so it is marked stored, so that one caller stores it
    /// (and hands it back with [`ManifestBodies::store_failed`] if that fails).
    pub fn take_unstored(&self, d: &Digest) -> bool {
        let mut guard = self.inner.lock().expect("lock");
        match guard.0.get_mut(d) {
            Some(b) if !b.stored => {
                b.stored = true;
                true
            }
            _ => false,
        }
    }

    /// Storing `d`, taken with [`ManifestBodies::take_unstored`], failed: unstored again.
    pub fn store_failed(&self, d: &Digest) {
        let mut guard = self.inner.lock().expect("lock");
        if let Some(b) = guard.0.get_mut(d) {
            b.stored = false;
        }
    }

    fn keep(&self, m: &Manifest, stored: bool) {
        let size = m.body.len();
        if size > self.max_bytes / 4 {
            return;
        }
        let mut guard = self.inner.lock().expect("lock");
        let (map, used) = &mut *guard;
        if let Some(b) = map.get_mut(&m.digest) {
            b.seen = Instant::now();
            b.stored |= stored;
            return;
        }
        // Arbitrary eviction: everything here is also in storage or the upstream (an unstored
        // body evicted is fetched again, and stored, by its next request), so a crude bound
        // that keeps memory fixed beats bookkeeping on every hit.
        while *used + size > self.max_bytes {
            let Some(k) = map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = map.remove(&k) {
                *used -= old.manifest.body.len();
            }
        }
        *used += size;
        map.insert(
            m.digest.clone(),
            Body {
                manifest: m.clone(),
                seen: Instant::now(),
                stored,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn m(i: u8, len: usize) -> Manifest {
        let body = Bytes::from(vec![i; len]);
        Manifest {
            digest: Digest::sha256_of(&body),
            media_type: "x".into(),
            body,
        }
    }

    #[test]
    fn bounded_in_bytes() {
        let c = ManifestBodies::new(1000);
        for i in 0..50 {
            c.put(&m(i, 100));
            let used = c.inner.lock().unwrap().1;
            assert!(used <= 1000, "{used}");
        }
        let last = m(49, 100);
        assert_eq!(c.get(&last.digest, None).unwrap().body, last.body);
        // Too big for the budget: not kept.
        let big = m(200, 600);
        c.put(&big);
        assert!(c.get(&big.digest, None).is_none());
    }

    #[test]
    fn trusted_only_for_a_while_after_being_seen_in_storage() {
        let c = ManifestBodies::new(1000);
        let a = m(1, 10);
        c.put(&a);
        let short = Some(Duration::from_millis(50));
        assert!(c.get(&a.digest, short).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get(&a.digest, short).is_none(), "look at storage again");
        assert!(c.get(&a.digest, None).is_some());
        // Seen in storage again: trusted again.
        c.put(&a);
        assert!(c.get(&a.digest, short).is_some());
    }

    #[test]
    fn an_unstored_body_is_handed_out_for_storing_once() {
        let c = ManifestBodies::new(1000);
        let (a, b) = (m(1, 10), m(2, 10));
        c.put_unstored(&a);
        c.put(&b);
        // A stored body never becomes unstored.
        c.put_unstored(&b);
        assert!(!c.take_unstored(&b.digest));
        assert!(c.get(&a.digest, None).is_some(), "served while unstored");
        assert!(c.take_unstored(&a.digest));
        assert!(!c.take_unstored(&a.digest), "handed out twice");
        // Storing it failed: handed out again.
        c.store_failed(&a.digest);
        assert!(c.take_unstored(&a.digest));
        c.store_failed(&a.digest);
        // Read from storage meanwhile: stored.
        c.put(&a);
        assert!(!c.take_unstored(&a.digest));
        assert!(!c.take_unstored(&m(3, 10).digest));
    }
}
