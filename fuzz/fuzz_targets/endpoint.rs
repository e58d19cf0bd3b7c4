//! Request paths: never a panic; what is accepted as a manifest, blob or tags request carries
//! no traversal fragment, and every storage key it leads to is made of plain segments.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use ocimirror::http::endpoint::{Endpoint, parse};
use ocimirror::oci::{Digest, Reference};
use ocimirror::layout;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
];

fuzz_target!(|input: (u8, &str)| {
    let (m, path) = input;
    let method = &METHODS[usize::from(m) % METHODS.len()];
    let Ok(ep) = parse(method, path) else {
        return;
    };
    let d = Digest::sha256_of(b"");
    let keys = match &ep {
        Endpoint::Tags(n) => vec![layout::repo_dir(n), layout::tags_dir(n)],
        Endpoint::Manifest(n, Reference::Tag(t)) => {
            vec![layout::tag_current(n, t), layout::tag_index(n, t, &d)]
        }
        Endpoint::Manifest(n, Reference::Digest(d)) => {
            vec![layout::revision_link(n, d), layout::blob_data(d)]
        }
        Endpoint::Blob(n, d) => vec![layout::layer_link(n, d), layout::blob_data(d)],
        _ => return,
    };
    for bad in ["%", "\\", "\0", "//", "/../", "/./"] {
        assert!(!path.contains(bad), "{path:?} accepted as {ep:?}");
    }
    for key in keys {
        assert!(
            key.split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."),
            "{path:?} -> {key:?}"
        );
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-:".contains(&b)),
            "{path:?} -> {key:?}"
        );
    }
});
