//! Transparency-log entries in cosign's bundle annotation: parsed or refused, never a panic, and
//! never vouched for by a configured log key (the fuzzer cannot sign for the log).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::verify::keys::TrustedKey;
use ocimirror::verify::tlog::{self, LogEntry, Signed};

/// An ECDSA P-256 public key whose private half nobody here holds.
const P256: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+vtm1l7lm33OVoa3W94wPqkDOdTE\nEpr/3UL8zGjQO+YTJ1MYFmTinkbO+2aGEaHe7iebDYYaNL3SbgsPLuR7lQ==\n-----END PUBLIC KEY-----\n";

fuzz_target!(|input: (&str, &[u8], &[u8], &[u8])| {
    let (annotation, message, signature, certificate) = input;
    let Ok(entry) = LogEntry::from_cosign_annotation(annotation) else {
        return;
    };
    let key = TrustedKey::from_pem(P256.as_bytes()).unwrap();
    let entries = [entry];
    for signed in [
        Signed::Message(message),
        Signed::Dsse {
            payload: message,
            pae: signature,
        },
    ] {
        assert!(tlog::integrated_time(&entries, &[key.clone()], signed, signature, certificate).is_err());
        assert!(tlog::integrated_time(&entries, &[], signed, signature, certificate).is_err());
    }
});
