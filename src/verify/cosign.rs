//! cosign's tag scheme: the signatures of `sha256:<hex>` are the layers of the manifest tagged
//! `sha256-<hex>.sig` in the same repository, each a simple-signing payload with its signature
//! (base64) in the `dev.cosignproject.cosign/signature` annotation. The payload names the
//! digest (`critical.image.docker-manifest-digest`) and the repository
//! (`critical.identity.docker-reference`) it was signed for. A keyless signature adds its
//! certificate (`dev.sigstore.cosign/certificate`, PEM), the chain up to its root
//! (`dev.sigstore.cosign/chain`) and its transparency-log entry (`dev.sigstore.cosign/bundle`).

use base64::Engine;
use serde::Deserialize;

use super::keyless::parse_pem_certificates;
use super::tlog::LogEntry;
use crate::oci::Digest;

pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Payloads are a few hundred bytes; anything much larger is not one.
pub const MAX_PAYLOAD: u64 = 64 * 1024;

/// The tag cosign publishes the signatures of `d` under.
pub fn signature_tag(d: &Digest) -> String {
    format!("{}.sig", d.to_string().replacen(':', "-", 1))
}

#[derive(Deserialize)]
struct SigManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

/// One signature: the payload blob it covers and the signature bytes; for a keyless one, the
/// annotations with its certificate, chain and log entry (read only when a rule trusts keyless
/// signatures: a key-based signature verifies whatever else it carries).
pub struct Signature {
    pub payload: Digest,
    pub payload_size: u64,
    pub signature: Vec<u8>,
    certificate: Option<String>,
    chain: Option<String>,
    bundle: Option<String>,
}

/// A keyless signature's certificate (DER), the chain that came with it, and its log entries.
pub struct KeylessParts {
    pub certificate: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
    pub log: Vec<LogEntry>,
}

fn certificates(name: &str, pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let certs = parse_pem_certificates(pem.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
    Ok(certs.into_iter().map(|c| c.as_ref().to_vec()).collect())
}

impl Signature {
    /// None for a signature without a certificate; `Err` when its annotations do not parse.
    pub fn keyless(&self) -> Option<Result<KeylessParts, String>> {
        let pem = self.certificate.as_ref()?;
        let parts = || {
            let certificate = certificates("certificate annotation", pem)?
                .into_iter()
                .next()
                .ok_or("certificate annotation without a certificate")?;
            let chain = match &self.chain {
                None => Vec::new(),
                Some(pem) => certificates("chain annotation", pem)?,
            };
            let log = match &self.bundle {
                None => Vec::new(),
                Some(json) => vec![LogEntry::from_cosign_annotation(json)?],
            };
            Ok(KeylessParts {
                certificate,
                chain,
                log,
            })
        };
        Some(parts())
    }
}

/// The signatures a `.sig` manifest carries; `Err` when it is not one.
pub fn signatures(manifest: &[u8]) -> Result<Vec<Signature>, String> {
    let m: SigManifest =
        serde_json::from_slice(manifest).map_err(|e| format!("signature manifest: {e}"))?;
    let mut out = Vec::new();
    for mut l in m.layers {
        let Some(sig) = l.annotations.get(SIGNATURE_ANNOTATION) else {
            continue;
        };
        if l.media_type != SIMPLE_SIGNING {
            return Err(format!("signature layer of type {:?}", l.media_type));
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(sig.trim())
            .map_err(|e| format!("signature annotation is not base64: {e}"))?;
        let payload = Digest::parse(&l.digest).map_err(|e| format!("payload digest: {e}"))?;
        let mut annotation = |name: &str| l.annotations.remove(name);
        out.push(Signature {
            payload,
            payload_size: l.size,
            signature,
            certificate: annotation(CERTIFICATE_ANNOTATION),
            chain: annotation(CHAIN_ANNOTATION),
            bundle: annotation(BUNDLE_ANNOTATION),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// What a verified payload claims: the digest and the repository reference it was signed for.
pub struct Claim {
    pub digest: String,
    pub reference: String,
}

pub fn claim(payload: &[u8]) -> Result<Claim, String> {
    let p: Payload =
        serde_json::from_slice(payload).map_err(|e| format!("simple-signing payload: {e}"))?;
    if p.critical.kind != "cosign container image signature" {
        return Err(format!(
            "simple-signing payload of type {:?}",
            p.critical.kind
        ));
    }
    Ok(Claim {
        digest: p.critical.image.docker_manifest_digest,
        reference: p.critical.identity.docker_reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_and_payload() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            signature_tag(&d),
            format!("sha256-{}.sig", &d.to_string()[7..])
        );
        let p = br#"{"critical":{"identity":{"docker-reference":"r.io/a/b"},"image":{"docker-manifest-digest":"sha256:ab"},"type":"cosign container image signature"},"optional":null}"#;
        let c = claim(p).unwrap();
        assert_eq!(
            (c.digest.as_str(), c.reference.as_str()),
            ("sha256:ab", "r.io/a/b")
        );
        assert!(claim(b"{}").is_err());
    }
}

#[cfg(test)]
mod props {
    use base64::Engine;
    use proptest::prelude::*;

    use super::*;
    use crate::oci::digest::props::digest;

    proptest! {
        /// Whatever a registry serves as a signature manifest or payload, parsing ends in a
        /// value or an error, never a panic.
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = signatures(&bytes);
            let _ = claim(&bytes);
        }

        /// A `.sig` manifest's signature layers give back exactly the payload digest, size and
        /// signature bytes they carry; layers without the signature annotation are skipped.
        #[test]
        fn signature_layers_give_back_what_they_carry(
            sigs in proptest::collection::vec((digest(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..96)), 0..4),
            unsigned in 0usize..3,
        ) {
            let mut layers: Vec<serde_json::Value> = sigs
                .iter()
                .map(|(d, size, sig)| serde_json::json!({
                    "mediaType": SIMPLE_SIGNING,
                    "digest": d.to_string(),
                    "size": size,
                    "annotations": { SIGNATURE_ANNOTATION: base64::engine::general_purpose::STANDARD.encode(sig) },
                }))
                .collect();
            for i in 0..unsigned {
                layers.insert(i.min(layers.len()), serde_json::json!({
                    "mediaType": "application/octet-stream",
                    "digest": Digest::sha256_of(&[i as u8]).to_string(),
                    "size": 1,
                }));
            }
            let manifest = serde_json::to_vec(&serde_json::json!({ "layers": layers })).unwrap();
            let got = signatures(&manifest).unwrap();
            prop_assert_eq!(got.len(), sigs.len());
            for (g, (d, size, sig)) in got.iter().zip(&sigs) {
                prop_assert_eq!(&g.payload, d);
                prop_assert_eq!(g.payload_size, u64::from(*size));
                prop_assert_eq!(&g.signature, sig);
            }
        }

        /// A simple-signing payload claims exactly the digest and reference written into it,
        /// whatever characters they hold; any other payload type is refused.
        #[test]
        fn payload_claims_what_it_says(digest in ".{0,80}", reference in ".{0,120}", other in "[a-z ]{0,40}") {
            let payload = |kind: &str| serde_json::to_vec(&serde_json::json!({
                "critical": {
                    "identity": { "docker-reference": reference },
                    "image": { "docker-manifest-digest": digest },
                    "type": kind,
                },
                "optional": null,
            })).unwrap();
            let c = claim(&payload("cosign container image signature")).unwrap();
            prop_assert_eq!(&c.digest, &digest);
            prop_assert_eq!(&c.reference, &reference);
            if other != "cosign container image signature" {
                prop_assert!(claim(&payload(&other)).is_err());
            }
        }
    }
}
