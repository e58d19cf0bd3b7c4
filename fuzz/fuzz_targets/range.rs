//! `Range` headers: accepted ranges print back to an equivalent header and resolve within the
//! blob, never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::oci::ByteRange;

fuzz_target!(|input: (u64, &str)| {
    let (size, header) = input;
    match ByteRange::parse(header) {
        Ok(r) => {
            assert_eq!(ByteRange::parse(&r.to_string()).unwrap(), r);
            for size in [size, size % 1024, 0, 1] {
                if let Ok((first, last)) = r.resolve(size) {
                    assert!(
                        first <= last && last < size,
                        "{r} of {size}: {first}-{last}"
                    );
                }
            }
        }
        Err(e) => assert!(e.to_string().len() <= 4096),
    }
});
