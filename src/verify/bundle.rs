//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`) attached to a manifest as
//! referrers: either a `messageSignature` over the manifest's bytes (its `messageDigest` must be
//! the manifest's digest), or a DSSE envelope whose in-toto statement names the manifest's
//! digest as subject. Verified with a configured key, or keyless: with the certificate in
//! `verificationMaterial` (`certificate`, or v0.1/v0.2's `x509CertificateChain`) and the
//! transparency-log entries beside it (`tlogEntries`, their `inclusionPromise`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::keyless::{Evidence, Keyless, KeylessFailure};
use super::keys::TrustedKey;
use super::tlog::{BundleEntry, LogEntry, Signed};
use crate::oci::Digest;

pub const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Key-based bundles are a few KiB; keyless ones with a certificate chain stay well under this.
pub const MAX_BUNDLE: u64 = 256 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    #[serde(default)]
    verification_material: Material,
    message_signature: Option<MessageSignature>,
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Material {
    certificate: Option<RawBytes>,
    x509_certificate_chain: Option<CertificateChain>,
    #[serde(default)]
    tlog_entries: Vec<BundleEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct CertificateChain {
    certificates: Vec<RawBytes>,
}

/// A keyless bundle's certificate (DER), the certificates that came with it, and its log
/// entries.
struct KeylessMaterial {
    certificate: Vec<u8>,
    chain: Vec<Vec<u8>>,
    log: Vec<LogEntry>,
}

impl Material {
    /// None when the bundle carries no certificate (a key-based bundle).
    fn keyless(&self) -> Option<Result<KeylessMaterial, BundleFailure>> {
        let certs: Vec<&RawBytes> = match (&self.certificate, &self.x509_certificate_chain) {
            (Some(c), _) => vec![c],
            (None, Some(chain)) => chain.certificates.iter().collect(),
            (None, None) => return None,
        };
        let parts = || {
            if certs.is_empty() {
                return Err(BundleFailure::Malformed(
                    "bundle x509CertificateChain without a certificate".into(),
                ));
            }
            let der = |r: &RawBytes| b64("certificate", &r.raw_bytes);
            let log = self
                .tlog_entries
                .iter()
                .map(LogEntry::from_bundle_entry)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| BundleFailure::Malformed(format!("bundle tlog entry: {m}")))?;
            Ok(KeylessMaterial {
                certificate: der(certs[0])?,
                chain: certs[1..]
                    .iter()
                    .map(|c| der(c))
                    .collect::<Result<_, _>>()?,
                log,
            })
        };
        Some(parts())
    }
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

/// How a bundle failed.
#[derive(Debug, PartialEq, Eq)]
pub enum BundleFailure {
    NoTrustedKey,
    Keyless(KeylessFailure),
    Malformed(String),
    OtherDigest(String),
    OtherRepository(String),
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, BundleFailure> {
    STANDARD
        .decode(s.trim())
        .map_err(|e| BundleFailure::Malformed(format!("bundle {field} is not base64: {e}")))
}

/// Who made `signature` over `signed`: the fingerprint of the key in `keys` it verifies with, or
/// the identity of the keyless signer `keyless` trusts.
fn signer(
    material: &Material,
    signed: Signed<'_>,
    signature: &[u8],
    keys: &[TrustedKey],
    keyless: Option<&Keyless>,
) -> Result<String, BundleFailure> {
    if let Some(k) = keys.iter().find(|k| k.verifies(signed.bytes(), signature)) {
        return Ok(k.fingerprint().to_owned());
    }
    let (Some(keyless), Some(m)) = (keyless, material.keyless()) else {
        return Err(BundleFailure::NoTrustedKey);
    };
    let m = m?;
    keyless
        .verify(&Evidence {
            certificate: &m.certificate,
            chain: &m.chain,
            signature,
            signed,
            log: &m.log,
        })
        .map_err(BundleFailure::Keyless)
}

/// Check `bundle` for the manifest `body` (`digest`) of `repo` against `keys` and `keyless`;
/// the fingerprint of the key that verified it, or the keyless signer's identity.
pub fn verify(
    bundle: &[u8],
    digest: &Digest,
    body: &[u8],
    reference_matches: impl Fn(&str) -> bool,
    keys: &[TrustedKey],
    keyless: Option<&Keyless>,
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
        let material = &b.verification_material;
        return signer(material, Signed::Message(body), &sig, keys, keyless);
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
    let mut key = Err(BundleFailure::NoTrustedKey);
    for s in &env.signatures {
        let sig = b64("signature", &s.sig)?;
        let signed = Signed::Dsse {
            payload: &payload,
            pae: &pae,
        };
        key = signer(&b.verification_material, signed, &sig, keys, keyless);
        if key.is_ok() {
            break;
        }
    }
    let key = key?;
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

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a registry serves as a Sigstore bundle (arbitrary bytes, or JSON of the
        /// bundle's media type with arbitrary content), checking it ends in a refusal, never a
        /// panic, and with no trusted key nor keyless root it never verifies.
        #[test]
        fn any_bundle_is_refused_without_trust(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            content in "[ -~]{0,200}",
        ) {
            let digest = Digest::sha256_of(b"manifest");
            let wrapped = format!(r#"{{"mediaType":"{BUNDLE_TYPE}","messageSignature":{content}}}"#);
            for b in [bytes.as_slice(), wrapped.as_bytes()] {
                prop_assert!(verify(b, &digest, b"manifest", |_| true, &[], None).is_err());
            }
        }
    }
}
