//! Request routing as parsing: method + raw path become a typed [`Endpoint`] before anything
//! else happens. Paths are split from the right, since a repository name may itself contain
//! `manifests` or `blobs` as components.

use axum::http::Method;

use crate::error::{ApiError, Code};
use crate::oci::{Digest, Reference, RepoName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    /// Any write endpoint of the distribution API: the mirror refuses them.
    Upload,
    Referrers(RepoName, Digest),
}

impl Endpoint {
    /// Label for metrics and logs; never includes names or digests (unbounded cardinality).
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::Upload => "upload",
            Endpoint::Referrers(..) => "referrers",
        }
    }
}

/// Parse the raw (still percent-encoded) path of a `/v2` request.
pub fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
    let rest = if path == "/v2" || path == "/v2/" {
        ""
    } else if let Some(r) = path.strip_prefix("/v2/") {
        r
    } else {
        return Err(not_found());
    };
    let write = !matches!(*method, Method::GET | Method::HEAD);
    if rest.is_empty() {
        return Ok(Endpoint::Base);
    }
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Endpoint::Tags(RepoName::parse(name)?));
    }
    if let Some(i) = rest.rfind("/blobs/uploads") {
        RepoName::parse(&rest[..i])?;
        return Ok(Endpoint::Upload);
    }
    if let Some(i) = rest.rfind("/manifests/") {
        let name = RepoName::parse(&rest[..i])?;
        let reference = Reference::parse(&rest[i + "/manifests/".len()..])?;
        return Ok(Endpoint::Manifest(name, reference));
    }
    if let Some(i) = rest.rfind("/blobs/") {
        let name = RepoName::parse(&rest[..i])?;
        if write {
            // DELETE of a blob: a write, refused as such rather than as a bad digest.
            return Ok(Endpoint::Upload);
        }
        let digest = Digest::parse(&rest[i + "/blobs/".len()..])?;
        return Ok(Endpoint::Blob(name, digest));
    }
    if let Some(i) = rest.rfind("/referrers/") {
        let name = RepoName::parse(&rest[..i])?;
        let digest = Digest::parse(&rest[i + "/referrers/".len()..])?;
        return Ok(Endpoint::Referrers(name, digest));
    }
    Err(not_found())
}

fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such endpoint in the distribution API")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(p: &str) -> Result<Endpoint, ApiError> {
        parse(&Method::GET, p)
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        assert_eq!(get("/v2/").unwrap(), Endpoint::Base);
        assert_eq!(get("/v2").unwrap(), Endpoint::Base);
        assert_eq!(get("/v2/_catalog").unwrap(), Endpoint::Catalog);
        assert!(
            matches!(get("/v2/a/b/tags/list").unwrap(), Endpoint::Tags(n) if n.as_str() == "a/b")
        );
        assert!(matches!(
            get("/v2/a/manifests/b/manifests/latest").unwrap(),
            Endpoint::Manifest(n, Reference::Tag(t)) if n.as_str() == "a/manifests/b" && t.as_str() == "latest"
        ));
        assert!(matches!(
            get(&format!("/v2/x/blobs/{D}")).unwrap(),
            Endpoint::Blob(n, _) if n.as_str() == "x"
        ));
        assert_eq!(
            parse(&Method::POST, "/v2/x/blobs/uploads/").unwrap(),
            Endpoint::Upload
        );
        assert_eq!(
            parse(&Method::DELETE, &format!("/v2/x/blobs/{D}")).unwrap(),
            Endpoint::Upload
        );
    }

    #[test]
    fn refusals_carry_the_right_code() {
        let code = |p: &str| get(p).unwrap_err().code;
        assert_eq!(code("/v2/UPPER/manifests/latest"), Code::NameInvalid);
        assert_eq!(code("/v2/a/../b/manifests/latest"), Code::NameInvalid);
        assert_eq!(code("/v2/a%2e%2e/manifests/latest"), Code::NameInvalid);
        assert_eq!(code("/v2/a/manifests/.bad"), Code::TagInvalid);
        assert_eq!(code("/v2/a/manifests/sha256:xyz"), Code::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/sha256:xyz"), Code::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/latest"), Code::DigestInvalid);
        assert_eq!(code("/v3/"), Code::NotFound);
        assert_eq!(code("/v2/a/unknown"), Code::NotFound);
        let long = format!("/v2/{}/manifests/latest", "a".repeat(256));
        assert_eq!(code(&long), Code::NameInvalid);
    }
}
