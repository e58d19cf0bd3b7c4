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
