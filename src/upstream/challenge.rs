//! `WWW-Authenticate` challenges (RFC 9110 §11.6.1): each challenge's scheme and auth-params, as
//! registries send them (`Bearer realm="…",service="…",scope="…"`, `Basic realm="…"`, or several
//! in one header, e.g. `Basic realm="…", Bearer realm="…"`).

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

    /// Parse the first challenge of a well-formed header value.
    pub fn parse(header: &str) -> Result<Self, ChallengeError> {
        Self::parse_all(header)?
            .into_iter()
            .next()
            .ok_or(ChallengeError::Empty)
    }

    /// Every challenge in a header value, in order. RFC 9110 §11.6.1: the value is a
    /// comma-separated list of challenges, each a scheme followed by a token68 or by
    /// comma-separated auth-params; after a comma, a token followed by `=` is another
    /// parameter of the same challenge, any other token starts the next challenge.
    pub fn parse_all(header: &str) -> Result<Vec<Self>, ChallengeError> {
        let s = header.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            // Empty list elements are allowed.
            while i < s.len() && (s[i] == b',' || s[i] == b' ' || s[i] == b'\t') {
                i += 1;
            }
            if i >= s.len() {
                break;
            }
            let (c, next) = parse_one(header, i)?;
            out.push(c);
            i = next;
        }
        if out.is_empty() {
            return Err(ChallengeError::Empty);
        }
        Ok(out)
    }

    /// The order in which the mirror answers challenges offered together: Bearer (a token per
    /// repository, what a registry means when it offers it) before Basic, then the rest.
    pub fn preference(&self) -> u8 {
        match self.scheme.as_str() {
            "bearer" => 0,
            "basic" => 1,
            _ => 2,
        }
    }
}

/// One challenge starting at `i` (its scheme): the challenge, and where the next one starts
/// (or the end of the header).
fn parse_one(header: &str, mut i: usize) -> Result<(Challenge, usize), ChallengeError> {
    let s = header.as_bytes();
    let start = i;
    i = token_end(s, i);
    if i == start {
        return Err(ChallengeError::Malformed(i));
    }
    let mut c = Challenge {
        scheme: header[start..i].to_ascii_lowercase(),
        params: HashMap::new(),
    };
    let mut first = true;
    loop {
        let ws = i;
        i = skip_ws(s, i);
        if i >= s.len() {
            return Ok((c, i));
        }
        if s[i] == b',' {
            // Separators (empty elements allowed), then another auth-param of this challenge
            // or the next challenge's scheme.
            while i < s.len() && (s[i] == b',' || s[i] == b' ' || s[i] == b'\t') {
                i += 1;
            }
            if i >= s.len() {
                return Ok((c, i));
            }
            let end = token_end(s, i);
            if end == i {
                return Err(ChallengeError::Malformed(i));
            }
            let after = skip_ws(s, end);
            if after >= s.len() || s[after] != b'=' {
                return Ok((c, i));
            }
        } else if first && i > ws {
            let end = token_end(s, i);
            if end == i {
                return Err(ChallengeError::Malformed(i));
            }
            let after = skip_ws(s, end);
            if after >= s.len() || s[after] != b'=' {
                // A token68 (no registry sends one): nothing the mirror uses.
                i = after;
                first = false;
                continue;
            }
        } else {
            return Err(ChallengeError::Malformed(i));
        }
        first = false;
        // An auth-param: `token BWS "=" BWS ( token / quoted-string )`.
        let ks = i;
        i = token_end(s, i);
        let key = header[ks..i].to_ascii_lowercase();
        i = skip_ws(s, skip_ws(s, i) + 1);
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
                    Some(&b) => {
                        v.push(b);
                        i += 1;
                    }
                }
            }
            String::from_utf8(v).map_err(|_| ChallengeError::Malformed(i))?
        } else {
            let vs = i;
            i = token_end(s, i);
            header[vs..i].to_owned()
        };
        c.params.entry(key).or_insert(value);
    }
}

fn token_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_token(s[i]) {
        i += 1;
    }
    i
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
    fn parses_every_challenge_of_a_header() {
        let all = Challenge::parse_all(
            r#"Basic realm="https://r.example/", Bearer realm="https://auth.example/token",service="reg", Negotiate abc, Other"#,
        )
        .unwrap();
        let schemes: Vec<&str> = all.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate", "other"]);
        assert_eq!(all[0].param("realm"), Some("https://r.example/"));
        assert_eq!(all[1].param("realm"), Some("https://auth.example/token"));
        assert_eq!(all[1].param("service"), Some("reg"));
        assert!(all[2].params.is_empty() && all[3].params.is_empty());
        // A challenge without parameters, then the next one.
        let all = Challenge::parse_all("Basic, Bearer realm=x").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].param("realm"), Some("x"));
        // `parse` is the first of a well-formed list.
        assert_eq!(
            Challenge::parse(r#"Basic realm="a", Bearer realm="b""#)
                .unwrap()
                .scheme,
            "basic"
        );
        let mut by_preference =
            Challenge::parse_all(r#"Basic realm="a", Bearer realm="b""#).unwrap();
        by_preference.sort_by_key(Challenge::preference);
        assert_eq!(by_preference[0].scheme, "bearer");
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

        /// Several written challenges joined by commas parse back to each of them, in order.
        #[test]
        fn written_challenge_lists_parse_back(
            list in proptest::collection::vec(
                (token(), proptest::collection::vec((token(), value()), 0..4)),
                1..4,
            ),
            sep in proptest::sample::select(vec![", ", ",", " , ", ",, ", ",\t"]),
        ) {
            let header = list
                .iter()
                .map(|(scheme, params)| {
                    let ps: Vec<String> =
                        params.iter().map(|(k, (_, w))| format!("{k}={w}")).collect();
                    if ps.is_empty() {
                        scheme.clone()
                    } else {
                        format!("{scheme} {}", ps.join(sep))
                    }
                })
                .collect::<Vec<_>>()
                .join(sep);
            let got = Challenge::parse_all(&header).unwrap();
            prop_assert_eq!(got.len(), list.len());
            for (c, (scheme, params)) in got.iter().zip(&list) {
                prop_assert_eq!(&c.scheme, &scheme.to_ascii_lowercase());
                let mut want = HashMap::new();
                for (k, (v, _)) in params {
                    want.entry(k.to_ascii_lowercase()).or_insert_with(|| v.clone());
                }
                prop_assert_eq!(&c.params, &want);
            }
        }

        /// Arbitrary header values: never a panic, and an error position within the input.
        #[test]
        fn arbitrary_headers(h in prop_oneof![
            any::<String>(),
            "[A-Za-z]{1,8}( [a-z]{1,6}=(\"[^\"]{0,10}\"?|[a-z]{0,5})[, ]{0,2}){0,4}",
            "[ \t,=\"\\\\a-zA-Z]{0,30}",
        ]) {
            match Challenge::parse_all(&h) {
                Ok(all) => {
                    prop_assert!(!all.is_empty());
                    for c in all {
                        prop_assert!(!c.scheme.is_empty());
                        prop_assert!(c.params.keys().all(|k| !k.is_empty() && k.bytes().all(is_token)));
                    }
                }
                Err(ChallengeError::Malformed(i)) => prop_assert!(i <= h.len()),
                Err(ChallengeError::Empty) => {}
            }
            // `parse` agrees with the first of `parse_all`.
            prop_assert_eq!(
                Challenge::parse(&h).ok(),
                Challenge::parse_all(&h).ok().and_then(|v| v.into_iter().next())
            );
        }
    }
}
