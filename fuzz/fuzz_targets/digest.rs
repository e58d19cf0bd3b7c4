//! Digests: only `sha256:` + 64 or `sha512:` + 128 lowercase hex characters are accepted, and
//! they print back to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::oci::Digest;

fuzz_target!(|s: &str| {
    match Digest::parse(s) {
        Ok(d) => {
            assert_eq!(d.to_string(), s);
            let want = match s.split_once(':') {
                Some(("sha256", _)) => 64,
                Some(("sha512", _)) => 128,
                other => panic!("accepted {other:?}"),
            };
            assert_eq!(d.hex().len(), want);
            assert!(
                d.hex()
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            );
        }
        Err(e) => assert!(e.to_string().len() <= 4096),
    }
});
