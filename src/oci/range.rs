//! The HTTP `Range` header, single byte ranges only (what registry clients send to resume).

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error(
        "malformed Range header {0:?}: expected bytes=START-END, bytes=START- or bytes=-SUFFIX"
    )]
    Malformed(String),
    #[error("multiple ranges are not supported; request one range at a time")]
    Multiple,
    #[error("range {0:?} cannot be satisfied for a blob of {1} bytes")]
    Unsatisfiable(String, u64),
}

/// A range as requested, before the blob's size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=start-end` (end inclusive) or `bytes=start-`.
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    pub fn parse(header: &str) -> Result<Self, RangeError> {
        let malformed = || RangeError::Malformed(header.chars().take(100).collect());
        let spec = header
            .trim()
            .strip_prefix("bytes=")
            .ok_or_else(malformed)?
            .trim();
        if spec.contains(',') {
            return Err(RangeError::Multiple);
        }
        let (a, b) = spec.split_once('-').ok_or_else(malformed)?;
        let num = |s: &str| -> Result<u64, RangeError> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(malformed());
            }
            s.parse().map_err(|_| malformed())
        };
        if a.is_empty() {
            return Ok(ByteRange::Suffix(num(b)?));
        }
        let start = num(a)?;
        let end = if b.is_empty() { None } else { Some(num(b)?) };
        if end.is_some_and(|e| e < start) {
            return Err(malformed());
        }
        Ok(ByteRange::From { start, end })
    }

    /// Resolve against the blob size to an inclusive `(first, last)` pair.
    pub fn resolve(&self, size: u64) -> Result<(u64, u64), RangeError> {
        let unsat = || RangeError::Unsatisfiable(self.to_string(), size);
        match *self {
            ByteRange::From { start, end } => {
                if start >= size {
                    return Err(unsat());
                }
                let last = end.map_or(size - 1, |e| e.min(size - 1));
                Ok((start, last))
            }
            ByteRange::Suffix(n) => {
                if n == 0 || size == 0 {
                    return Err(unsat());
                }
                Ok((size.saturating_sub(n), size - 1))
            }
        }
    }
}

impl std::fmt::Display for ByteRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ByteRange::From {
                start,
                end: Some(e),
            } => write!(f, "bytes={start}-{e}"),
            ByteRange::From { start, end: None } => write!(f, "bytes={start}-"),
            ByteRange::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            ByteRange::parse("bytes=0-99").unwrap(),
            ByteRange::From {
                start: 0,
                end: Some(99)
            }
        );
        assert_eq!(
            ByteRange::parse("bytes=5-").unwrap(),
            ByteRange::From {
                start: 5,
                end: None
            }
        );
        assert_eq!(
            ByteRange::parse("bytes=-10").unwrap(),
            ByteRange::Suffix(10)
        );
        assert_eq!(ByteRange::parse("bytes=0-1,5-6"), Err(RangeError::Multiple));
        for bad in [
            "0-1",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=+1-2",
            "items=0-1",
        ] {
            assert!(ByteRange::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn resolves_against_size() {
        let r = |s| ByteRange::parse(s).unwrap();
        assert_eq!(r("bytes=0-99").resolve(50).unwrap(), (0, 49));
        assert_eq!(r("bytes=10-").resolve(50).unwrap(), (10, 49));
        assert_eq!(r("bytes=-10").resolve(50).unwrap(), (40, 49));
        assert_eq!(r("bytes=-100").resolve(50).unwrap(), (0, 49));
        assert!(r("bytes=50-").resolve(50).is_err());
        assert!(r("bytes=-0").resolve(50).is_err());
        assert!(r("bytes=0-").resolve(0).is_err());
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn range() -> impl Strategy<Value = ByteRange> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| ByteRange::From {
                start: a.min(b),
                end: Some(a.max(b)),
            }),
            (0u64..1 << 20, 0u64..1 << 20).prop_map(|(a, len)| ByteRange::From {
                start: a,
                end: Some(a.saturating_add(len)),
            }),
            any::<u64>().prop_map(|start| ByteRange::From { start, end: None }),
            (0u64..1 << 20).prop_map(|start| ByteRange::From { start, end: None }),
            any::<u64>().prop_map(ByteRange::Suffix),
            (0u64..1 << 20).prop_map(ByteRange::Suffix),
        ]
    }

    fn size() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..4, 0u64..1 << 21, any::<u64>()]
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(r in range()) {
            prop_assert_eq!(ByteRange::parse(&r.to_string()).unwrap(), r);
            // Surrounding whitespace is tolerated.
            prop_assert_eq!(ByteRange::parse(&format!("  {r} ")).unwrap(), r);
        }

        /// A resolved range lies within the blob, is never empty, and is what was asked for.
        #[test]
        fn resolves_within_size(r in range(), size in size()) {
            match r.resolve(size) {
                Ok((first, last)) => {
                    prop_assert!(first <= last);
                    prop_assert!(last < size);
                    match r {
                        ByteRange::From { start, end } => {
                            prop_assert_eq!(first, start);
                            prop_assert_eq!(last, end.unwrap_or(u64::MAX).min(size - 1));
                        }
                        ByteRange::Suffix(n) => {
                            prop_assert_eq!(last, size - 1);
                            prop_assert_eq!(last - first + 1, n.min(size));
                        }
                    }
                }
                Err(e) => {
                    prop_assert!(matches!(e, RangeError::Unsatisfiable(_, s) if s == size));
                    match r {
                        ByteRange::From { start, .. } => prop_assert!(start >= size),
                        ByteRange::Suffix(n) => prop_assert!(n == 0 || size == 0),
                    }
                }
            }
        }

        /// Whatever the header, parsing does not panic; what it accepts resolves safely and
        /// prints back to an equivalent header; refusals stay short.
        #[test]
        fn arbitrary_headers(h in prop_oneof![
            "bytes=[0-9 ]{0,22}-[0-9 ]{0,22}",
            "(bytes|BYTES|items)?=?[-0-9,+ ]{0,30}",
            any::<String>(),
        ], size in size()) {
            match ByteRange::parse(&h) {
                Ok(r) => {
                    prop_assert_eq!(ByteRange::parse(&r.to_string()).unwrap(), r);
                    if let Ok((first, last)) = r.resolve(size) {
                        prop_assert!(first <= last && last < size);
                    }
                }
                Err(e) => prop_assert!(e.to_string().len() <= 4096),
            }
        }

        /// Refusals echo only the start of the header, escaped.
        #[test]
        fn errors_stay_short_for_huge_headers(unit in any::<String>(), n in 1usize..2000) {
            let h = format!("bytes={}", format!("{unit}\u{1b}").repeat(n));
            if let Err(e) = ByteRange::parse(&h) {
                prop_assert!(e.to_string().len() <= 4096, "{} bytes", e.to_string().len());
            }
        }

        /// Numbers beyond u64 are malformed, not wrapped.
        #[test]
        fn overflowing_numbers_are_malformed(digits in "[1-9][0-9]{20,40}") {
            for h in [format!("bytes={digits}-"), format!("bytes=-{digits}"), format!("bytes=0-{digits}")] {
                let r = ByteRange::parse(&h);
                prop_assert!(matches!(r, Err(RangeError::Malformed(_))), "{:?}", r);
            }
        }
    }
}
