//! Manifest bodies kept in process memory, bounded in bytes. Manifests are immutable by digest
//! and small; keeping the hot ones here spares a storage read per tag request, which on S3 is
//! a network round trip. Each body remembers when it was last seen in storage: where expiry may
//! delete content, a body is trusted only for a while after that, so a manifest whose blobs are
//! gone is not served from memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Manifest;
use crate::oci::Digest;

/// Each body with when it was last seen in storage; and the bytes held.
type Bodies = (HashMap<Digest, (Manifest, Instant)>, usize);

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
        let (m, seen) = guard.0.get(d)?;
        match trust {
            Some(t) if seen.elapsed() >= t => None,
            _ => Some(m.clone()),
        }
    }

    pub fn put(&self, m: &Manifest) {
        let size = m.body.len();
        if size > self.max_bytes / 4 {
            return;
        }
        let mut guard = self.inner.lock().expect("lock");
        let (map, used) = &mut *guard;
        if let Some((_, seen)) = map.get_mut(&m.digest) {
            *seen = Instant::now();
            return;
        }
        // Arbitrary eviction: everything here is also in storage, so a crude bound that keeps
        // memory fixed beats bookkeeping on every hit.
        while *used + size > self.max_bytes {
            let Some(k) = map.keys().next().cloned() else {
                break;
            };
            if let Some((old, _)) = map.remove(&k) {
                *used -= old.body.len();
            }
        }
        *used += size;
        map.insert(m.digest.clone(), (m.clone(), Instant::now()));
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
}
