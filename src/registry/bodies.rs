//! Manifest bodies kept in process memory, bounded in bytes. Manifests are immutable by digest
//! and small; keeping the hot ones here spares a storage read per tag request, which on S3 is
//! a network round trip.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Manifest;
use crate::oci::Digest;

pub struct ManifestBodies {
    max_bytes: usize,
    inner: Mutex<(HashMap<Digest, Manifest>, usize)>,
}

impl ManifestBodies {
    pub fn new(max_bytes: usize) -> Self {
        ManifestBodies {
            max_bytes,
            inner: Mutex::new((HashMap::new(), 0)),
        }
    }

    pub fn get(&self, d: &Digest) -> Option<Manifest> {
        self.inner.lock().expect("lock").0.get(d).cloned()
    }

    pub fn put(&self, m: &Manifest) {
        let size = m.body.len();
        if size > self.max_bytes / 4 {
            return;
        }
        let mut guard = self.inner.lock().expect("lock");
        let (map, used) = &mut *guard;
        if map.contains_key(&m.digest) {
            return;
        }
        // Arbitrary eviction: everything here is also in storage, so a crude bound that keeps
        // memory fixed beats bookkeeping on every hit.
        while *used + size > self.max_bytes {
            let Some(k) = map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = map.remove(&k) {
                *used -= old.body.len();
            }
        }
        *used += size;
        map.insert(m.digest.clone(), m.clone());
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
        assert_eq!(c.get(&last.digest).unwrap().body, last.body);
        // Too big for the budget: not kept.
        let big = m(200, 600);
        c.put(&big);
        assert!(c.get(&big.digest).is_none());
    }
}
