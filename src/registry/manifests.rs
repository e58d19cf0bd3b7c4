//! Manifests and the tags that name them: served from storage while fresh, revalidated with
//! the upstream (a HEAD, never a GET, when the digest is known), fetched by digest, verified and
//! stored byte for byte, with the repository's links written beside them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{
    Manifest, OFFLINE, Registry, RegistryError, answered_while_down, link_digest, miss_if_down,
    unshare,
};
use crate::cache::{ManifestEntry, TagEntry};
use crate::layout;
use crate::oci::{Digest, ManifestInfo, Reference, RepoName, Tag};
use crate::storage::StorageError;
use crate::upstream::UpstreamError;

impl Registry {
    pub async fn manifest(
        self: &Arc<Self>,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Manifest, RegistryError> {
        let repo = self.upstream.canonical_name(name);
        let m = match reference {
            Reference::Digest(d) => self.manifest_by_digest(&repo, d).await,
            Reference::Tag(t) => self.manifest_by_tag(&repo, t).await,
        }?;
        // Whatever path it came by (storage, revalidation, a fetch, stale), what is served
        // passes the signature policy.
        self.check_served(&repo, &m.digest, &m.body).await?;
        // Its layers' fills are held to the sizes it declares.
        self.declared.note(&repo, &m.digest, &m.body);
        if let Some(log) = &self.access {
            log.touch(&m.digest);
        }
        Ok(m)
    }

    /// The manifest `d` from storage, if this repository holds it.
    async fn stored_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        require_link: bool,
    ) -> Result<Option<Manifest>, RegistryError> {
        if require_link
            && self
                .storage
                .stat(&layout::revision_link(repo, d))
                .await?
                .is_none()
        {
            return Ok(None);
        }
        let trust = self.access.as_ref().map(|log| log.memory_trust());
        if let Some(m) = self.bodies.get(d, trust) {
            return Ok(Some(m));
        }
        let body = match self.storage.read(&layout::blob_data(d)).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let media_type = match self.cache.manifest(d).await {
            Some(m) => m.media_type,
            None => {
                let info = ManifestInfo::parse(&body, None)
                    .map_err(|e| RegistryError::ManifestInvalid(format!("stored {d}: {e}")))?;
                self.cache
                    .set_manifest(
                        d,
                        ManifestEntry {
                            media_type: info.media_type.clone(),
                            size: body.len() as u64,
                        },
                    )
                    .await;
                info.media_type
            }
        };
        let m = Manifest {
            digest: d.clone(),
            media_type,
            body,
        };
        self.bodies.put(&m);
        Ok(Some(m))
    }

    async fn manifest_by_digest(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Manifest, RegistryError> {
        let mut down = false;
        if let Some(m) = miss_if_down(self.stored_manifest(repo, d, true).await, &mut down)? {
            self.counts.manifest_hits.increment(1);
            return Ok(m);
        }
        if self.settings.offline {
            return Err(match down {
                true => RegistryError::StorageAndUpstreamDown(OFFLINE.into()),
                false => RegistryError::ManifestUnknown(format!("{d} is not cached (offline)")),
            });
        }
        let this = self.clone();
        let (repo2, d2) = (repo.clone(), d.clone());
        let key = (repo.clone(), Reference::Digest(d.clone()));
        let (r, _) = self
            .manifests
            .run(key, async move {
                this.fetch_manifest_by_digest(&repo2, &d2)
                    .await
                    .map_err(Arc::new)
            })
            .await;
        let r = r.map_err(unshare);
        if down {
            answered_while_down("manifest", r)
        } else {
            r
        }
    }

    async fn fetch_manifest_by_digest(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Manifest, RegistryError> {
        // Held elsewhere in storage (another repository): confirm with a HEAD, which Docker Hub
        // does not count as a pull, instead of downloading it again.
        let stored = self.storage.stat(&layout::blob_data(d)).await;
        if miss_if_down(stored.map_err(RegistryError::from), &mut false)?.is_some() {
            self.upstream
                .head_manifest(repo, &Reference::Digest(d.clone()))
                .await
                .map_err(|e| manifest_upstream_error(e, d))?;
            // Unreadable after all (deleted, or the store failed since): fetched like a miss.
            let held = miss_if_down(self.stored_manifest(repo, d, false).await, &mut false)?;
            if let Some(m) = held {
                self.check_before_store(repo, d, &m.body).await?;
                self.link_manifest(repo, &m).await;
                return Ok(m);
            }
        }
        self.fetch_and_store(repo, &Reference::Digest(d.clone()), Some(d), |e| {
            manifest_upstream_error(e, d)
        })
        .await
    }

    /// GET a manifest from the upstream, check it against the digest it must have (`expected`,
    /// else the one the upstream announced; without either, the body is the only way to learn
    /// it), then store and link it.
    async fn fetch_and_store(
        self: &Arc<Self>,
        repo: &RepoName,
        reference: &Reference,
        expected: Option<&Digest>,
        upstream_error: impl Fn(UpstreamError) -> RegistryError,
    ) -> Result<Manifest, RegistryError> {
        let fetched = self
            .upstream
            .get_manifest(repo, reference)
            .await
            .map_err(upstream_error)?;
        let d = match expected.or(fetched.digest.as_ref()) {
            Some(d) if crate::oci::schema1::manifest_matches(d, &fetched.body) => d.clone(),
            Some(d) => {
                return Err(RegistryError::Upstream(UpstreamError::Invalid(format!(
                    "manifest {reference} from the upstream does not match the digest {d}"
                ))));
            }
            None => crate::oci::schema1::manifest_digest(&fetched.body),
        };
        // Refused by the signature policy: nothing of it is stored.
        self.check_before_store(repo, &d, &fetched.body).await?;
        self.store_manifest(repo, &d, fetched.body, fetched.media_type.as_deref())
            .await
    }

    /// Validate, store and link a manifest fetched from the upstream.
    async fn store_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Manifest, RegistryError> {
        self.counts.manifest_misses.increment(1);
        let info = ManifestInfo::parse(&body, content_type).map_err(|e| {
            RegistryError::Upstream(UpstreamError::Invalid(format!("manifest {d}: {e}")))
        })?;
        let m = Manifest {
            digest: d.clone(),
            media_type: info.media_type.clone(),
            body,
        };
        self.cache
            .set_manifest(
                d,
                ManifestEntry {
                    media_type: info.media_type.clone(),
                    size: m.body.len() as u64,
                },
            )
            .await;
        if self.put_manifest(&m).await {
            self.bodies.put(&m);
            // The upstream served this manifest under `repo`: `repo` may serve the manifest. Its
            // config and layers are only claimed by it (a manifest can list any digest), so each
            // is linked when the upstream confirms it under `repo` (`blobs.rs`).
            self.link_manifest(repo, &m).await;
        } else {
            // Served from memory and the upstream until storage takes it.
            self.bodies.put_unstored(&m);
        }
        Ok(m)
    }

    /// Write a manifest's bytes to storage, unless it is read-only or down. Whether it is stored.
    async fn put_manifest(&self, m: &Manifest) -> bool {
        if self.settings.read_only || self.storage.reads_refused() {
            return false;
        }
        match self
            .storage
            .put(&layout::blob_data(&m.digest), m.body.clone())
            .await
        {
            Ok(()) => true,
            // The write circuit is open: said once, by the breaker.
            Err(StorageError::Unavailable(_)) => false,
            Err(e) => {
                tracing::error!(digest = %m.digest, error = %e, "cannot store manifest; serving without caching");
                false
            }
        }
    }

    /// `m`, served from memory under `repo` (the tag naming it confirmed there), is stored now
    /// if it was passed through uncommitted while storage was down: the outage leaves nothing
    /// that only memory knows. Its tag's links are written when the tag is next revalidated
    /// (their modification time is the confirmation's).
    async fn store_if_passed_through(&self, repo: &RepoName, m: &Manifest) {
        if self.settings.read_only
            || self.storage.reads_refused()
            || !self.bodies.take_unstored(&m.digest)
        {
            return;
        }
        if self.put_manifest(m).await {
            tracing::info!(name = %repo, digest = %m.digest, "manifest passed through during a storage outage stored");
            self.link_manifest(repo, m).await;
        } else {
            self.bodies.store_failed(&m.digest);
        }
    }

    async fn link_manifest(&self, repo: &RepoName, m: &Manifest) {
        self.write_link(&layout::revision_link(repo, &m.digest), &m.digest)
            .await;
    }

    async fn tag_entry(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<TagEntry>, RegistryError> {
        if let Some(e) = self.cache.tag(repo.as_str(), tag.as_str()).await {
            return Ok(Some(e));
        }
        let key = layout::tag_current(repo, tag);
        let Some(meta) = self.storage.stat(&key).await? else {
            return Ok(None);
        };
        let body = match self.storage.read(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(digest) = link_digest(&body) else {
            return Ok(None);
        };
        let entry = TagEntry {
            digest,
            // A link's age is when it was last confirmed, so a restart does not revalidate
            // every tag at once.
            checked_at: meta.modified.unwrap_or(SystemTime::UNIX_EPOCH),
        };
        // Remembered as a revalidation would: otherwise, after a restart, every request for
        // the tag reads its link from storage until the tag is next revalidated.
        self.cache
            .set_tag(repo.as_str(), tag.as_str(), entry.clone())
            .await;
        Ok(Some(entry))
    }

    async fn manifest_by_tag(
        self: &Arc<Self>,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Manifest, RegistryError> {
        let mut down = false;
        let entry = miss_if_down(self.tag_entry(repo, tag).await, &mut down)?;
        let cached = match &entry {
            Some(e) => miss_if_down(
                self.stored_manifest(repo, &e.digest, false).await,
                &mut down,
            )?,
            None => None,
        };
        if let (Some(e), Some(m)) = (&entry, &cached) {
            let age = SystemTime::now()
                .duration_since(e.checked_at)
                .unwrap_or(Duration::ZERO);
            if self.settings.offline || age < self.tag_ttl(repo) {
                self.counts.manifest_hits.increment(1);
                self.store_if_passed_through(repo, m).await;
                return Ok(m.clone());
            }
        }
        if self.settings.offline {
            return Err(match down {
                true => RegistryError::StorageAndUpstreamDown(OFFLINE.into()),
                false => {
                    RegistryError::ManifestUnknown(format!("tag {tag} is not cached (offline)"))
                }
            });
        }
        let this = self.clone();
        let (repo2, tag2) = (repo.clone(), tag.clone());
        let key = (repo.clone(), Reference::Tag(tag.clone()));
        let known = cached.is_some();
        let (r, _) = self
            .manifests
            .run(key, async move {
                this.revalidate_tag(&repo2, &tag2, known)
                    .await
                    .map_err(Arc::new)
            })
            .await;
        let r = match r {
            Ok(m) => Ok(m),
            Err(e) => {
                // NotFound has already become ManifestUnknown: every other upstream failure
                // is one the cached copy papers over.
                let stale_ok = matches!(&*e, RegistryError::Upstream(_));
                match cached {
                    Some(m) if stale_ok => {
                        metrics::counter!(crate::metrics::STALE_SERVED).increment(1);
                        tracing::warn!(name = %repo, tag = %tag, digest = %m.digest, error = %e, "upstream failed; serving cached tag");
                        Ok(m)
                    }
                    _ => Err(unshare(e)),
                }
            }
        };
        if down {
            answered_while_down("manifest", r)
        } else {
            r
        }
    }

    /// Ask the upstream what `tag` points at (HEAD: Docker Hub counts only GETs as pulls), and
    /// fetch the manifest only when its digest is new to us. A tag never seen (`known` false)
    /// needs the body whatever the HEAD says, so it is fetched with one GET.
    async fn revalidate_tag(
        self: &Arc<Self>,
        repo: &RepoName,
        tag: &Tag,
        known: bool,
    ) -> Result<Manifest, RegistryError> {
        let reference = Reference::Tag(tag.clone());
        let head_digest = if known {
            self.upstream
                .head_manifest(repo, &reference)
                .await
                .map_err(|e| tag_upstream_error(e, tag))?
                .digest
        } else {
            None
        };
        let m = match &head_digest {
            Some(d) => {
                match miss_if_down(self.stored_manifest(repo, d, false).await, &mut false)? {
                    Some(m) => {
                        // Revalidated: the upstream confirmed what is stored, no body fetched.
                        self.counts.manifest_hits.increment(1);
                        self.check_before_store(repo, d, &m.body).await?;
                        self.store_if_passed_through(repo, &m).await;
                        self.link_manifest(repo, &m).await;
                        m
                    }
                    None => {
                        self.fetch_and_store(repo, &Reference::Digest(d.clone()), Some(d), |e| {
                            tag_upstream_error(e, tag)
                        })
                        .await?
                    }
                }
            }
            None => {
                self.fetch_and_store(repo, &reference, None, |e| tag_upstream_error(e, tag))
                    .await?
            }
        };
        self.record_tag(repo, tag, &m.digest).await?;
        Ok(m)
    }

    async fn record_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        d: &Digest,
    ) -> Result<(), RegistryError> {
        let now = SystemTime::now();
        self.cache
            .set_tag(
                repo.as_str(),
                tag.as_str(),
                TagEntry {
                    digest: d.clone(),
                    checked_at: now,
                },
            )
            .await;
        // The link file is what restarts and offline replicas go by, and its mtime records the
        // confirmation. Compare with the link itself, not the cache: a link write that failed
        // earlier must be repaired even when the cache already knows the digest. Rewriting it on
        // every revalidation would cost a write per request with tag_ttl 0, so an unchanged link
        // is refreshed only when the stored confirmation has itself expired.
        let key = layout::tag_current(repo, tag);
        let linked = match self.storage.read(&key).await {
            Ok(b) => link_digest(&b),
            Err(e) if e.is_not_found() => None,
            // Links are bookkeeping: written again on a revalidation once storage is back.
            Err(e) if e.is_outage() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let changed = linked.as_ref() != Some(d);
        let ttl = self.tag_ttl(repo);
        let expired = !changed && !ttl.is_zero() && {
            let stored = match self.storage.stat(&key).await {
                Ok(meta) => meta,
                Err(e) if e.is_outage() => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let stored_age = stored
                .and_then(|m| m.modified)
                .and_then(|t| now.duration_since(t).ok());
            stored_age.is_none_or(|a| a >= ttl)
        };
        if changed || expired {
            let (index, current) = (
                layout::tag_index(repo, tag, d),
                layout::tag_current(repo, tag),
            );
            tokio::join!(self.write_link(&index, d), self.write_link(&current, d));
        }
        Ok(())
    }
}

fn manifest_upstream_error(e: UpstreamError, d: &Digest) -> RegistryError {
    match e {
        UpstreamError::NotFound => {
            RegistryError::ManifestUnknown(format!("{d} not found upstream"))
        }
        other => RegistryError::Upstream(other),
    }
}

fn tag_upstream_error(e: UpstreamError, tag: &Tag) -> RegistryError {
    match e {
        UpstreamError::NotFound => {
            RegistryError::ManifestUnknown(format!("tag {tag} not found upstream"))
        }
        other => RegistryError::Upstream(other),
    }
}
