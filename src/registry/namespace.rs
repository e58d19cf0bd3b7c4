//! containerd's `?ns=<registry>`: which configured upstream a request names by its source
//! registry, so that the HTTP layer asks the registry rather than the upstreams. Only configured
//! upstreams answer; a request never makes the mirror dial a host.

use crate::oci::{NameError, RepoName};

use super::Registry;

/// What an `ns` value selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespace {
    /// The default upstream: names stay as they are.
    Default,
    /// A named upstream: names are qualified with its prefix.
    Prefix(String),
}

impl Namespace {
    /// `name` as the mirror knows it under this namespace. A name that already carries the
    /// prefix (containerd with `override_path` to the prefix sends both) is kept.
    pub fn qualify(&self, name: RepoName) -> Result<RepoName, NameError> {
        match self {
            Namespace::Default => Ok(name),
            Namespace::Prefix(prefix) => {
                if name
                    .as_str()
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
                {
                    return Ok(name);
                }
                RepoName::parse(&format!("{prefix}/{name}"))
            }
        }
    }
}

impl Registry {
    /// The upstream an `ns` query value names, if one is configured for it.
    pub fn namespace(&self, ns: &str) -> Option<Namespace> {
        use crate::upstream::Namespace as Routed;
        match self.upstream.namespace(ns)? {
            Routed::Default => Some(Namespace::Default),
            Routed::Prefix(p) => Some(Namespace::Prefix(p.to_owned())),
        }
    }
}
