//! Manifest bodies (with any Content-Type): an answer, never a panic; every digest returned is
//! valid, and blobs are sorted without duplicates; the digest a body is known by (its signed
//! schema 1 payload's, else its own) matches it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::oci::{Digest, ManifestInfo, schema1};

fuzz_target!(|input: (Option<&str>, &[u8])| {
    let (content_type, body) = input;
    assert!(schema1::manifest_matches(&schema1::manifest_digest(body), body));
    if let Ok(info) = ManifestInfo::parse(body, content_type) {
        for d in info.blobs.iter().chain(&info.children) {
            assert_eq!(&Digest::parse(&d.to_string()).unwrap(), d);
        }
        assert!(info.blobs.windows(2).all(|w| w[0] < w[1]));
        assert!(!info.media_type.is_empty());
    }
});
