//! containerd's `?ns=<registry>`: which configured upstream a request names. Resolved here so
//! that the HTTP layer talks to the registry only; only configured upstreams answer, so nothing
//! is dialled on a request's say-so.

pub use crate::upstream::Namespace;

use super::Registry;

impl Registry {
    /// The upstream containerd's `ns` query value names: the default one, the one whose
    /// repositories live under a name prefix, or `None` when no configured upstream goes by
    /// that name (the client then falls back to the mirror's own name).
    pub fn namespace(&self, ns: &str) -> Option<Namespace<'_>> {
        self.upstream.namespace(ns)
    }
}
