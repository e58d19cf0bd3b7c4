//! The registry's side of signature verification (`verify/`): the verdict on a manifest under
//! the first `verify` rule matching its repository, cached per (rule, repository, digest) in the
//! descriptor cache, with the signatures fetched through the registry's own pull path (so they are stored,
//! revalidated and served stale like any content). A passed index covers its children.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Registry, RegistryError};
use crate::cache::VerdictEntry;
use crate::oci::{Digest, ManifestInfo, Reference, RepoName, Tag};
use crate::upstream::UpstreamError;
use crate::verify::{self, Mode, Refusal, SignatureSource, Unavailable, Verifier};

/// What the policy says about one manifest.
#[derive(Debug)]
pub(super) enum Verdict {
    /// No rule covers the repository, or the manifest is itself a signature artifact.
    Unchecked,
    Passed(VerdictEntry),
    Refused(Refusal, Mode),
}

impl Registry {
    /// Check manifests against `verifier`'s rules.
    pub fn with_verifier(mut self, verifier: Arc<Verifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// The signature policy in force, for reloads.
    pub fn verifier(&self) -> Option<Arc<Verifier>> {
        self.verifier.clone()
    }

    /// What the policy says of the stored manifest `d` of `name`, for `ocimirror inspect`:
    /// None when no rule covers it (or it is not stored); checked from what is stored when the
    /// registry is offline.
    pub async fn signature_status(
        self: &Arc<Self>,
        name: &RepoName,
        d: &Digest,
    ) -> Result<Option<String>, RegistryError> {
        let repo = self.upstream.canonical_name(name);
        let body = match self.storage.read(&crate::layout::blob_data(d)).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(match self.signature_verdict(&repo, d, &body).await? {
            Verdict::Unchecked => None,
            Verdict::Passed(v) => Some(match v.via {
                None => format!("verified, key {}", v.key),
                Some(i) => format!("verified through index {i}, key {}", v.key),
            }),
            Verdict::Refused(r, mode) => Some(format!(
                "{}: {r}",
                match mode {
                    Mode::Enforce => "refused",
                    Mode::Warn => "unverified (warn mode)",
                }
            )),
        })
    }

    /// The verdict on manifest `d` (`body`) of `repo`.
    pub(super) async fn signature_verdict(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
        body: &[u8],
    ) -> Result<Verdict, RegistryError> {
        let Some(verifier) = &self.verifier else {
            return Ok(Verdict::Unchecked);
        };
        let policy = verifier.current();
        let Some(rule) = policy.rule_for(repo.as_str()) else {
            return Ok(Verdict::Unchecked);
        };
        if verify::is_signature_artifact(body) {
            return Ok(Verdict::Unchecked);
        }
        // Per repository too: a signature names the repository it was made for, so a digest
        // verified under one name says nothing about another.
        let key = format!("{}@{repo}", rule.id());
        if let Some(v) = self.cache.verdict(&key, d).await {
            return Ok(Verdict::Passed(v));
        }
        if let Some(r) = verifier.recent_failure(&key, d) {
            return Ok(Verdict::Refused(r, rule.mode));
        }
        let source = Source(self.clone());
        // The rule matches the name as stored; the signature names the repository as its
        // upstream does (a named upstream's without its prefix).
        let signed = self.upstream.own_name(repo);
        match verify::verify(rule, &source, repo, &signed, d, body).await {
            Err(Unavailable(m)) => Err(RegistryError::Upstream(UpstreamError::Unavailable(
                format!("cannot fetch the signatures of {d}: {m}"),
            ))),
            Ok(Err(r)) => {
                verifier.note_failure(&key, d, r.clone());
                Ok(Verdict::Refused(r, rule.mode))
            }
            Ok(Ok(passed)) => {
                let own = VerdictEntry {
                    key: passed.key,
                    via: None,
                };
                self.cache.set_verdict(&key, d, own.clone()).await;
                // An index signed once covers the manifests it lists.
                if let Ok(info) = ManifestInfo::parse(body, None) {
                    for child in &info.children {
                        let entry = VerdictEntry {
                            key: own.key.clone(),
                            via: Some(d.clone()),
                        };
                        self.cache.set_verdict(&key, child, entry).await;
                    }
                }
                tracing::info!(name = %repo, digest = %d, key = %own.key, via = passed.via, "signature verified");
                Ok(Verdict::Passed(own))
            }
        }
    }

    /// Before a fetched manifest is stored: refused in enforce mode, nothing is stored (and the
    /// request ends here, so it is counted and logged here).
    pub(super) async fn check_before_store(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
        body: &[u8],
    ) -> Result<(), RegistryError> {
        match self.signature_verdict(repo, d, body).await? {
            v @ Verdict::Refused(_, Mode::Enforce) => record(repo, d, v),
            _ => Ok(()),
        }
    }

    /// A manifest about to be served: counted, logged, and refused in enforce mode.
    pub(super) async fn check_served(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
        body: &[u8],
    ) -> Result<(), RegistryError> {
        let verdict = self.signature_verdict(repo, d, body).await?;
        record(repo, d, verdict)
    }
}

/// Count and log a verdict on a manifest being answered; the error for a refusal in enforce
/// mode.
fn record(repo: &RepoName, d: &Digest, verdict: Verdict) -> Result<(), RegistryError> {
    let result = match &verdict {
        Verdict::Unchecked => return Ok(()),
        Verdict::Passed(_) => "passed",
        Verdict::Refused(r, _) => r.label(),
    };
    metrics::counter!(crate::metrics::VERIFY, "result" => result).increment(1);
    match verdict {
        Verdict::Passed(v) => {
            tracing::debug!(name = %repo, digest = %d, key = %v.key, via = ?v.via, "signature policy passed");
            Ok(())
        }
        Verdict::Refused(r, Mode::Enforce) => {
            tracing::warn!(name = %repo, digest = %d, reason = %r, "manifest refused: signature verification failed");
            Err(RegistryError::Unverified(r))
        }
        Verdict::Refused(r, Mode::Warn) => {
            tracing::warn!(name = %repo, digest = %d, reason = %r, "serving a manifest that failed signature verification (warn mode)");
            Ok(())
        }
        Verdict::Unchecked => Ok(()),
    }
}

/// The registry as the verifier's source of signatures.
struct Source(Arc<Registry>);

/// A missing signature is an answer; an outage is not.
fn absent_or<T>(r: Result<T, RegistryError>) -> Result<Option<T>, Unavailable> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(
            e @ (RegistryError::Upstream(
                UpstreamError::Unavailable(_) | UpstreamError::RateLimited { .. },
            )
            | RegistryError::Storage(_)
            | RegistryError::Internal(_)),
        ) => Err(Unavailable(e.to_string())),
        Err(_) => Ok(None),
    }
}

#[async_trait]
impl SignatureSource for Source {
    async fn tagged(&self, repo: &RepoName, tag: &str) -> Result<Option<Bytes>, Unavailable> {
        let Ok(tag) = Tag::parse(tag) else {
            return Ok(None);
        };
        let m = self.0.manifest(repo, &Reference::Tag(tag)).await;
        Ok(absent_or(m)?.map(|m| m.body))
    }

    async fn by_digest(&self, repo: &RepoName, d: &Digest) -> Result<Option<Bytes>, Unavailable> {
        let m = self.0.manifest(repo, &Reference::Digest(d.clone())).await;
        Ok(absent_or(m)?.map(|m| m.body))
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        d: &Digest,
        artifact_type: &str,
    ) -> Result<Bytes, Unavailable> {
        let r = self.0.referrers(repo, d, Some(artifact_type)).await;
        Ok(absent_or(r)?.unwrap_or_default())
    }

    async fn blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        max: u64,
    ) -> Result<Option<Bytes>, Unavailable> {
        let Some(reply) = absent_or(self.0.blob(repo, d, None, false).await)? else {
            return Ok(None);
        };
        let Some(mut body) = reply.body.filter(|_| reply.size <= max) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(reply.size as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Unavailable(format!("blob {d}: {e}")))?;
            if (out.len() + chunk.len()) as u64 > max {
                return Ok(None);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(Bytes::from(out)))
    }
}
