//! `WWW-Authenticate` values from an upstream: an answer, never a panic; error positions lie
//! within the header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::upstream::{Challenge, ChallengeError};

fuzz_target!(|s: &str| {
    match Challenge::parse(s) {
        Ok(c) => {
            assert!(!c.scheme.is_empty());
            assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
            assert!(
                c.params
                    .keys()
                    .all(|k| !k.is_empty() && *k == k.to_ascii_lowercase())
            );
        }
        Err(ChallengeError::Malformed(i)) => assert!(i <= s.len()),
        Err(ChallengeError::Empty) => {}
    }
});
