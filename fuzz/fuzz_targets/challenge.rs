//! `WWW-Authenticate` values from an upstream: an answer, never a panic; error positions lie
//! within the header; `parse` is the first of `parse_all`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::upstream::{Challenge, ChallengeError};

fuzz_target!(|s: &str| {
    match Challenge::parse_all(s) {
        Ok(all) => {
            assert!(!all.is_empty());
            for c in &all {
                assert!(!c.scheme.is_empty());
                assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
                assert!(
                    c.params
                        .keys()
                        .all(|k| !k.is_empty() && *k == k.to_ascii_lowercase())
                );
            }
            assert_eq!(Challenge::parse(s).ok().as_ref(), all.first());
        }
        Err(ChallengeError::Malformed(i)) => assert!(i <= s.len()),
        Err(ChallengeError::Empty) => {}
    }
});
