//! Referrers (the OCI referrers API): the upstream's index of what refers to a manifest, kept
//! like a tag — trusted for `tag_ttl`, served stale when the upstream fails.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::{Registry, RegistryError, unshare};
use crate::layout;
use crate::oci::{Digest, RepoName};
use crate::upstream::UpstreamError;

impl Registry {
    /// The referrers of `digest` as an OCI image index, filtered by `artifact_type`. Fetched
    /// from the upstream (its referrers API, or the tag schema) and kept like a tag: trusted
    /// for `tag_ttl`, served stale when the upstream fails, served from storage offline. An
    /// upstream that knows of none gives the empty index.
    pub async fn referrers(
        self: &Arc<Self>,
        name: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Bytes, RegistryError> {
        let repo = self.upstream.canonical_name(name);
        let key = layout::referrers(&repo, digest);
        let stored = match self.storage.stat(&key).await? {
            Some(meta) => match self.storage.read(&key).await {
                Ok(b) => Some((b, meta.modified)),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let fresh = stored.as_ref().is_some_and(|(_, at)| {
            self.settings.offline
                || at
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age < self.tag_ttl(&repo))
        });
        let index = match stored {
            Some((b, _)) if fresh => b,
            _ if self.settings.offline => empty_index(),
            stored => {
                let this = self.clone();
                let (repo2, d2, key2) = (repo.clone(), digest.clone(), key.clone());
                let (r, _) = self
                    .referrer_fetches
                    .run((repo.clone(), digest.clone()), async move {
                        this.fetch_referrers(&repo2, &d2, &key2)
                            .await
                            .map_err(Arc::new)
                    })
                    .await;
                match (r, stored) {
                    (Ok(b), _) => b,
                    (Err(e), Some((b, _))) if matches!(&*e, RegistryError::Upstream(_)) => {
                        metrics::counter!(crate::metrics::STALE_SERVED).increment(1);
                        tracing::warn!(name = %repo, digest = %digest, error = %e, "upstream failed; serving cached referrers");
                        b
                    }
                    (Err(e), _) => return Err(unshare(e)),
                }
            }
        };
        match artifact_type {
            None => Ok(index),
            Some(t) => filter_index(&index, t),
        }
    }

    async fn fetch_referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        key: &str,
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
        if !self.settings.read_only {
            // Its modification time is when it was fetched.
            self.write_bounded(key, body.clone()).await;
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
