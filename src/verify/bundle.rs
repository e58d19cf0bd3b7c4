//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`) attached to a manifest as
//! referrers, verified with a configured key (no certificate, no transparency log): either a
//! `messageSignature` over the manifest's bytes (its `messageDigest` must be the manifest's
//! digest), or a DSSE envelope whose in-toto statement names the manifest's digest as subject.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::keys::TrustedKey;
use crate::oci::Digest;

pub const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Key-based bundles are a few KiB; keyless ones with a certificate chain stay well under this.
pub const MAX_BUNDLE: u64 = 256 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    message_signature: Option<MessageSignature>,
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSignature {
    message_digest: MessageDigest,
    signature: String,
}

#[derive(Deserialize)]
struct MessageDigest {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
struct Statement {
    subject: Vec<Subject>,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    name: String,
    digest: std::collections::HashMap<String, String>,
}

/// How a bundle failed, most telling last (the caller keeps the most telling of several).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BundleFailure {
    NoTrustedKey,
    Malformed(String),
    OtherDigest(String),
    OtherRepository(String),
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, BundleFailure> {
    STANDARD
        .decode(s.trim())
        .map_err(|e| BundleFailure::Malformed(format!("bundle {field} is not base64: {e}")))
}

/// Check `bundle` for the manifest `body` (`digest`) of `repo` against `keys`; the fingerprint
/// of the key that verified it.
pub fn verify(
    bundle: &[u8],
    digest: &Digest,
    body: &[u8],
    reference_matches: impl Fn(&str) -> bool,
    keys: &[TrustedKey],
) -> Result<String, BundleFailure> {
    let b: Bundle = serde_json::from_slice(bundle)
        .map_err(|e| BundleFailure::Malformed(format!("bundle: {e}")))?;
    if b.media_type != BUNDLE_TYPE {
        return Err(BundleFailure::Malformed(format!(
            "bundle of media type {:?}",
            b.media_type
        )));
    }
    let hex = digest
        .to_string()
        .split_once(':')
        .map(|(_, h)| h.to_owned());
    let hex = hex.unwrap_or_default();
    if let Some(m) = b.message_signature {
        if m.message_digest.algorithm != "SHA2_256" {
            return Err(BundleFailure::Malformed(format!(
                "message digest algorithm {:?}",
                m.message_digest.algorithm
            )));
        }
        let claimed = b64("messageDigest", &m.message_digest.digest)?;
        if hex::encode(&claimed) != hex {
            return Err(BundleFailure::OtherDigest(format!(
                "sha256:{}",
                hex::encode(&claimed)
            )));
        }
        let sig = b64("signature", &m.signature)?;
        return keys
            .iter()
            .find(|k| k.verifies(body, &sig))
            .map(|k| k.fingerprint().to_owned())
            .ok_or(BundleFailure::NoTrustedKey);
    }
    let Some(env) = b.dsse_envelope else {
        return Err(BundleFailure::Malformed(
            "bundle has neither a messageSignature nor a dsseEnvelope".into(),
        ));
    };
    let payload = b64("payload", &env.payload)?;
    let pae = [
        format!(
            "DSSEv1 {} {} {} ",
            env.payload_type.len(),
            env.payload_type,
            payload.len()
        )
        .into_bytes(),
        payload.clone(),
    ]
    .concat();
    let mut key = None;
    for s in &env.signatures {
        let sig = b64("signature", &s.sig)?;
        if let Some(k) = keys.iter().find(|k| k.verifies(&pae, &sig)) {
            key = Some(k.fingerprint().to_owned());
            break;
        }
    }
    let key = key.ok_or(BundleFailure::NoTrustedKey)?;
    let st: Statement = serde_json::from_slice(&payload)
        .map_err(|e| BundleFailure::Malformed(format!("in-toto statement: {e}")))?;
    let subject = st
        .subject
        .iter()
        .find(|s| s.digest.get("sha256") == Some(&hex))
        .ok_or_else(|| {
            BundleFailure::OtherDigest(
                st.subject
                    .first()
                    .and_then(|s| s.digest.get("sha256"))
                    .map_or("no subject".into(), |h| format!("sha256:{h}")),
            )
        })?;
    if !subject.name.is_empty() && !reference_matches(&subject.name) {
        return Err(BundleFailure::OtherRepository(subject.name.clone()));
    }
    Ok(key)
}
