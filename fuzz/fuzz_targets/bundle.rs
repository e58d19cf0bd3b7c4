//! Sigstore bundles, as any registry may serve them: a refusal, never a panic, and never a pass,
//! even with a trusted key configured (a bundle can only pass with a signature made by a key's
//! owner, which the fuzzer cannot make).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::oci::Digest;
use ocimirror::verify::bundle;
use ocimirror::verify::keys::TrustedKey;

/// An ECDSA P-256 public key whose private half nobody here holds.
const P256: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+vtm1l7lm33OVoa3W94wPqkDOdTE\nEpr/3UL8zGjQO+YTJ1MYFmTinkbO+2aGEaHe7iebDYYaNL3SbgsPLuR7lQ==\n-----END PUBLIC KEY-----\n";

fuzz_target!(|input: (&[u8], &[u8])| {
    let (bundle_bytes, body) = input;
    let key = TrustedKey::from_pem(P256.as_bytes()).unwrap();
    let digest = Digest::sha256_of(body);
    let trusted = bundle::verify(bundle_bytes, &digest, body, |_| true, &[key], None);
    assert!(trusted.is_err());
    assert!(bundle::verify(bundle_bytes, &digest, body, |_| true, &[], None).is_err());
});
