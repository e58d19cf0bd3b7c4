//! Several upstreams behind one endpoint. Content of an upstream other than the default lives
//! under repository names prefixed with that upstream's name (`ghcr.io/owner/app`), in storage,
//! in the cache and in the ACL, so upstreams never mix even under the same repository name. A
//! request reaches one by that path prefix, or by containerd's `?ns=<registry>` (which the HTTP
//! layer turns into the prefix); anything else goes to the default upstream. Only configured
//! upstreams are ever dialled: a request names an upstream, never a host.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobResponse, FetchedManifest, ManifestHead, TagsResponse, Upstream, UpstreamError};
use crate::oci::{Digest, Reference, RepoName};

pub struct Route {
    /// The first name component that selects this upstream.
    pub prefix: String,
    /// The `ns` values that mean it (by default its name and its URL's `host[:port]`).
    pub aliases: Vec<String>,
    pub upstream: Arc<dyn Upstream>,
}

pub struct Routed {
    default: Arc<dyn Upstream>,
    default_aliases: Vec<String>,
    routes: Vec<Route>,
}

/// What an `ns` value selects.
#[derive(Debug, PartialEq, Eq)]
pub enum Namespace<'a> {
    Default,
    Prefix(&'a str),
}

impl Routed {
    pub fn new(
        default: Arc<dyn Upstream>,
        default_aliases: Vec<String>,
        routes: Vec<Route>,
    ) -> Self {
        Routed {
            default,
            default_aliases,
            routes,
        }
    }

    /// The upstream for `name` and the name it knows the repository by.
    fn route(
        &self,
        name: &RepoName,
    ) -> Result<(&dyn Upstream, Option<&str>, RepoName), UpstreamError> {
        if let Some((first, rest)) = name.as_str().split_once('/')
            && let Some(r) = self.routes.iter().find(|r| r.prefix == first)
        {
            let inner = RepoName::parse(rest).map_err(|e| UpstreamError::Invalid(e.to_string()))?;
            return Ok((r.upstream.as_ref(), Some(&r.prefix), inner));
        }
        Ok((self.default.as_ref(), None, name.clone()))
    }
}

#[async_trait]
impl Upstream for Routed {
    fn blob_bounds(&self, name: &RepoName) -> super::bounds::BlobBounds {
        self.route(name)
            .map(|(u, _, inner)| u.blob_bounds(&inner))
            .unwrap_or_default()
    }

    /// The upstream an `ns` query value names, if it is configured (case-insensitive, as host
    /// names are).
    fn namespace(&self, ns: &str) -> Option<Namespace<'_>> {
        let ns = ns.trim().to_ascii_lowercase();
        if self.default_aliases.contains(&ns) {
            return Some(Namespace::Default);
        }
        self.routes
            .iter()
            .find(|r| r.aliases.contains(&ns))
            .map(|r| Namespace::Prefix(&r.prefix))
    }

    fn canonical_name(&self, name: &RepoName) -> RepoName {
        match self.route(name) {
            Ok((u, Some(prefix), inner)) => {
                let c = u.canonical_name(&inner);
                RepoName::parse(&format!("{prefix}/{c}")).unwrap_or_else(|_| name.clone())
            }
            Ok((u, None, inner)) => u.canonical_name(&inner),
            Err(_) => name.clone(),
        }
    }

    fn own_name(&self, name: &RepoName) -> RepoName {
        match self.route(name) {
            Ok((u, _, inner)) => u.own_name(&inner),
            Err(_) => name.clone(),
        }
    }

    async fn head_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        let (u, _, inner) = self.route(name)?;
        u.head_manifest(&inner, reference).await
    }

    async fn get_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<FetchedManifest, UpstreamError> {
        let (u, _, inner) = self.route(name)?;
        u.get_manifest(&inner, reference).await
    }

    async fn head_blob(&self, name: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        let (u, _, inner) = self.route(name)?;
        u.head_blob(&inner, digest).await
    }

    async fn get_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<BlobResponse, UpstreamError> {
        let (u, _, inner) = self.route(name)?;
        u.get_blob(&inner, digest, from).await
    }

    async fn tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagsResponse, UpstreamError> {
        let (u, _, inner) = self.route(name)?;
        u.tags(&inner, n, last).await
    }

    async fn referrers(&self, name: &RepoName, digest: &Digest) -> Result<Bytes, UpstreamError> {
        let (u, _, inner) = self.route(name)?;
        u.referrers(&inner, digest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the names it is asked for, and answers `NotFound`.
    struct Recorder {
        tag: &'static str,
        library: bool,
        asked: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl Upstream for Recorder {
        fn blob_bounds(&self, _: &RepoName) -> crate::upstream::bounds::BlobBounds {
            Default::default()
        }

        fn canonical_name(&self, name: &RepoName) -> RepoName {
            name.with_library_prefix_if(self.library)
        }

        fn own_name(&self, name: &RepoName) -> RepoName {
            self.canonical_name(name)
        }
        async fn head_manifest(
            &self,
            n: &RepoName,
            _: &Reference,
        ) -> Result<ManifestHead, UpstreamError> {
            self.asked.lock().unwrap().push(format!("{}:{n}", self.tag));
            Err(UpstreamError::NotFound)
        }
        async fn get_manifest(
            &self,
            n: &RepoName,
            _: &Reference,
        ) -> Result<FetchedManifest, UpstreamError> {
            self.asked.lock().unwrap().push(format!("{}:{n}", self.tag));
            Err(UpstreamError::NotFound)
        }
        async fn head_blob(&self, n: &RepoName, _: &Digest) -> Result<u64, UpstreamError> {
            self.asked.lock().unwrap().push(format!("{}:{n}", self.tag));
            Err(UpstreamError::NotFound)
        }
        async fn get_blob(
            &self,
            n: &RepoName,
            _: &Digest,
            _: u64,
        ) -> Result<BlobResponse, UpstreamError> {
            self.asked.lock().unwrap().push(format!("{}:{n}", self.tag));
            Err(UpstreamError::NotFound)
        }
        async fn tags(
            &self,
            n: &RepoName,
            _: Option<usize>,
            _: Option<&str>,
        ) -> Result<TagsResponse, UpstreamError> {
            self.asked.lock().unwrap().push(format!("{}:{n}", self.tag));
            Err(UpstreamError::NotFound)
        }
    }

    fn routed() -> (Routed, Arc<Mutex<Vec<String>>>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let hub = Arc::new(Recorder {
            tag: "hub",
            library: true,
            asked: asked.clone(),
        });
        let ghcr = Arc::new(Recorder {
            tag: "ghcr",
            library: false,
            asked: asked.clone(),
        });
        let r = Routed::new(
            hub,
            vec!["docker.io".into(), "registry-1.docker.io".into()],
            vec![Route {
                prefix: "ghcr.io".into(),
                aliases: vec!["ghcr.io".into(), "ghcr.io:443".into()],
                upstream: ghcr,
            }],
        );
        (r, asked)
    }

    fn n(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[tokio::test]
    async fn names_pick_the_upstream_and_lose_the_prefix_on_the_way() {
        let (r, asked) = routed();
        let latest = Reference::parse("latest").unwrap();
        let _ = r.get_manifest(&n("ghcr.io/owner/app"), &latest).await;
        let _ = r.get_manifest(&n("library/alpine"), &latest).await;
        // A first component that is not a configured prefix stays with the default.
        let _ = r.get_manifest(&n("quay.io/x/y"), &latest).await;
        assert_eq!(
            *asked.lock().unwrap(),
            vec!["ghcr:owner/app", "hub:library/alpine", "hub:quay.io/x/y"]
        );
        // Canonical names keep the prefix, and each upstream's own rule applies inside it.
        assert_eq!(
            r.canonical_name(&n("ghcr.io/owner/app")).as_str(),
            "ghcr.io/owner/app"
        );
        assert_eq!(r.canonical_name(&n("alpine")).as_str(), "library/alpine");
        assert_eq!(
            r.canonical_name(&n("ghcr.io/alpine")).as_str(),
            "ghcr.io/alpine"
        );
        // Each upstream's own name for a stored repository: without the prefix.
        assert_eq!(r.own_name(&n("ghcr.io/owner/app")).as_str(), "owner/app");
        assert_eq!(r.own_name(&n("library/alpine")).as_str(), "library/alpine");
        assert_eq!(r.own_name(&n("quay.io/x/y")).as_str(), "quay.io/x/y");
    }

    #[test]
    fn ns_values_name_configured_upstreams_only() {
        let (r, _) = routed();
        assert_eq!(r.namespace("docker.io"), Some(Namespace::Default));
        assert_eq!(r.namespace("GHCR.IO"), Some(Namespace::Prefix("ghcr.io")));
        assert_eq!(
            r.namespace("ghcr.io:443"),
            Some(Namespace::Prefix("ghcr.io"))
        );
        assert_eq!(r.namespace("169.254.169.254"), None);
        assert_eq!(r.namespace("evil.example"), None);
    }
}
