//! cosign signature manifests and simple-signing payloads, as any registry may serve them: an
//! answer, never a panic. Every signature found names a valid payload digest, its keyless parts
//! (certificate, chain, log entry annotations) parse or are refused, and a payload's claim is
//! what it says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::oci::Digest;
use ocimirror::verify::{cosign, is_signature_artifact, reference_names};

fuzz_target!(|input: (&[u8], &str)| {
    let (body, repo) = input;
    let _ = is_signature_artifact(body);
    if let Ok(signatures) = cosign::signatures(body) {
        for s in signatures {
            assert_eq!(Digest::parse(&s.payload.to_string()).unwrap(), s.payload);
            if let Some(Ok(parts)) = s.keyless() {
                assert!(!parts.certificate.is_empty());
                assert!(parts.log.len() <= 1);
            }
        }
    }
    if let Ok(claim) = cosign::claim(body) {
        // A claim names what the payload holds, byte for byte.
        let text = String::from_utf8_lossy(body);
        assert!(claim.digest.is_empty() || text.contains(claim.digest.as_str()) || body.contains(&b'\\'));
        let _ = reference_names(&claim.reference, repo);
    }
});
