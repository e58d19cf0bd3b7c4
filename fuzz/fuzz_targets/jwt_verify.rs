//! Bearer tokens. Raw input is verified as a token: it must never verify (the fuzzer has no
//! trusted key) and never panic. Input starting with `!` is split at the first `.` into a
//! header and a payload, which are signed with a trusted key: that drives the claim checks
//! behind the signature, and whatever verifies must have passed them.
#![no_main]

use std::sync::LazyLock;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use ocimirror::auth::keys::{SigningKey, TrustStore};
use ocimirror::auth::token::{ACCEPTED_ALGORITHMS, TokenVerifier};

const ISS: &str = "ocimirror";
const AUD: &str = "mirror.example";

/// The test key pair ocimirror's own unit tests use (its private key is public).
static KEY: LazyLock<SigningKey> = LazyLock::new(|| {
    SigningKey::from_pem(
        include_bytes!("../../src/auth/testdata/rsa-pkcs1.key"),
        include_bytes!("../../src/auth/testdata/rsa.crt"),
    )
    .unwrap()
});

static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(|| {
    let mut trust = TrustStore::new();
    trust.add_signing_key(&KEY).unwrap();
    TokenVerifier::new(trust, vec![ISS.into()], AUD)
});

fn b64(b: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(b)
}

fuzz_target!(|data: &[u8]| {
    // Inside the test certificate's validity, so x5c chains are judged on their merits.
    let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000);
    match data.strip_prefix(b"!") {
        None => {
            let Ok(token) = std::str::from_utf8(data) else {
                return;
            };
            assert!(
                VERIFIER.verify_at(token, now).is_err(),
                "{token:?} verified"
            );
        }
        Some(rest) => {
            let (header, payload) = match rest.iter().position(|&b| b == b'.') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            let input = format!("{}.{}", b64(header), b64(payload));
            let sig = KEY.sign(input.as_bytes()).unwrap();
            let token = format!("{input}.{}", b64(&sig));
            if let Ok(claims) = VERIFIER.verify_at(&token, now) {
                let h: serde_json::Value = serde_json::from_slice(header).unwrap();
                let alg = h["alg"].as_str().unwrap();
                assert!(ACCEPTED_ALGORITHMS.contains(&alg), "{alg}");
                assert_eq!(claims.iss, ISS);
                assert!(claims.aud.contains(AUD));
            }
        }
    }
});
