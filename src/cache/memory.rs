//! In-process descriptor cache, bounded by entry count. The default for a single replica.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{DescriptorCache, ManifestEntry, TagEntry, VerdictEntry};
use crate::oci::Digest;

pub struct MemoryCache {
    max_entries: usize,
    tags: Mutex<HashMap<(String, String), TagEntry>>,
    manifests: Mutex<HashMap<Digest, ManifestEntry>>,
    verdicts: Mutex<HashMap<(String, Digest), VerdictEntry>>,
}

impl MemoryCache {
    pub fn new(max_entries: usize) -> Self {
        MemoryCache {
            max_entries: max_entries.max(1),
            tags: Mutex::new(HashMap::new()),
            manifests: Mutex::new(HashMap::new()),
            verdicts: Mutex::new(HashMap::new()),
        }
    }
}

/// Make room by dropping arbitrary entries: the cache is advisory (everything is in storage),
/// so a crude bound that keeps memory fixed beats LRU bookkeeping on every hit.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>, max: usize) {
    if map.len() >= max {
        let drop_n = (max / 10).max(1);
        let victims: Vec<K> = map.keys().take(drop_n).cloned().collect();
        for k in victims {
            map.remove(&k);
        }
    }
}

#[async_trait]
impl DescriptorCache for MemoryCache {
    async fn tag(&self, repo: &str, tag: &str) -> Option<TagEntry> {
        self.tags
            .lock()
            .expect("lock")
            .get(&(repo.to_owned(), tag.to_owned()))
            .cloned()
    }

    async fn set_tag(&self, repo: &str, tag: &str, entry: TagEntry) {
        let mut tags = self.tags.lock().expect("lock");
        let key = (repo.to_owned(), tag.to_owned());
        if !tags.contains_key(&key) {
            make_room(&mut tags, self.max_entries);
        }
        tags.insert(key, entry);
    }

    async fn manifest(&self, digest: &Digest) -> Option<ManifestEntry> {
        self.manifests.lock().expect("lock").get(digest).cloned()
    }

    async fn set_manifest(&self, digest: &Digest, entry: ManifestEntry) {
        let mut m = self.manifests.lock().expect("lock");
        if !m.contains_key(digest) {
            make_room(&mut m, self.max_entries);
        }
        m.insert(digest.clone(), entry);
    }

    async fn verdict(&self, rule: &str, digest: &Digest) -> Option<VerdictEntry> {
        self.verdicts
            .lock()
            .expect("lock")
            .get(&(rule.to_owned(), digest.clone()))
            .cloned()
    }

    async fn set_verdict(&self, rule: &str, digest: &Digest, entry: VerdictEntry) {
        let mut v = self.verdicts.lock().expect("lock");
        let key = (rule.to_owned(), digest.clone());
        if !v.contains_key(&key) {
            make_room(&mut v, self.max_entries);
        }
        v.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn behaviour_suite() {
        super::super::suite::run(&MemoryCache::new(1000)).await;
    }

    #[tokio::test]
    async fn stays_bounded() {
        let c = MemoryCache::new(10);
        for i in 0..100u32 {
            c.set_manifest(
                &Digest::sha256_of(&i.to_be_bytes()),
                ManifestEntry {
                    media_type: "x".into(),
                    size: 1,
                },
            )
            .await;
        }
        assert!(c.manifests.lock().unwrap().len() <= 10);
    }
}
