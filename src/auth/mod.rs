//! Authentication and authorization: who a client is ([`authn`]), what it may do ([`acl`]), and
//! the signed tokens that carry that between the token service and the registry ([`token`],
//! [`keys`]). Shared vocabulary lives here.

pub mod acl;
pub mod authn;
pub mod external;
pub mod keys;
pub mod realip;
pub mod service;
pub mod setup;
pub mod token;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The names a repository goes by, the name the mirror serves and stores it under first (after
/// Docker Hub's `library/` mapping and upstream routing), then the other names a client may use
/// for the same repository (`alpine` for `library/alpine`). Handed in at assembly, so that
/// access is decided on what the mirror serves without auth knowing the upstreams.
pub type RepositoryNames = std::sync::Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// One resource and the actions on it: a requested scope (`repository:myorg/app:pull`) and,
/// with the same shape, an entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("scope {0:?} is malformed: expected type:name:action[,action...]")]
    Malformed(String),
}

impl ResourceActions {
    /// Parse a scope string. The name may itself contain `:` (a registry host with a port), so
    /// the type is split off the left and the actions off the right, as Distribution does.
    pub fn parse_scope(s: &str) -> Result<Self, ScopeError> {
        let bad = || ScopeError::Malformed(s.chars().take(200).collect());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
        // `type(class)` (e.g. `repository(plugin)`) is part of the grammar; the class is dropped.
        let kind_base = match kind.split_once('(') {
            Some((base, class)) if class.ends_with(')') => base,
            Some(_) => return Err(bad()),
            None => kind,
        };
        let valid_kind = !kind_base.is_empty()
            && kind_base
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid_kind || name.is_empty() || actions.is_empty() {
            return Err(bad());
        }
        let actions: Vec<String> = actions.split(',').map(str::to_owned).collect();
        if actions.iter().any(|a| {
            a.is_empty()
                || !a
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'_' || b == b'-')
        }) {
            return Err(bad());
        }
        Ok(ResourceActions {
            kind: kind_base.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }

    pub fn to_scope(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// Who made a request, as established by an authenticator. The anonymous user is `""`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub account: String,
    /// Facts an authenticator learnt (GitHub organisations and teams, OIDC groups, static
    /// labels), matched by ACL rules and substituted into patterns as `${labels:KEY}`.
    pub labels: BTreeMap<String, Vec<String>>,
    /// When the credential that established this identity stops being valid (an ID token's
    /// `exp`; a presented refresh token's), Unix seconds, if known: a refresh token issued for
    /// it never outlives it.
    pub valid_until: Option<i64>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Identity::default()
    }

    pub fn is_anonymous(&self) -> bool {
        self.account.is_empty()
    }
}

/// Facts about the request itself that ACL rules may match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub ip: IpAddr,
    pub service: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let s = ResourceActions::parse_scope("repository:myorg/app:pull,push").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "myorg/app");
        assert_eq!(s.actions, vec!["pull", "push"]);
        let s = ResourceActions::parse_scope("repository:localhost:5000/app:pull").unwrap();
        assert_eq!(s.name, "localhost:5000/app");
        assert_eq!(
            ResourceActions::parse_scope("registry:catalog:*")
                .unwrap()
                .actions,
            vec!["*"]
        );
        assert_eq!(
            ResourceActions::parse_scope("repository(plugin):x:pull")
                .unwrap()
                .kind,
            "repository"
        );
        for bad in [
            "",
            "repository",
            "repository:x",
            "repository::pull",
            ":x:pull",
            "repository:x:",
            "repository:x:pu ll",
            "repository:x:a,,b",
        ] {
            assert!(
                ResourceActions::parse_scope(bad).is_err(),
                "{bad:?} accepted"
            );
        }
        assert_eq!(s_round("repository:a/b:pull"), "repository:a/b:pull");
    }

    fn s_round(s: &str) -> String {
        ResourceActions::parse_scope(s).unwrap().to_scope()
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn kind() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec!["repository", "registry", "plugin"])
                .prop_map(str::to_owned),
            "[a-z0-9_-]{1,12}",
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            crate::oci::name::props::valid_name(),
            // A registry host with a port, as Distribution allows.
            (crate::oci::name::props::valid_name(), 1u16..)
                .prop_map(|(n, p)| format!("localhost:{p}/{n}")),
            // Anything non-empty: the name is split from both ends, so it may hold colons.
            ".{1,30}",
        ]
    }

    fn actions() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(vec!["pull", "push", "*", "delete"])
                    .prop_map(str::to_owned),
                "[a-zA-Z0-9*_-]{1,8}",
            ],
            1..4,
        )
    }

    proptest! {
        #[test]
        fn scopes_round_trip(kind in kind(), name in name(), actions in actions()) {
            let r = ResourceActions { kind, name, actions };
            prop_assert_eq!(ResourceActions::parse_scope(&r.to_scope()).unwrap(), r);
        }

        /// A resource class (`repository(plugin)`) is accepted and dropped.
        #[test]
        fn resource_class_is_dropped(kind in kind(), class in "[a-z]{1,8}", name in name(), actions in actions()) {
            let s = format!("{kind}({class}):{name}:{}", actions.join(","));
            let r = ResourceActions::parse_scope(&s).unwrap();
            prop_assert_eq!(r, ResourceActions { kind, name, actions });
        }

        /// Refusals echo only the start of the scope, escaped.
        #[test]
        fn errors_stay_short_for_huge_scopes(unit in any::<String>(), n in 1usize..2000) {
            let s = format!("{unit}\u{1b}").repeat(n);
            if let Err(e) = ResourceActions::parse_scope(&s) {
                prop_assert!(e.to_string().len() <= 4096, "{} bytes", e.to_string().len());
            }
        }

        /// Whatever is asked for: no panic; an accepted scope has a valid type, a non-empty name
        /// and well-formed actions, and prints back to itself.
        #[test]
        fn arbitrary_scopes(s in prop_oneof![
            any::<String>(),
            "[a-z(]{0,10}:[a-z/:.]{0,12}:[a-z,* ]{0,10}",
            "[a-z:,()*]{0,20}",
        ]) {
            match ResourceActions::parse_scope(&s) {
                Ok(r) => {
                    prop_assert!(!r.kind.is_empty());
                    prop_assert!(r.kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
                    prop_assert!(!r.name.is_empty());
                    prop_assert!(!r.actions.is_empty());
                    prop_assert!(r.actions.iter().all(|a| !a.is_empty() && !a.contains([',', ':', ' '])));
                    prop_assert_eq!(ResourceActions::parse_scope(&r.to_scope()).unwrap(), r);
                }
                Err(e) => prop_assert!(e.to_string().len() <= 4096),
            }
        }
    }
}
