//! Referrers (the OCI referrers API): the upstream's index of what refers to a manifest, kept
//! like a tag — trusted for `tag_ttl`, served stale when the upstream fails. Answers from a
//! fresh stored index are kept in memory per (repository, digest, `artifactType`), tied to the
//! stored copy's size and time, so a 4 MiB, 18,000-entry index is read and filtered once per
//! fetch rather than on every request; bounded by `cache.referrers.max_bytes` and
//! `cache.referrers.filters_per_index`. While storage cannot be read the index is passed
//! through from the upstream (one fetch for identical requests in flight, its size capped as
//! always) and stored nowhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use super::{OFFLINE, Registry, RegistryError, answered_while_down, miss_if_down, unshare};
use crate::layout;
use crate::oci::{Digest, RepoName};
use crate::storage::ObjectMeta;
use crate::upstream::UpstreamError;

/// Memory for kept answers by default; beyond it, all are dropped (they are rebuilt from
/// storage).
const ANSWERS_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Filters kept per index by default: a client cannot grow one entry without bound by varying
/// them.
const FILTERS_PER_INDEX: usize = 16;

/// One stored index's answers, by filter (None: unfiltered).
struct Kept {
    size: u64,
    modified: Option<SystemTime>,
    answers: HashMap<Option<String>, Bytes>,
}

type ByIndex = HashMap<(RepoName, Digest), Kept>;

/// Kept answers, and the bytes they hold.
pub(super) struct Answers {
    max_bytes: usize,
    filters: usize,
    inner: Mutex<(ByIndex, usize)>,
}

impl Default for Answers {
    fn default() -> Self {
        Answers::new(ANSWERS_MAX_BYTES, FILTERS_PER_INDEX)
    }
}

fn unkept(reason: &'static str) {
    metrics::counter!(crate::metrics::REFERRERS_UNKEPT, "reason" => reason).increment(1);
}

impl Answers {
    pub(super) fn new(max_bytes: usize, filters: usize) -> Self {
        Answers {
            max_bytes,
            filters,
            inner: Mutex::default(),
        }
    }

    fn get(
        &self,
        key: &(RepoName, Digest),
        meta: &ObjectMeta,
        filter: Option<&str>,
    ) -> Option<Bytes> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = g.0.get(key)?;
        if k.size != meta.size || k.modified != meta.modified || meta.modified.is_none() {
            return None;
        }
        k.answers.get(&filter.map(str::to_owned)).cloned()
    }

    fn put(&self, key: (RepoName, Digest), meta: &ObjectMeta, filter: Option<&str>, b: Bytes) {
        if meta.modified.is_none() {
            return;
        }
        if b.len() > self.max_bytes / 4 {
            unkept("large");
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, used) = &mut *g;
        if *used + b.len() > self.max_bytes {
            unkept("full");
            map.clear();
            *used = 0;
        }
        let k = map.entry(key).or_insert_with(|| Kept {
            size: meta.size,
            modified: meta.modified,
            answers: HashMap::new(),
        });
        if k.size != meta.size || k.modified != meta.modified {
            *used -= k.answers.values().map(Bytes::len).sum::<usize>();
            k.answers.clear();
            (k.size, k.modified) = (meta.size, meta.modified);
        }
        if k.answers.len() >= self.filters && !k.answers.contains_key(&filter.map(str::to_owned)) {
            unkept("filters");
            return;
        }
        *used += b.len();
        if let Some(old) = k.answers.insert(filter.map(str::to_owned), b) {
            *used -= old.len();
        }
    }
}

impl Registry {
    /// The referrers of `digest` as an OCI image index, filtered by `artifact_type`. Fetched
    /// from the upstream (its referrers API, or the tag schema) and kept like a tag: trusted
    /// for `tag_ttl`, served stale when the upstream fails, served from storage offline; passed
    /// through uncommitted when storage cannot be read. An upstream that knows of none gives the
    /// empty index.
    pub async fn referrers(
        self: &Arc<Self>,
        name: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Bytes, RegistryError> {
        let repo = self.upstream.canonical_name(name);
        let key = layout::referrers(&repo, digest);
        let mut down = false;
        let meta = miss_if_down(self.storage.stat(&key).await.map_err(Into::into), &mut down)?;
        let fresh = meta.as_ref().is_some_and(|m| {
            self.settings.offline
                || m.modified
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age < self.tag_ttl(&repo))
        });
        let answer_key = (repo.clone(), digest.clone());
        if fresh
            && let Some(m) = &meta
            && let Some(b) = self.referrer_answers.get(&answer_key, m, artifact_type)
        {
            return Ok(b);
        }
        let stored = match meta {
            Some(meta) => {
                let read = self.storage.read(&key).await;
                match read {
                    Ok(b) => Some((b, meta)),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => miss_if_down(Err(e.into()), &mut down)?,
                }
            }
            None => None,
        };
        let index = match stored {
            Some((b, meta)) if fresh => {
                let answer = match artifact_type {
                    None => b,
                    Some(t) => filter_index(&b, t)?,
                };
                self.referrer_answers
                    .put(answer_key, &meta, artifact_type, answer.clone());
                return Ok(answer);
            }
            // Nothing stored can be told from storage that cannot be read.
            _ if self.settings.offline && down => {
                return Err(RegistryError::StorageAndUpstreamDown(OFFLINE.into()));
            }
            _ if self.settings.offline => empty_index(),
            stored => {
                let r = self.shared_referrers_fetch(&repo, digest, !down).await;
                let r = match (r, stored) {
                    (Ok(b), _) => Ok(b),
                    (Err(e), Some((b, _))) if matches!(&*e, RegistryError::Upstream(_)) => {
                        metrics::counter!(crate::metrics::STALE_SERVED).increment(1);
                        tracing::warn!(name = %repo, digest = %digest, error = %e, "upstream failed; serving cached referrers");
                        Ok(b)
                    }
                    (Err(e), _) => Err(unshare(e)),
                };
                match down {
                    // Passed through from the upstream, stored nowhere.
                    true => answered_while_down("referrers", r)?,
                    false => r?,
                }
            }
        };
        match artifact_type {
            None => Ok(index),
            Some(t) => filter_index(&index, t),
        }
    }

    /// The upstream's referrers index of `digest`, one fetch for every caller asking at once
    /// (the first caller's `store` decides whether it is written to storage).
    async fn shared_referrers_fetch(
        self: &Arc<Self>,
        repo: &RepoName,
        digest: &Digest,
        store: bool,
    ) -> Result<Bytes, Arc<RegistryError>> {
        let this = self.clone();
        let (repo2, d2) = (repo.clone(), digest.clone());
        let shared = || {
            metrics::counter!(crate::metrics::UPSTREAM_SHARED, "op" => "referrers").increment(1);
        };
        let work = async move {
            this.fetch_referrers(&repo2, &d2, store)
                .await
                .map_err(Arc::new)
        };
        let (r, _) = self
            .referrer_fetches
            .run_noting((repo.clone(), digest.clone()), work, shared)
            .await;
        r
    }

    /// Fetch the index from the upstream, and store it when `store` (storage could be read).
    async fn fetch_referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        store: bool,
    ) -> Result<Bytes, RegistryError> {
        let body = match self.upstream.referrers(repo, digest).await {
            Ok(b) => b,
            Err(UpstreamError::NotFound) => empty_index(),
            Err(e) => return Err(RegistryError::Upstream(e)),
        };
        let parsed: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Upstream(UpstreamError::Invalid(format!("referrers index: {e}")))
        })?;
        if !parsed.get("manifests").is_some_and(|m| m.is_array()) {
            return Err(RegistryError::Upstream(UpstreamError::Invalid(
                "referrers index without a manifests list".into(),
            )));
        }
        // Storage down: served from the upstream alone until it is back, and not written, so
        // that no request waits on a store known to fail.
        if store && !self.settings.read_only && !self.storage.reads_refused() {
            // Its modification time is when it was fetched.
            self.write_bounded(&layout::referrers(repo, digest), body.clone())
                .await;
        }
        Ok(body)
    }
}

fn empty_index() -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::manifest::OCI_INDEX,
            "manifests": [],
        }))
        .expect("serialises"),
    )
}

/// Keep the descriptors of `index` whose `artifactType` is `t`.
fn filter_index(index: &[u8], t: &str) -> Result<Bytes, RegistryError> {
    let mut v: serde_json::Value = serde_json::from_slice(index)
        .map_err(|e| RegistryError::Internal(format!("stored referrers index: {e}")))?;
    if let Some(list) = v.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        list.retain(|d| d.get("artifactType").and_then(|a| a.as_str()) == Some(t));
    }
    Ok(Bytes::from(serde_json::to_vec(&v).expect("serialises")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(n: u8) -> (RepoName, Digest) {
        let hex = format!("{n:02x}").repeat(32);
        (
            RepoName::parse("myorg/app").unwrap(),
            Digest::parse(&format!("sha256:{hex}")).unwrap(),
        )
    }

    fn meta(size: u64, secs: u64) -> ObjectMeta {
        ObjectMeta {
            size,
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }

    #[test]
    fn answers_are_kept_per_filter_for_the_stored_copy_they_came_from() {
        let a = Answers::default();
        let m = meta(10, 1);
        a.put(key(1), &m, None, Bytes::from_static(b"all"));
        a.put(key(1), &m, Some("sig"), Bytes::from_static(b"sigs"));
        assert_eq!(a.get(&key(1), &m, None).as_deref(), Some(&b"all"[..]));
        assert_eq!(
            a.get(&key(1), &m, Some("sig")).as_deref(),
            Some(&b"sigs"[..])
        );
        assert_eq!(a.get(&key(1), &m, Some("sbom")), None);
        assert_eq!(a.get(&key(2), &m, None), None);
        // A new stored copy (refetched) is never answered from the old one.
        assert_eq!(a.get(&key(1), &meta(10, 2), None), None);
        assert_eq!(a.get(&key(1), &meta(11, 1), None), None);
        a.put(key(1), &meta(10, 2), None, Bytes::from_static(b"new"));
        assert_eq!(a.get(&key(1), &m, Some("sig")), None, "old answers dropped");
        assert_eq!(a.inner.lock().unwrap().1, 3);
        // Without a modification time nothing can be tied to a copy: nothing is kept.
        let timeless = ObjectMeta {
            size: 10,
            modified: None,
        };
        a.put(key(3), &timeless, None, Bytes::from_static(b"x"));
        assert_eq!(a.get(&key(3), &timeless, None), None);
    }

    #[test]
    fn answers_are_bounded() {
        let a = Answers::default();
        let m = meta(1, 1);
        for i in 0..100 {
            a.put(key(1), &m, Some(&format!("t{i}")), Bytes::from_static(b"x"));
        }
        assert_eq!(
            a.inner.lock().unwrap().0[&key(1)].answers.len(),
            FILTERS_PER_INDEX
        );
        let big = Bytes::from(vec![0u8; ANSWERS_MAX_BYTES / 4]);
        for i in 0..20 {
            a.put(key(i), &m, None, big.clone());
            assert!(a.inner.lock().unwrap().1 <= ANSWERS_MAX_BYTES);
        }
    }
}
