//! Signature verification at the mirror: which repositories must be signed and by which keys
//! or keyless identities (`config.rs`, an ordered list of rules in the ACL's pattern language),
//! the keys themselves (`keys.rs`), keyless trust (`keyless.rs`: Fulcio-style certificates,
//! with their transparency-log proof in `tlog.rs`), and how a manifest's signatures are found
//! and checked: cosign's tag scheme (`cosign.rs`) and Sigstore bundles among its referrers
//! (`bundle.rs`). The registry asks
//! [`Policy::rule_for`] and [`verify`] and fetches the signatures for it through its ordinary
//! pull path ([`SignatureSource`]), so they are cached like any content; verdicts are cached by
//! the registry under [`Rule::id`], which changes with the rule's key set.

pub mod bundle;
pub mod config;
pub mod cosign;
pub mod keyless;
pub mod keys;
pub mod tlog;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::auth::acl::NamePattern;
use crate::oci::{Digest, RepoName};
use keyless::{Keyless, KeylessFailure};
use keys::TrustedKey;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse what is not signed.
    #[default]
    Enforce,
    /// Serve it, but log and count the failure.
    Warn,
}

/// One rule: the repositories it covers and the keys (or keyless identity) their manifests
/// must be signed by.
#[derive(Clone, Debug)]
pub struct Rule {
    pub source: String,
    pattern: Arc<NamePattern>,
    pub keys: Vec<TrustedKey>,
    pub keyless: Option<Arc<Keyless>>,
    pub mode: Mode,
    id: String,
}

impl Rule {
    pub fn new(
        source: String,
        pattern: NamePattern,
        keys: Vec<TrustedKey>,
        keyless: Option<Keyless>,
        mode: Mode,
    ) -> Self {
        let mut prints: Vec<&str> = keys.iter().map(|k| k.fingerprint()).collect();
        prints.sort_unstable();
        let mut id_input = format!("{source}\n{}", prints.join("\n"));
        if let Some(k) = &keyless {
            id_input.push_str("\nkeyless\n");
            id_input.push_str(&k.id_input());
        }
        let id = hex::encode(
            &aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id_input.as_bytes()).as_ref()
                [..12],
        );
        Rule {
            source,
            pattern: Arc::new(pattern),
            keys,
            keyless: keyless.map(Arc::new),
            mode,
            id,
        }
    }

    /// The key and certificate files the rule was read from (watched for reloads).
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        let keyless = self.keyless.iter().flat_map(|k| k.files().iter().cloned());
        self.keys
            .iter()
            .map(|k| k.path().to_owned())
            .chain(keyless)
            .collect()
    }

    /// What a verdict under this rule is cached by: its pattern, key set and keyless trust, so
    /// that a changed key set (reload) finds none of the old verdicts.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The ordered rules; the first that matches a repository applies.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

impl Policy {
    pub fn rule_for(&self, repo: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.pattern.matches(repo))
    }
}

/// How long a failed check is remembered: long enough that the check before a manifest is
/// stored and the one as it is served (and a burst of pulls) share one look-up, short enough
/// that a signature published a moment later is soon found.
const FAILURE_MEMORY: Duration = Duration::from_secs(10);
const MAX_FAILURES_REMEMBERED: usize = 10_000;

type FailureKey = (String, Digest);

/// The policy in force, replaced as a whole on reload, and the failures of the last moments.
#[derive(Default)]
pub struct Verifier {
    policy: RwLock<Arc<Policy>>,
    failures: Mutex<HashMap<FailureKey, (Refusal, Instant)>>,
}

impl Verifier {
    pub fn new(policy: Policy) -> Self {
        Verifier {
            policy: RwLock::new(Arc::new(policy)),
            failures: Mutex::default(),
        }
    }

    /// The refusal of `d` under rule `rule` if it was checked a moment ago.
    pub fn recent_failure(&self, rule: &str, d: &Digest) -> Option<Refusal> {
        let f = self.failures.lock().expect("lock");
        f.get(&(rule.to_owned(), d.clone()))
            .filter(|(_, at)| at.elapsed() < FAILURE_MEMORY)
            .map(|(r, _)| r.clone())
    }

    pub fn note_failure(&self, rule: &str, d: &Digest, r: Refusal) {
        let mut f = self.failures.lock().expect("lock");
        if f.len() >= MAX_FAILURES_REMEMBERED {
            f.retain(|_, (_, at)| at.elapsed() < FAILURE_MEMORY);
            if f.len() >= MAX_FAILURES_REMEMBERED {
                f.clear();
            }
        }
        f.insert((rule.to_owned(), d.clone()), (r, Instant::now()));
    }

    pub fn current(&self) -> Arc<Policy> {
        self.policy.read().expect("lock").clone()
    }

    pub fn replace(&self, policy: Policy) {
        *self.policy.write().expect("lock") = Arc::new(policy);
        self.failures.lock().expect("lock").clear();
    }

    pub fn is_empty(&self) -> bool {
        self.current().rules.is_empty()
    }
}

/// Why a manifest is refused; the text is the client's `DENIED` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{digest} is not signed: no signature found")]
    NoSignature { digest: String },
    #[error("no signature of {digest} verifies with a trusted key")]
    NoTrustedKey { digest: String },
    #[error("malformed signature for {digest}: {reason}")]
    Malformed { digest: String, reason: String },
    #[error("the signature for {digest} was made for another digest ({found})")]
    OtherDigest { digest: String, found: String },
    #[error("the signature for {digest} was made for another repository ({found})")]
    OtherRepository { digest: String, found: String },
    #[error("the certificate signing {digest} does not chain to a trusted root: {reason}")]
    UntrustedChain { digest: String, reason: String },
    #[error("the certificate signing {digest} names another identity: {reason}")]
    IdentityMismatch { digest: String, reason: String },
    #[error("the keyless signature of {digest} carries no transparency-log proof")]
    NoTlogProof { digest: String },
    #[error("the transparency-log proof of the signature for {digest} is invalid: {reason}")]
    TlogInvalid { digest: String, reason: String },
    #[error("the certificate signing {digest} was not valid at signing time: {reason}")]
    NotValidAtSigningTime { digest: String, reason: String },
}

impl Refusal {
    /// The `result` label of `ocimirror_verify_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoSignature { .. } => "unsigned",
            Refusal::NoTrustedKey { .. } => "untrusted",
            Refusal::Malformed { .. } => "malformed",
            Refusal::OtherDigest { .. } => "other_digest",
            Refusal::OtherRepository { .. } => "other_repository",
            Refusal::UntrustedChain { .. } => "untrusted_chain",
            Refusal::IdentityMismatch { .. } => "identity_mismatch",
            Refusal::NoTlogProof { .. } => "no_tlog_proof",
            Refusal::TlogInvalid { .. } => "tlog_invalid",
            Refusal::NotValidAtSigningTime { .. } => "expired_at_signing",
        }
    }

    fn keyless(digest: &str, f: KeylessFailure) -> Refusal {
        let digest = digest.to_owned();
        match f {
            KeylessFailure::Malformed(reason) => Refusal::Malformed { digest, reason },
            KeylessFailure::UntrustedChain(reason) => Refusal::UntrustedChain { digest, reason },
            KeylessFailure::IdentityMismatch(reason) => {
                Refusal::IdentityMismatch { digest, reason }
            }
            KeylessFailure::BadSignature => Refusal::NoTrustedKey { digest },
            KeylessFailure::NoTlogProof => Refusal::NoTlogProof { digest },
            KeylessFailure::TlogInvalid(reason) => Refusal::TlogInvalid { digest, reason },
            KeylessFailure::NotValidAtSigningTime(reason) => {
                Refusal::NotValidAtSigningTime { digest, reason }
            }
        }
    }

    /// The more telling of several failures: a signature that verified but names something
    /// else says more than one that did not verify, which says more than none at all; a
    /// keyless signature says more the further its checks went.
    fn rank(&self) -> u8 {
        match self {
            Refusal::NoSignature { .. } => 0,
            Refusal::NoTrustedKey { .. } => 1,
            Refusal::UntrustedChain { .. } => 2,
            Refusal::IdentityMismatch { .. } => 3,
            Refusal::NoTlogProof { .. } => 4,
            Refusal::TlogInvalid { .. } => 5,
            Refusal::NotValidAtSigningTime { .. } => 6,
            Refusal::Malformed { .. } => 7,
            Refusal::OtherDigest { .. } => 8,
            Refusal::OtherRepository { .. } => 9,
        }
    }
}

/// A signature that verified: by which key (its fingerprint, or a keyless signer's subject and
/// issuer), found how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub key: String,
    pub via: &'static str,
}

/// Signatures could not be fetched (upstream and cache both failed): no verdict either way.
#[derive(Debug, Clone, thiserror::Error)]
#[error("signatures could not be fetched: {0}")]
pub struct Unavailable(pub String);

/// Where signatures come from: the registry's own pull path, so they are cached like content.
#[async_trait]
pub trait SignatureSource: Send + Sync {
    /// The manifest `tag` names in `repo`; None when there is none.
    async fn tagged(&self, repo: &RepoName, tag: &str) -> Result<Option<Bytes>, Unavailable>;
    async fn by_digest(&self, repo: &RepoName, d: &Digest) -> Result<Option<Bytes>, Unavailable>;
    /// The referrers index of `d`, filtered to `artifact_type`.
    async fn referrers(
        &self,
        repo: &RepoName,
        d: &Digest,
        artifact_type: &str,
    ) -> Result<Bytes, Unavailable>;
    /// Blob `d` of `repo`, if it is at most `max` bytes; None when there is none.
    async fn blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        max: u64,
    ) -> Result<Option<Bytes>, Unavailable>;
}

/// Whether `manifest` is itself a signature artifact (every layer a simple-signing payload or
/// a Sigstore bundle): such manifests carry nothing runnable and are served unverified, so
/// that the mirror can fetch them and clients like `cosign verify` can read them through it.
pub fn is_signature_artifact(manifest: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return false;
    };
    if v.get("artifactType").and_then(|t| t.as_str()) == Some(bundle::BUNDLE_TYPE) {
        return true;
    }
    let Some(layers) = v.get("layers").and_then(|l| l.as_array()) else {
        return false;
    };
    !layers.is_empty()
        && layers.iter().all(|l| {
            matches!(
                l.get("mediaType").and_then(|t| t.as_str()),
                Some(cosign::SIMPLE_SIGNING | bundle::BUNDLE_TYPE)
            )
        })
}

/// Whether a signed reference (`registry.example/myorg/app`, `myorg/app:1.0`, `alpine`) names
/// the repository `repo` as its upstream calls it: the host and a tag or digest are dropped,
/// and Docker Hub's short names read as `library/…`.
pub fn reference_names(reference: &str, repo: &str) -> bool {
    let r = reference.split('@').next().unwrap_or_default();
    let r = match r.rsplit_once(':') {
        Some((head, tag)) if !tag.contains('/') => head,
        _ => r,
    };
    let (host, path) = match r.split_once('/') {
        Some((h, p)) if h.contains(['.', ':']) || h == "localhost" => (Some(h), p),
        _ => (None, r),
    };
    let hub = matches!(
        host,
        None | Some("docker.io" | "index.docker.io" | "registry-1.docker.io")
    );
    path == repo || (hub && !path.contains('/') && repo.strip_prefix("library/") == Some(path))
}

/// Check the signatures of manifest `digest` (`body`) in `repo` (as stored: where the
/// signatures are fetched from) under `rule`. A signature must name `signed`: the repository
/// as its upstream calls it (a named upstream's, without the prefix it is stored under).
pub async fn verify(
    rule: &Rule,
    src: &dyn SignatureSource,
    repo: &RepoName,
    signed: &RepoName,
    digest: &Digest,
    body: &[u8],
) -> Result<Result<Passed, Refusal>, Unavailable> {
    let d = digest.to_string();
    let mut worst = Refusal::NoSignature { digest: d.clone() };
    let mut note = |r: Refusal| {
        if r.rank() > worst.rank() {
            worst = r;
        }
    };
    // cosign's tag scheme.
    if let Some(m) = src.tagged(repo, &cosign::signature_tag(digest)).await? {
        match cosign::signatures(&m) {
            Err(reason) => note(Refusal::Malformed {
                digest: d.clone(),
                reason,
            }),
            Ok(sigs) => {
                for s in sigs {
                    match check_cosign(rule, src, repo, signed, &d, &s).await? {
                        Ok(key) => return Ok(Ok(Passed { key, via: "cosign" })),
                        Err(r) => note(r),
                    }
                }
            }
        }
    }
    // Sigstore bundles among the referrers (the API, or the tag schema).
    let index = src.referrers(repo, digest, bundle::BUNDLE_TYPE).await?;
    let listed: Vec<Digest> = serde_json::from_slice::<serde_json::Value>(&index)
        .ok()
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("digest").and_then(|d| d.as_str()))
        .filter_map(|s| Digest::parse(s).ok())
        .collect();
    for art in listed {
        let Some(m) = src.by_digest(repo, &art).await? else {
            continue;
        };
        match check_bundle(rule, src, repo, signed, digest, body, &m).await? {
            Ok(key) => return Ok(Ok(Passed { key, via: "bundle" })),
            Err(r) => note(r),
        }
    }
    Ok(Err(worst))
}

async fn check_cosign(
    rule: &Rule,
    src: &dyn SignatureSource,
    repo: &RepoName,
    signed: &RepoName,
    d: &str,
    s: &cosign::Signature,
) -> Result<Result<String, Refusal>, Unavailable> {
    let malformed = |reason: String| Refusal::Malformed {
        digest: d.to_owned(),
        reason,
    };
    if s.payload_size > cosign::MAX_PAYLOAD {
        return Ok(Err(malformed(format!(
            "payload of {} bytes",
            s.payload_size
        ))));
    }
    let Some(payload) = src.blob(repo, &s.payload, cosign::MAX_PAYLOAD).await? else {
        return Ok(Err(malformed(format!("payload {} is missing", s.payload))));
    };
    let signer = match (
        rule.keys
            .iter()
            .find(|k| k.verifies(&payload, &s.signature)),
        &rule.keyless,
        s.keyless(),
    ) {
        (Some(key), _, _) => key.fingerprint().to_owned(),
        (None, Some(_), Some(Err(reason))) => return Ok(Err(malformed(reason))),
        (None, Some(keyless), Some(Ok(parts))) => {
            let ev = keyless::Evidence {
                certificate: &parts.certificate,
                chain: &parts.chain,
                signature: &s.signature,
                signed: tlog::Signed::Message(&payload),
                log: &parts.log,
            };
            match keyless.verify(&ev) {
                Ok(identity) => identity,
                Err(f) => return Ok(Err(Refusal::keyless(d, f))),
            }
        }
        _ => {
            return Ok(Err(Refusal::NoTrustedKey {
                digest: d.to_owned(),
            }));
        }
    };
    let claim = match cosign::claim(&payload) {
        Ok(c) => c,
        Err(reason) => return Ok(Err(malformed(reason))),
    };
    if claim.digest != d {
        return Ok(Err(Refusal::OtherDigest {
            digest: d.to_owned(),
            found: claim.digest,
        }));
    }
    if !reference_names(&claim.reference, signed.as_str()) {
        return Ok(Err(Refusal::OtherRepository {
            digest: d.to_owned(),
            found: claim.reference,
        }));
    }
    Ok(Ok(signer))
}

async fn check_bundle(
    rule: &Rule,
    src: &dyn SignatureSource,
    repo: &RepoName,
    signed: &RepoName,
    digest: &Digest,
    body: &[u8],
    artifact: &[u8],
) -> Result<Result<String, Refusal>, Unavailable> {
    let d = digest.to_string();
    let layer = serde_json::from_slice::<serde_json::Value>(artifact)
        .ok()
        .and_then(|v| {
            v.get("layers")?.as_array()?.iter().find_map(|l| {
                (l.get("mediaType")?.as_str()? == bundle::BUNDLE_TYPE)
                    .then(|| Digest::parse(l.get("digest")?.as_str()?).ok())
                    .flatten()
            })
        });
    let Some(layer) = layer else {
        return Ok(Err(Refusal::Malformed {
            digest: d,
            reason: "a bundle artifact without a bundle layer".into(),
        }));
    };
    let Some(b) = src.blob(repo, &layer, bundle::MAX_BUNDLE).await? else {
        return Ok(Err(Refusal::Malformed {
            digest: d,
            reason: format!("bundle {layer} is missing or too large"),
        }));
    };
    use bundle::BundleFailure as F;
    let names = |r: &str| reference_names(r, signed.as_str());
    let keyless = rule.keyless.as_deref();
    Ok(
        bundle::verify(&b, digest, body, names, &rule.keys, keyless).map_err(|f| match f {
            F::NoTrustedKey => Refusal::NoTrustedKey { digest: d.clone() },
            F::Keyless(f) => Refusal::keyless(&d, f),
            F::Malformed(reason) => Refusal::Malformed {
                digest: d.clone(),
                reason,
            },
            F::OtherDigest(found) => Refusal::OtherDigest {
                digest: d.clone(),
                found,
            },
            F::OtherRepository(found) => Refusal::OtherRepository {
                digest: d.clone(),
                found,
            },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_repositories() {
        assert!(reference_names("127.0.0.1:5000/myorg/app", "myorg/app"));
        assert!(reference_names("r.example/myorg/app:1.0", "myorg/app"));
        assert!(reference_names("myorg/app@sha256:ab", "myorg/app"));
        assert!(reference_names(
            "index.docker.io/library/alpine",
            "library/alpine"
        ));
        assert!(reference_names("alpine", "library/alpine"));
        assert!(!reference_names("r.example/other/app", "myorg/app"));
        assert!(!reference_names("r.example/alpine", "library/alpine"));
        assert!(!reference_names("r.example/myorg/app/sub", "myorg/app"));
    }

    #[test]
    fn signature_artifacts_are_recognised() {
        let sig =
            br#"{"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json"}]}"#;
        assert!(is_signature_artifact(sig));
        let img = br#"{"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json"},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}]}"#;
        assert!(!is_signature_artifact(img));
        assert!(!is_signature_artifact(br#"{"manifests":[]}"#));
    }
}
