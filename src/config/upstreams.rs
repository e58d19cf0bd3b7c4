//! The checks that concern the upstreams together rather than one section: their names
//! (each prefixes its repositories) and which upstream each containerd `ns` value reaches.

use super::Config;
use crate::oci::RepoName;

/// Each `ns` value to one upstream. `lists` holds (key, values, whether given) per upstream, the
/// default first: a value two upstreams are given is a problem; a default value (an upstream's
/// name or host) that another upstream is given, or that an earlier one has by default, is left
/// to that one, so that nothing configured before `ns` existed becomes an error.
pub(super) fn resolve_ns(
    lists: Vec<(String, Vec<String>, bool)>,
) -> (Vec<Vec<String>>, Vec<(String, String)>) {
    let mut problems = Vec::new();
    let mut owner: std::collections::HashMap<String, String> = Default::default();
    for (key, values, given) in &lists {
        if !given {
            continue;
        }
        for v in values {
            match owner.get(v) {
                Some(other) => problems.push((
                    format!("{key}.ns"),
                    format!("{v:?} is also an ns of {other}: each ns value reaches one upstream"),
                )),
                None => {
                    owner.insert(v.clone(), key.clone());
                }
            }
        }
    }
    let resolved = lists
        .into_iter()
        .map(|(key, values, given)| {
            if given {
                return values;
            }
            values
                .into_iter()
                .filter(|v| match owner.get(v) {
                    Some(_) => false,
                    None => {
                        owner.insert(v.clone(), key.clone());
                        true
                    }
                })
                .collect()
        })
        .collect();
    (resolved, problems)
}

/// The names of `upstreams` entries: each one repository-name component (it prefixes that
/// upstream's repositories), none twice, and none on the default upstream.
pub(super) fn upstream_names(c: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if c.upstream.name.is_some() {
        problems.push((
            "upstream.name".into(),
            "the default upstream has no name; name the entries of upstreams".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, u) in c.upstreams.iter().enumerate() {
        let name = u.name.clone().unwrap_or_default();
        if RepoName::parse(&name).map_or(true, |n| n.components() != 1) {
            problems.push((
                format!("upstreams.{i}.name"),
                format!(
                    "{name:?} must be one repository-name component such as ghcr.io or quay.io \
                     (lowercase letters, digits, '.', '_', '-'): it prefixes this upstream's repositories"
                ),
            ));
        } else if !seen.insert(name.clone()) {
            problems.push((
                format!("upstreams.{i}.name"),
                format!("{name:?} is used twice"),
            ));
        }
    }
    problems
}
