//! Repository names: accepted exactly when the distribution spec's grammar matches and the name
//! is at most 255 bytes; accepted names print back to themselves.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ocimirror::oci::RepoName;
use ocimirror::oci::name::MAX_NAME_LEN;
use regex::Regex;

static SPEC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$").unwrap()
});

fuzz_target!(|s: &str| {
    let expected = SPEC.is_match(s) && s.len() <= MAX_NAME_LEN;
    match RepoName::parse(s) {
        Ok(n) => {
            assert!(expected, "{s:?} accepted");
            assert_eq!(n.as_str(), s);
            let p = n.with_library_prefix();
            assert!(SPEC.is_match(p.as_str()));
        }
        Err(e) => {
            assert!(!expected, "{s:?} refused: {e}");
            assert!(e.to_string().len() <= 4096);
        }
    }
});
