//! The `verify` section as written in the config file (an ordered list of rules), and its check
//! into a [`Policy`]: every pattern compiled in the ACL's language, every key file read.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::keys::TrustedKey;
use super::{Mode, Policy, Rule};
use crate::auth::acl::NamePattern;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRuleConfig {
    /// Repositories the rule covers, in the ACL's pattern language, on the name as stored.
    #[serde(rename = "match")]
    pub pattern: String,
    /// PEM public key files; a signature by any one of them passes.
    pub keys: Vec<PathBuf>,
    #[serde(default)]
    pub mode: Mode,
}

/// The policy, or every problem keyed within the section (`0.match`, `1.keys.0`, …).
pub fn check(rules: &[VerifyRuleConfig]) -> Result<Policy, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let pattern = NamePattern::compile(&r.pattern)
            .map_err(|m| problems.push((format!("{i}.match"), m)))
            .ok();
        if r.keys.is_empty() {
            problems.push((
                format!("{i}.keys"),
                "needs at least one public key file".into(),
            ));
        }
        let mut keys = Vec::new();
        for (j, path) in r.keys.iter().enumerate() {
            match TrustedKey::load(path) {
                Ok(k) => keys.push(k),
                Err(m) => problems.push((format!("{i}.keys.{j}"), m)),
            }
        }
        if let Some(pattern) = pattern {
            out.push(Rule::new(r.pattern.clone(), pattern, keys, r.mode));
        }
    }
    if problems.is_empty() {
        Ok(Policy { rules: out })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `openssl ecparam -name prime256v1 -genkey | openssl ec -pubout` and
    // `openssl genpkey -algorithm ED25519 | openssl pkey -pubout`.
    const P256: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+vtm1l7lm33OVoa3W94wPqkDOdTE\nEpr/3UL8zGjQO+YTJ1MYFmTinkbO+2aGEaHe7iebDYYaNL3SbgsPLuR7lQ==\n-----END PUBLIC KEY-----\n";
    const ED25519: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAAsdCjpnUHxIy7Frx8jtJTC9/c+cyvlrloVnjg7wdMrA=\n-----END PUBLIC KEY-----\n";

    fn rule(pattern: &str, keys: &[PathBuf]) -> VerifyRuleConfig {
        VerifyRuleConfig {
            pattern: pattern.into(),
            keys: keys.to_vec(),
            mode: Mode::Enforce,
        }
    }

    #[test]
    fn every_problem_is_keyed_within_the_section() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.pub");
        std::fs::write(&good, P256).unwrap();
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "not a key").unwrap();
        let missing = dir.path().join("missing.pub");
        let ps = check(&[
            rule("myorg/**", std::slice::from_ref(&good)),
            rule("/[/", &[bad, missing]),
            rule("x/*", &[]),
        ])
        .unwrap_err();
        let keys: Vec<&str> = ps.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["1.match", "1.keys.0", "1.keys.1", "2.keys"],
            "{ps:?}"
        );
        assert!(ps[2].1.contains("cannot read"), "{ps:?}");
    }

    #[test]
    fn first_match_applies_and_the_key_set_is_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pub"), dir.path().join("b.pub"));
        std::fs::write(&a, P256).unwrap();
        std::fs::write(&b, ED25519).unwrap();
        let p = check(&[
            rule("myorg/**", std::slice::from_ref(&a)),
            rule("**", std::slice::from_ref(&a)),
        ])
        .unwrap();
        assert_eq!(p.rule_for("myorg/a/b").unwrap().source, "myorg/**");
        assert_eq!(p.rule_for("other/a").unwrap().source, "**");
        let id = |keys: &[PathBuf]| {
            check(&[rule("myorg/**", keys)]).unwrap().rules[0]
                .id()
                .to_owned()
        };
        assert_eq!(p.rules[0].id(), id(std::slice::from_ref(&a)));
        assert_ne!(p.rules[0].id(), p.rules[1].id(), "another pattern");
        assert_ne!(
            id(std::slice::from_ref(&a)),
            id(&[a.clone(), b.clone()]),
            "a key added"
        );
        assert_eq!(id(&[a.clone(), b.clone()]), id(&[b, a]), "the same set");
        assert!(check(&[]).unwrap().rule_for("myorg/a").is_none());
    }
}
