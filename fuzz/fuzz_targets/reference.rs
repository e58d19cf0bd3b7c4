//! Tags and references: a reference is a digest when it has a colon, else a tag matching
//! `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`; what is accepted prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::oci::{Digest, Reference, Tag};

fn tag_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

fuzz_target!(|s: &str| {
    assert_eq!(Tag::parse(s).is_ok(), tag_ok(s), "{s:?}");
    match Reference::parse(s) {
        Ok(r) => {
            assert_eq!(r.to_string(), s);
            match r {
                Reference::Tag(_) => assert!(!s.contains(':') && tag_ok(s)),
                Reference::Digest(_) => assert!(Digest::parse(s).is_ok()),
            }
        }
        Err(e) => assert!(e.to_string().len() <= 4096),
    }
});
