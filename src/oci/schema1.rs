//! Signed schema 1 manifests (`application/vnd.docker.distribution.manifest.v1+prettyjws`, still
//! served by some registries for old images). They are Docker's libtrust JWS in "pretty" form:
//! the manifest JSON with a `signatures` array spliced in before its end. The digest such a
//! manifest is known by (its `Docker-Content-Digest`, what clients pull it by) is the digest of
//! the payload without the signatures, which each signature's protected header describes:
//! the first `formatLength` bytes of the document, then `formatTail` (base64url). The mirror
//! stores and serves the signed bytes as they came, under that digest, as Distribution does.
//!
//! The signatures themselves are not checked: they are made with throwaway keys, and clients
//! stopped checking them long ago; what makes the content trustworthy is the digest, checked here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::digest::{Digest, Hasher};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Signed {
    schema_version: u32,
    signatures: Vec<Signature>,
}

#[derive(Deserialize)]
struct Signature {
    protected: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Protected {
    format_length: usize,
    format_tail: String,
}

fn base64url(s: &str) -> Option<Vec<u8>> {
    // libtrust strips the padding; some writers keep it.
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// The payload a signed schema 1 manifest was signed over, or `None` when `body` is not one:
/// not schema 1, no signatures, or signatures that do not agree on a payload within the body.
pub fn payload(body: &[u8]) -> Option<Vec<u8>> {
    let signed: Signed = serde_json::from_slice(body).ok()?;
    if signed.schema_version != 1 {
        return None;
    }
    let mut format: Option<(usize, Vec<u8>)> = None;
    for sig in &signed.signatures {
        let protected: Protected = serde_json::from_slice(&base64url(&sig.protected)?).ok()?;
        let this = (protected.format_length, base64url(&protected.format_tail)?);
        match &format {
            None => format = Some(this),
            // Every signature must be over the same payload (libtrust: "formatting mismatch").
            Some(f) if *f == this => {}
            Some(_) => return None,
        }
    }
    let (length, tail) = format?;
    let mut out = body.get(..length)?.to_vec();
    out.extend_from_slice(&tail);
    Some(out)
}

/// The digest a manifest is known by: the digest of its bytes, or for a signed schema 1
/// manifest, of its payload.
pub fn manifest_digest(body: &[u8]) -> Digest {
    match payload(body) {
        Some(p) => Digest::sha256_of(&p),
        None => Digest::sha256_of(body),
    }
}

/// True when `body` is the manifest `d` names: its bytes hash to `d`, or it is a signed schema 1
/// manifest whose payload does.
pub fn manifest_matches(d: &Digest, body: &[u8]) -> bool {
    if d.verify(body) {
        return true;
    }
    payload(body).is_some_and(|p| {
        let mut h = Hasher::new(d.algorithm());
        h.update(&p);
        h.finish() == *d
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signed schema 1 manifest as libtrust writes it: the payload's final `\n}` replaced by
    /// the signatures and the same tail.
    pub fn sign(payload: &str) -> Vec<u8> {
        let cut = payload
            .rfind('\n')
            .expect("pretty JSON ends with a newline and }");
        let tail = &payload[cut..];
        let protected = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"formatLength":{cut},"formatTail":"{}","time":"2015-04-08T18:52:59Z"}}"#,
            URL_SAFE_NO_PAD.encode(tail)
        ));
        format!(
            "{},\n   \"signatures\": [\n      {{\n         \"header\": {{\"alg\": \"ES256\"}},\n         \"signature\": \"c2ln\",\n         \"protected\": \"{protected}\"\n      }}\n   ]{tail}",
            &payload[..cut]
        )
        .into_bytes()
    }

    const PAYLOAD: &str = "{\n   \"schemaVersion\": 1,\n   \"name\": \"team/old\",\n   \"tag\": \"v1\",\n   \"architecture\": \"amd64\",\n   \"fsLayers\": [],\n   \"history\": []\n}";

    #[test]
    fn the_digest_of_a_signed_manifest_is_that_of_its_payload() {
        let signed = sign(PAYLOAD);
        assert_eq!(payload(&signed).unwrap(), PAYLOAD.as_bytes());
        let d = Digest::sha256_of(PAYLOAD.as_bytes());
        assert_eq!(manifest_digest(&signed), d);
        assert!(manifest_matches(&d, &signed));
        assert!(!Digest::sha256_of(&signed).eq(&d));
        assert!(manifest_matches(&Digest::sha256_of(&signed), &signed));
    }

    #[test]
    fn anything_else_is_known_by_its_bytes() {
        for body in [
            PAYLOAD.as_bytes().to_vec(),
            br#"{"schemaVersion":2,"signatures":[]}"#.to_vec(),
            br#"{"schemaVersion":1,"signatures":[]}"#.to_vec(),
            b"not json".to_vec(),
        ] {
            assert_eq!(payload(&body), None);
            assert_eq!(manifest_digest(&body), Digest::sha256_of(&body));
        }
    }

    #[test]
    fn tampered_or_inconsistent_signatures_match_nothing_but_the_bytes() {
        let signed = String::from_utf8(sign(PAYLOAD)).unwrap();
        let d = Digest::sha256_of(PAYLOAD.as_bytes());
        // The payload changed after signing.
        let tampered = signed.replace("team/old", "team/new");
        assert!(!manifest_matches(&d, tampered.as_bytes()));
        // A formatLength beyond the document.
        let long = URL_SAFE_NO_PAD.encode(r#"{"formatLength":99999,"formatTail":"Cn0"}"#);
        let bad = format!(r#"{{"schemaVersion":1,"signatures":[{{"protected":"{long}"}}]}}"#);
        assert_eq!(payload(bad.as_bytes()), None);
        // Two signatures over different payloads.
        let a = URL_SAFE_NO_PAD.encode(r#"{"formatLength":1,"formatTail":"fQ"}"#);
        let b = URL_SAFE_NO_PAD.encode(r#"{"formatLength":2,"formatTail":"fQ"}"#);
        let two = format!(
            r#"{{"schemaVersion":1,"signatures":[{{"protected":"{a}"}},{{"protected":"{b}"}}]}}"#
        );
        assert_eq!(payload(two.as_bytes()), None);
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any body: no panic, and the digest it is known by matches it.
        #[test]
        fn any_body_matches_the_digest_it_is_known_by(
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            prop_assert!(manifest_matches(&manifest_digest(&body), &body));
        }

        /// A document signed the libtrust way gives back exactly what was signed.
        #[test]
        fn signed_documents_give_back_their_payload(name in "[a-z/]{1,20}", layers in 0usize..4) {
            let doc = format!(
                "{{\n   \"schemaVersion\": 1,\n   \"name\": \"{name}\",\n   \"fsLayers\": [{}]\n}}",
                vec!["{}"; layers].join(",")
            );
            let signed = super::tests::sign(&doc);
            prop_assert_eq!(payload(&signed), Some(doc.clone().into_bytes()));
            prop_assert_eq!(manifest_digest(&signed), Digest::sha256_of(doc.as_bytes()));
        }
    }
}
