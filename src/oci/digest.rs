//! Content digests (`sha256:<hex>`, `sha512:<hex>`): strict parsing per the OCI image spec and
//! incremental hashing for verifying streams while they pass through.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<hex>)")]
    MissingAlgorithm(String),
    #[error("digest algorithm {0:?} is not supported (sha256 and sha512 are)")]
    UnsupportedAlgorithm(String),
    #[error("digest {digest:?}: {algorithm} needs {expected} lowercase hex characters")]
    BadEncoding {
        digest: String,
        algorithm: &'static str,
        expected: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest. The hex part is always lowercase, so string equality is digest equality.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(truncate(s)))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(truncate(other))),
        };
        let valid = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestError::BadEncoding {
                digest: truncate(s),
                algorithm: algorithm.as_str(),
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The SHA-256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Self {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(data);
        h.finish()
    }

    /// True when `data` hashes to this digest.
    pub fn verify(&self, data: &[u8]) -> bool {
        let mut h = Hasher::new(self.algorithm);
        h.update(data);
        h.finish() == *self
    }
}

fn truncate(s: &str) -> String {
    // Error messages echo input; cap it so a hostile request cannot make a huge response.
    s.chars().take(140).collect()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

/// Incremental hasher; aws-lc-rs because it is roughly twice as fast as pure Rust SHA-256 on
/// machines without SHA extensions, and every byte of every fill passes through here.
pub struct Hasher {
    algorithm: Algorithm,
    ctx: aws_lc_rs::digest::Context,
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        let alg = match algorithm {
            Algorithm::Sha256 => &aws_lc_rs::digest::SHA256,
            Algorithm::Sha512 => &aws_lc_rs::digest::SHA512,
        };
        Hasher {
            algorithm,
            ctx: aws_lc_rs::digest::Context::new(alg),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest {
            algorithm: self.algorithm,
            hex: hex::encode(self.ctx.finish().as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_sha256() {
        let d = Digest::parse(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d, Digest::sha256_of(b""));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:xyz",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:../../etc/passwd",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn incremental_equals_oneshot() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Digest::sha256_of(b"hello world"));
        assert!(Digest::sha256_of(b"x").verify(b"x"));
        assert!(!Digest::sha256_of(b"x").verify(b"y"));
    }
}

/// Property tests, and the digest strategy other modules' property tests use.
#[cfg(test)]
pub(crate) mod props {
    use proptest::prelude::*;

    use super::*;

    /// Any valid digest (as a hash of arbitrary bytes would give, or any hex of the right length).
    pub(crate) fn digest() -> impl Strategy<Value = Digest> {
        prop_oneof![
            "[0-9a-f]{64}".prop_map(|h| Digest::parse(&format!("sha256:{h}")).unwrap()),
            "[0-9a-f]{128}".prop_map(|h| Digest::parse(&format!("sha512:{h}")).unwrap()),
        ]
    }

    /// Strings that are almost digests: one character changed, missing or added, the wrong case,
    /// the wrong algorithm, or an attack fragment in the hex.
    fn near_digest() -> impl Strategy<Value = String> {
        (
            digest(),
            any::<prop::sample::Index>(),
            prop_oneof![
                Just("G"),
                Just("A"),
                Just(""),
                Just("00"),
                Just(":"),
                Just("/"),
                Just(".."),
                Just("%2e"),
                Just("\0"),
                Just("\\"),
                Just("é"),
            ],
        )
            .prop_map(|(d, at, junk)| {
                let s = d.to_string();
                let i = at.index(s.len());
                let mut out = s[..i].to_owned();
                out.push_str(junk);
                // Replace the character at `i` (or insert at the end).
                out.push_str(s.get(i + 1..).unwrap_or(""));
                out
            })
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(d in digest()) {
            let s = d.to_string();
            prop_assert_eq!(Digest::parse(&s).unwrap(), d.clone());
            prop_assert_eq!(s.parse::<Digest>().unwrap(), d);
        }

        /// Accepted exactly by the strict grammar: `sha256:` + 64 or `sha512:` + 128 lowercase hex.
        #[test]
        fn accepted_iff_strict_grammar(s in prop_oneof![
            near_digest(),
            "(sha256|sha512|sha384|SHA256)?:?[0-9a-fA-F]{60,130}",
            any::<String>(),
        ]) {
            let re = regex::Regex::new(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$").unwrap();
            let got = Digest::parse(&s);
            prop_assert_eq!(got.is_ok(), re.is_match(&s), "{:?}", s);
            match got {
                Ok(d) => {
                    prop_assert_eq!(d.to_string(), s);
                    // What ends up in storage paths: only lowercase hex.
                    prop_assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                }
                Err(e) => prop_assert!(e.to_string().len() <= 4096),
            }
        }

        #[test]
        fn incremental_hash_equals_one_shot(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            sha512 in any::<bool>(),
        ) {
            let alg = if sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 };
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            points.sort_unstable();
            let mut h = Hasher::new(alg);
            let mut last = 0;
            for p in points.into_iter().chain([data.len()]) {
                h.update(&data[last..p]);
                last = p;
            }
            let d = h.finish();
            prop_assert_eq!(d.algorithm(), alg);
            prop_assert!(d.verify(&data));
            prop_assert_eq!(Digest::parse(&d.to_string()).unwrap(), d.clone());
            if !sha512 {
                prop_assert_eq!(&d, &Digest::sha256_of(&data));
            }
            let mut other = data.clone();
            other.push(0);
            prop_assert!(!d.verify(&other));
        }
    }
}
