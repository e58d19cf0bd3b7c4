//! The upstream allow-list: a guard that refuses, before any network traffic, every upstream
//! call for a repository outside the configured patterns. It guards the mirror's storage and
//! its upstream account against being used to pull all of Docker Hub, whoever is authenticated.

use std::sync::Arc;

use super::guard::{Guard, Guarded};
use super::{Upstream, UpstreamError};
use crate::oci::RepoName;

/// Decides whether a canonical repository name may be fetched.
pub type AllowFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub struct AllowList {
    allowed: AllowFn,
}

pub type AllowListed = Guarded<AllowList>;

impl AllowListed {
    pub fn new(inner: Arc<dyn Upstream>, allowed: AllowFn) -> Self {
        Guarded {
            inner,
            guard: AllowList { allowed },
        }
    }
}

impl Guard for AllowList {
    fn call(&self, name: &RepoName) -> Result<(), UpstreamError> {
        if (self.allowed)(name.as_str()) {
            Ok(())
        } else {
            metrics::counter!(crate::metrics::UPSTREAM_REFUSED, "reason" => "allow_list")
                .increment(1);
            Err(UpstreamError::NotAllowed)
        }
    }
}
