//! The sizes manifests declare for their blobs, so that a fill cannot take more than that.
//!
//! A client pulls a manifest before its layers, so each manifest this replica serves (from
//! storage, the memory of bodies, or the upstream) has its config and layer sizes noted here,
//! per repository: a fill of a blob under a repository one of whose manifests declared it is
//! held to the declared size (the largest, when its manifests disagree), refused before any byte
//! when the upstream announces more and cut off when it sends more; nothing is kept. Kept per
//! repository because a manifest is only a claim about the repository it came from: another
//! repository's manifest declaring a wrong size must not break this one's fills.
//!
//! Process memory, bounded in entries and dropped whole when full: a size not found (a blob
//! asked for without its manifest, after a restart, or on another replica of a fleet than the
//! one that served the manifest) only leaves the fill to `upstream.max_blob_size`. The
//! descriptor cache was the alternative (shared by a fleet), but it would cost a write per layer
//! of every manifest fetched and a read per blob miss, for a bound the other replicas' own
//! `max_blob_size` already covers.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::oci::{Digest, RepoName};

/// Entries kept (a repository and a digest each, about 150 bytes): a few MiB at most.
pub const MAX_ENTRIES: usize = 50_000;

#[derive(Default)]
struct Inner {
    /// (repository, blob) → the largest size a manifest of the repository declared for it.
    sizes: HashMap<(RepoName, Digest), u64>,
    /// Manifests whose sizes are noted already, so a manifest served again costs a lookup.
    noted: HashSet<(RepoName, Digest)>,
}

pub struct DeclaredSizes {
    max_entries: usize,
    inner: Mutex<Inner>,
}

impl Default for DeclaredSizes {
    fn default() -> Self {
        DeclaredSizes::new(MAX_ENTRIES)
    }
}

impl DeclaredSizes {
    pub fn new(max_entries: usize) -> Self {
        DeclaredSizes {
            max_entries,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Note the blob sizes the manifest `manifest` (served under `repo`, whose body is `body`)
    /// declares.
    pub fn note(&self, repo: &RepoName, manifest: &Digest, body: &[u8]) {
        let key = (repo.clone(), manifest.clone());
        if self.inner.lock().expect("lock").noted.contains(&key) {
            return;
        }
        // Parsed outside the lock: a manifest may list a thousand layers.
        let declared = crate::oci::manifest::declared_blob_sizes(body);
        let mut g = self.inner.lock().expect("lock");
        if g.sizes.len() + g.noted.len() + declared.len() + 1 > self.max_entries {
            g.sizes.clear();
            g.noted.clear();
        }
        for (d, size) in declared {
            let e = g.sizes.entry((repo.clone(), d)).or_insert(size);
            *e = (*e).max(size);
        }
        g.noted.insert(key);
    }

    /// The size a manifest of `repo` declared for `blob`, if one did.
    pub fn get(&self, repo: &RepoName, blob: &Digest) -> Option<u64> {
        let g = self.inner.lock().expect("lock");
        g.sizes.get(&(repo.clone(), blob.clone())).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layers: &[(&Digest, u64)]) -> Vec<u8> {
        let l: Vec<_> = layers
            .iter()
            .map(|(d, s)| serde_json::json!({"mediaType": "x", "digest": d.to_string(), "size": s}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": l})).unwrap()
    }

    #[test]
    fn sizes_are_kept_per_repository_and_the_largest_wins() {
        let s = DeclaredSizes::default();
        let (a, b) = (
            RepoName::parse("team/a").unwrap(),
            RepoName::parse("team/b").unwrap(),
        );
        let (l1, l2) = (Digest::sha256_of(b"l1"), Digest::sha256_of(b"l2"));
        s.note(
            &a,
            &Digest::sha256_of(b"m1"),
            &manifest(&[(&l1, 10), (&l2, 20)]),
        );
        assert_eq!(s.get(&a, &l1), Some(10));
        assert_eq!(
            s.get(&b, &l1),
            None,
            "another repository's claim binds nothing"
        );
        s.note(&a, &Digest::sha256_of(b"m2"), &manifest(&[(&l1, 30)]));
        s.note(&a, &Digest::sha256_of(b"m3"), &manifest(&[(&l1, 5)]));
        assert_eq!(s.get(&a, &l1), Some(30));
    }

    #[test]
    fn entries_are_bounded() {
        let s = DeclaredSizes::new(10);
        let a = RepoName::parse("team/a").unwrap();
        for i in 0..100u32 {
            let l = Digest::sha256_of(&i.to_le_bytes());
            s.note(
                &a,
                &Digest::sha256_of(format!("m{i}").as_bytes()),
                &manifest(&[(&l, 1)]),
            );
            let g = s.inner.lock().unwrap();
            assert!(g.sizes.len() + g.noted.len() <= 10);
        }
    }
}
