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
