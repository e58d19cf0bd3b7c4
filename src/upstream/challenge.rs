//! `WWW-Authenticate` challenges (RFC 7235): the scheme and its auth-params, as registries send
//! them (`Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`).

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `bearer`, `basic`, …
    pub scheme: String,
    /// Lowercased parameter names to values (unquoted, unescaped).
    pub params: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChallengeError {
    #[error("empty WWW-Authenticate header")]
    Empty,
    #[error("malformed WWW-Authenticate header near byte {0}")]
    Malformed(usize),
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Parse the first challenge in the header value. A header may carry several challenges;
    /// registries send one, so later ones are ignored.
    pub fn parse(header: &str) -> Result<Self, ChallengeError> {
        let s = header.as_bytes();
        let mut i = skip_ws(s, 0);
        let start = i;
        while i < s.len() && is_token(s[i]) {
            i += 1;
        }
        if i == start {
            return Err(ChallengeError::Empty);
        }
        let scheme = header[start..i].to_ascii_lowercase();
        let mut params = HashMap::new();
        loop {
            i = skip_ws(s, i);
            if i >= s.len() {
                break;
            }
            let ks = i;
            while i < s.len() && is_token(s[i]) {
                i += 1;
            }
            if i == ks {
                return Err(ChallengeError::Malformed(i));
            }
            let key = header[ks..i].to_ascii_lowercase();
            i = skip_ws(s, i);
            if i >= s.len() || s[i] != b'=' {
                // A bare token68 or the next challenge's scheme: stop at what we have.
                break;
            }
            i = skip_ws(s, i + 1);
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                loop {
                    match s.get(i) {
                        None => return Err(ChallengeError::Malformed(i)),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if i + 1 < s.len() => {
                            v.push(s[i + 1]);
                            i += 2;
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                String::from_utf8(v).map_err(|_| ChallengeError::Malformed(i))?
            } else {
                let vs = i;
                while i < s.len() && is_token(s[i]) {
                    i += 1;
                }
                header[vs..i].to_owned()
            };
            params.entry(key).or_insert(value);
            i = skip_ws(s, i);
            if i < s.len() {
                if s[i] == b',' {
                    i += 1;
                } else {
                    return Err(ChallengeError::Malformed(i));
                }
            }
        }
        Ok(Challenge { scheme, params })
    }
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && (s[i] == b' ' || s[i] == b'\t') {
        i += 1;
    }
    i
}

fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_bearer() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn parses_basic_and_unquoted_and_escapes() {
        let c = Challenge::parse(r#"Basic realm="a \"b\" c""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some(r#"a "b" c"#));
        let c = Challenge::parse("Bearer realm=x, Service=y").unwrap();
        assert_eq!(c.param("realm"), Some("x"));
        assert_eq!(c.param("service"), Some("y"));
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(Challenge::parse(""), Err(ChallengeError::Empty));
        assert!(Challenge::parse(r#"Bearer realm="unterminated"#).is_err());
        assert!(Challenge::parse(r#"Bearer realm="a" junk"#).is_err());
        assert!(Challenge::parse("Bearer ,=x").is_err());
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+.^_`|~/:-]{1,12}"
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec!["", " ", "  ", "\t", " \t "])
    }

    /// An auth-param value and how it is written: quoted (with `"` and `\` escaped) or, when it
    /// is a token, possibly bare.
    fn value() -> impl Strategy<Value = (String, String)> {
        prop_oneof![
            any::<String>().prop_map(|v| {
                let quoted = format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
                (v, quoted)
            }),
            token().prop_map(|t| (t.clone(), t)),
            ".{0,20}".prop_map(|v| {
                // Escaping any character is allowed and means the character.
                let quoted: String = v.chars().map(|c| format!("\\{c}")).collect();
                (v, format!("\"{quoted}\""))
            }),
        ]
    }

    proptest! {
        /// A challenge written from a scheme and parameters parses back to them: scheme and
        /// names lowercased, values unescaped, the first of repeated names kept.
        #[test]
        fn written_challenges_parse_back(
            scheme in token(),
            params in proptest::collection::vec((token(), value(), ws(), ws()), 0..6),
            lead in ws(),
            trail in ws(),
        ) {
            let mut header = format!("{lead}{scheme}");
            for (i, (k, (_, written), w1, w2)) in params.iter().enumerate() {
                header.push_str(if i == 0 { " " } else { "," });
                header.push_str(&format!("{w1}{k}{w2}={w1}{written}{w2}"));
            }
            header.push_str(trail);
            let c = Challenge::parse(&header).unwrap();
            prop_assert_eq!(&c.scheme, &scheme.to_ascii_lowercase());
            let mut want = HashMap::new();
            for (k, (v, _), _, _) in &params {
                want.entry(k.to_ascii_lowercase()).or_insert_with(|| v.clone());
            }
            prop_assert_eq!(c.params, want);
        }

        /// Arbitrary header values: never a panic, and an error position within the input.
        #[test]
        fn arbitrary_headers(h in prop_oneof![
            any::<String>(),
            "[A-Za-z]{1,8}( [a-z]{1,6}=(\"[^\"]{0,10}\"?|[a-z]{0,5})[, ]{0,2}){0,4}",
            "[ \t,=\"\\\\a-zA-Z]{0,30}",
        ]) {
            match Challenge::parse(&h) {
                Ok(c) => {
                    prop_assert!(!c.scheme.is_empty());
                    prop_assert!(c.params.keys().all(|k| !k.is_empty() && k.bytes().all(is_token)));
                }
                Err(ChallengeError::Malformed(i)) => prop_assert!(i <= h.len()),
                Err(ChallengeError::Empty) => {}
            }
        }
    }
}
