//! The `verify` section as written in the config file (an ordered list of rules), and its check
//! into a [`Policy`]: every pattern compiled in the ACL's language, every key and certificate
//! file read.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::keyless::{self, Keyless};
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
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// Keyless signatures (a CA's certificate and a transparency-log proof) also pass, when the
    /// certificate names this identity.
    #[serde(default)]
    pub keyless: Option<KeylessConfig>,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeylessConfig {
    /// PEM certificate files of the CA (Fulcio): its roots, and intermediates.
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    /// PEM public keys of the transparency log (Rekor).
    #[serde(default)]
    pub tlog_keys: Vec<PathBuf>,
    /// Sigstore's `trusted_root.json`: its CAs and log keys, beside `roots` and `tlog_keys`.
    #[serde(default)]
    pub trusted_root: Option<PathBuf>,
    /// The OIDC issuer the certificate must name, exactly.
    #[serde(default)]
    pub issuer: String,
    /// The certificate's subject (SAN URI or email), in the ACL's pattern language.
    #[serde(default)]
    pub subject: String,
}

/// The keyless trust of rule `i`, or its problems keyed within the section.
fn check_keyless(
    i: usize,
    k: &KeylessConfig,
    problems: &mut Vec<(String, String)>,
) -> Option<Keyless> {
    let before = problems.len();
    let mut problem = |key: &str, m: String| problems.push((format!("{i}.keyless.{key}"), m));
    let mut certs = Vec::new();
    let mut tlog_keys = Vec::new();
    let mut files = Vec::new();
    if let Some(path) = &k.trusted_root {
        match keyless::read_trusted_root(path) {
            Ok((c, t)) => {
                certs.extend(c);
                tlog_keys.extend(t);
            }
            Err(m) => problem("trusted_root", m),
        }
        files.push(path.clone());
    }
    for (j, path) in k.roots.iter().enumerate() {
        match keyless::read_certificates(path) {
            Ok(c) => certs.extend(c),
            Err(m) => problem(&format!("roots.{j}"), m),
        }
        files.push(path.clone());
    }
    for (j, path) in k.tlog_keys.iter().enumerate() {
        match TrustedKey::load(path) {
            Ok(key) => tlog_keys.push(key),
            Err(m) => problem(&format!("tlog_keys.{j}"), m),
        }
        files.push(path.clone());
    }
    if k.roots.is_empty() && k.trusted_root.is_none() {
        problem(
            "roots",
            "needs at least one PEM certificate file of the certificate authority (Fulcio), \
             or a trusted_root"
                .into(),
        );
    }
    if k.tlog_keys.is_empty() && k.trusted_root.is_none() {
        problem(
            "tlog_keys",
            "needs at least one PEM public key of the transparency log (Rekor), or a \
             trusted_root"
                .into(),
        );
    }
    if k.issuer.trim().is_empty() {
        problem(
            "issuer",
            "needs the OIDC issuer the certificates must name \
             (https://token.actions.githubusercontent.com for GitHub Actions)"
                .into(),
        );
    }
    if k.subject.is_empty() {
        problem(
            "subject",
            "needs a pattern for the certificates' subject, in the ACL's pattern language \
             (https://github.com/myorg/** for myorg's workflows)"
                .into(),
        );
    } else if let Err(m) = crate::auth::acl::NamePattern::compile(&k.subject) {
        problem("subject", m);
    }
    if problems.len() > before {
        return None;
    }
    Keyless::new(k.issuer.clone(), &k.subject, certs, tlog_keys, files)
        .map_err(|m| problems.push((format!("{i}.keyless.roots"), m)))
        .ok()
}

/// The policy, or every problem keyed within the section (`0.match`, `1.keys.0`, …).
pub fn check(rules: &[VerifyRuleConfig]) -> Result<Policy, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let pattern = NamePattern::compile(&r.pattern)
            .map_err(|m| problems.push((format!("{i}.match"), m)))
            .ok();
        if r.keys.is_empty() && r.keyless.is_none() {
            problems.push((
                format!("{i}.keys"),
                "needs at least one public key file, or a keyless identity".into(),
            ));
        }
        let mut keys = Vec::new();
        for (j, path) in r.keys.iter().enumerate() {
            match TrustedKey::load(path) {
                Ok(k) => keys.push(k),
                Err(m) => problems.push((format!("{i}.keys.{j}"), m)),
            }
        }
        let keyless = r
            .keyless
            .as_ref()
            .and_then(|k| check_keyless(i, k, &mut problems));
        if let Some(pattern) = pattern {
            out.push(Rule::new(r.pattern.clone(), pattern, keys, keyless, r.mode));
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
    use rustls_pki_types::pem::PemObject;

    use super::*;

    // Made with `openssl ecparam -name prime256v1 -genkey | openssl ec -pubout` and
    // `openssl genpkey -algorithm ED25519 | openssl pkey -pubout`.
    const P256: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+vtm1l7lm33OVoa3W94wPqkDOdTE\nEpr/3UL8zGjQO+YTJ1MYFmTinkbO+2aGEaHe7iebDYYaNL3SbgsPLuR7lQ==\n-----END PUBLIC KEY-----\n";
    const ED25519: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAAsdCjpnUHxIy7Frx8jtJTC9/c+cyvlrloVnjg7wdMrA=\n-----END PUBLIC KEY-----\n";

    fn rule(pattern: &str, keys: &[PathBuf]) -> VerifyRuleConfig {
        VerifyRuleConfig {
            pattern: pattern.into(),
            keys: keys.to_vec(),
            keyless: None,
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

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn keyless(roots: &[PathBuf], tlog: &[PathBuf], subject: &str) -> KeylessConfig {
        KeylessConfig {
            roots: roots.to_vec(),
            tlog_keys: tlog.to_vec(),
            trusted_root: None,
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: subject.into(),
        }
    }

    #[test]
    fn keyless_identities_are_checked_and_part_of_the_rule_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, rekor) = (dir.path().join("ca.pem"), dir.path().join("rekor.pub"));
        std::fs::write(&ca, ca_pem()).unwrap();
        std::fs::write(&rekor, P256).unwrap();
        let with = |k: KeylessConfig| VerifyRuleConfig {
            keyless: Some(k),
            ..rule("myorg/**", &[])
        };
        let p = check(&[with(keyless(
            std::slice::from_ref(&ca),
            std::slice::from_ref(&rekor),
            "https://github.com/myorg/**",
        ))])
        .unwrap();
        assert!(p.rules[0].keys.is_empty());
        assert_eq!(p.rules[0].files(), [ca.clone(), rekor.clone()]);
        let other_subject = check(&[with(keyless(
            std::slice::from_ref(&ca),
            std::slice::from_ref(&rekor),
            "https://github.com/myorg/app/**",
        ))])
        .unwrap();
        assert_ne!(p.rules[0].id(), other_subject.rules[0].id());

        let mut bad = keyless(&[rekor.clone(), dir.path().join("missing.pem")], &[], "/[/");
        bad.issuer = " ".into();
        let ps = check(&[with(bad)]).unwrap_err();
        let keys: Vec<&str> = ps.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "0.keyless.roots.0",
                "0.keyless.roots.1",
                "0.keyless.tlog_keys",
                "0.keyless.issuer",
                "0.keyless.subject"
            ],
            "{ps:?}"
        );
        assert!(ps[0].1.contains("no PEM CERTIFICATE"), "{ps:?}");
        assert!(ps[2].1.contains("transparency log"), "{ps:?}");
    }

    /// Sigstore's `trusted_root.json` gives the CAs and the log keys.
    #[test]
    fn a_trusted_root_gives_cas_and_log_keys() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let dir = tempfile::tempdir().unwrap();
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem().as_bytes()).unwrap();
        let spki =
            rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(P256.as_bytes()).unwrap();
        let root = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{"baseUrl": "https://rekor.example", "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": b64(spki.as_ref()), "keyDetails": "PKIX_ECDSA_P256_SHA_256"},
                "logId": {"keyId": "AA=="}}],
            "certificateAuthorities": [{"uri": "https://fulcio.example",
                "certChain": {"certificates": [{"rawBytes": b64(ca.as_ref())}]}}],
        });
        let path = dir.path().join("trusted_root.json");
        std::fs::write(&path, root.to_string()).unwrap();
        let mut k = keyless(&[], &[], "**");
        k.trusted_root = Some(path.clone());
        let r = VerifyRuleConfig {
            keyless: Some(k.clone()),
            ..rule("myorg/**", &[])
        };
        let p = check(std::slice::from_ref(&r)).unwrap();
        assert_eq!(p.rules[0].files(), std::slice::from_ref(&path));
        // Several, one per line, as `gh attestation trusted-root` writes them.
        let other = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "certificateAuthorities": [{"certChain": {"certificates": [{"rawBytes": b64(ca.as_ref())}]}}],
        });
        std::fs::write(&path, format!("{other}\n{root}\n")).unwrap();
        let lines = check(&[r]).unwrap();
        assert_eq!(lines.rules[0].id(), p.rules[0].id(), "the same CA and log");
        std::fs::write(&path, r#"{"mediaType": "application/json"}"#).unwrap();
        let r = VerifyRuleConfig {
            keyless: Some(k),
            ..rule("myorg/**", &[])
        };
        let ps = check(&[r]).unwrap_err();
        assert_eq!(ps[0].0, "0.keyless.trusted_root", "{ps:?}");
        assert!(ps[0].1.contains("not a Sigstore trusted root"), "{ps:?}");
    }
}
