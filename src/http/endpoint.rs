//! Request routing as parsing: method + raw path become a typed [`Endpoint`] before anything
//! else happens. Paths are split from the right, since a repository name may itself contain
//! `manifests` or `blobs` as components.

use axum::http::Method;

use crate::error::{ApiError, Code};
use crate::oci::{Digest, NameError, Reference, RepoName};

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
    // The last two segments say what is asked for and everything before them is the name, so a
    // name with `manifests`, `blobs` or `uploads` among its components is routed as a name.
    let mut segments = rest.rsplitn(3, '/');
    let (Some(last), Some(kind), Some(name)) = (segments.next(), segments.next(), segments.next())
    else {
        return Err(not_found());
    };
    match kind {
        "manifests" => {
            let name = RepoName::parse(name)?;
            match Reference::parse(last) {
                Ok(r) => Ok(Endpoint::Manifest(name, r)),
                // Neither a tag nor a digest: a manifest that cannot exist, so 404 (as the
                // distribution spec's conformance suite expects), asked of no upstream. A
                // reference with a `:` claims to be a digest and stays 400 DIGEST_INVALID.
                Err(NameError::BadTag(t)) if !write => Err(ApiError::new(
                    Code::ManifestUnknown,
                    format!("manifest unknown: {t:?} is neither a tag nor a digest"),
                )),
                Err(e) => Err(e.into()),
            }
        }
        // `/blobs/uploads` (POST without the trailing slash).
        "blobs" if last == "uploads" => {
            RepoName::parse(name)?;
            Ok(Endpoint::Upload)
        }
        "blobs" => {
            let name = RepoName::parse(name)?;
            if write {
                // DELETE of a blob: a write, refused as such rather than as a bad digest.
                return Ok(Endpoint::Upload);
            }
            Ok(Endpoint::Blob(name, Digest::parse(last)?))
        }
        // `/blobs/uploads/` and `/blobs/uploads/<session>`.
        "uploads" => match name.strip_suffix("/blobs") {
            Some(name) => {
                RepoName::parse(name)?;
                Ok(Endpoint::Upload)
            }
            None => Err(not_found()),
        },
        "referrers" => Ok(Endpoint::Referrers(
            RepoName::parse(name)?,
            Digest::parse(last)?,
        )),
        _ => Err(not_found()),
    }
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
    fn names_with_route_words_route_as_names() {
        assert!(matches!(
            get(&format!("/v2/a/manifests/b/blobs/{D}")).unwrap(),
            Endpoint::Blob(n, _) if n.as_str() == "a/manifests/b"
        ));
        assert!(matches!(
            get(&format!("/v2/x/manifests/blobs/{D}")).unwrap(),
            Endpoint::Blob(n, _) if n.as_str() == "x/manifests"
        ));
        assert!(matches!(
            get("/v2/x/blobs/uploads/manifests/latest").unwrap(),
            Endpoint::Manifest(n, _) if n.as_str() == "x/blobs/uploads"
        ));
        assert!(matches!(
            get("/v2/x/blobs/uploadsy/manifests/latest").unwrap(),
            Endpoint::Manifest(n, _) if n.as_str() == "x/blobs/uploadsy"
        ));
        assert_eq!(
            parse(&Method::PATCH, "/v2/x/blobs/uploads/5e1d-aa").unwrap(),
            Endpoint::Upload
        );
    }

    #[test]
    fn refusals_carry_the_right_code() {
        let code = |p: &str| get(p).unwrap_err().code;
        assert_eq!(code("/v2/UPPER/manifests/latest"), Code::NameInvalid);
        assert_eq!(code("/v2/a/../b/manifests/latest"), Code::NameInvalid);
        assert_eq!(code("/v2/a%2e%2e/manifests/latest"), Code::NameInvalid);
        assert_eq!(code("/v2/a/manifests/.bad"), Code::ManifestUnknown);
        assert_eq!(
            code("/v2/a/manifests/.INVALID_MANIFEST_NAME"),
            Code::ManifestUnknown
        );
        assert_eq!(
            parse(&Method::PUT, "/v2/a/manifests/.bad")
                .unwrap_err()
                .code,
            Code::TagInvalid
        );
        assert_eq!(code("/v2/a/manifests/sha256:xyz"), Code::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/sha256:xyz"), Code::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/latest"), Code::DigestInvalid);
        assert_eq!(code("/v3/"), Code::NotFound);
        assert_eq!(code("/v2/a/unknown"), Code::NotFound);
        let long = format!("/v2/{}/manifests/latest", "a".repeat(256));
        assert_eq!(code(&long), Code::NameInvalid);
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::error::Code;
    use crate::layout;
    use crate::oci::Tag;
    use crate::oci::digest::props::digest;
    use crate::oci::name::props::{ROUTE_WORDS, component, valid_name, valid_tag};

    fn method() -> impl Strategy<Value = Method> {
        proptest::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
    }

    fn reference() -> impl Strategy<Value = Reference> {
        prop_oneof![
            valid_tag().prop_map(|t| Reference::Tag(Tag::parse(&t).unwrap())),
            digest().prop_map(Reference::Digest),
        ]
    }

    /// Path segments an attacker would send, with the ordinary ones around them.
    fn hostile_segment() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::sample::select(vec![
                "..", ".", "", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2F", "%2f", "a%2Fb", "..%2F..",
                "%00", "\0", "\\", "..\\..", "a\\b", "%5c", "~", "a b", "_catalog", "%",
                "sha256:..", "sha256:%2e%2e", "latest", "v2",
            ])
            .prop_map(str::to_owned),
            3 => component(),
            2 => proptest::sample::select(ROUTE_WORDS).prop_map(str::to_owned),
            1 => digest().prop_map(|d| d.to_string()),
            1 => any::<String>(),
        ]
    }

    fn hostile_path() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(hostile_segment(), 0..7)
                .prop_map(|s| format!("/v2/{}", s.join("/"))),
            any::<String>(),
            "/v2/[a-z0-9./%\\\\-]{0,40}",
        ]
    }

    /// Every storage key an endpoint can lead to.
    fn storage_keys(ep: &Endpoint) -> Vec<String> {
        let d = Digest::sha256_of(b"");
        match ep {
            Endpoint::Tags(n) => vec![layout::repo_dir(n), layout::tags_dir(n)],
            Endpoint::Manifest(n, Reference::Tag(t)) => vec![
                layout::tag_current(n, t),
                layout::tag_index(n, t, &d),
                layout::revision_link(n, &d),
            ],
            Endpoint::Manifest(n, Reference::Digest(d)) => {
                vec![layout::revision_link(n, d), layout::blob_data(d)]
            }
            Endpoint::Blob(n, d) => vec![layout::layer_link(n, d), layout::blob_data(d)],
            _ => Vec::new(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every read endpoint with a valid name parses back to what it was made from, whatever
        /// the name's components are (`manifests`, `blobs`, `uploads`, `tags` included).
        #[test]
        fn read_routes_round_trip(name in valid_name(), r in reference(), d in digest(), head in any::<bool>()) {
            let m = if head { Method::HEAD } else { Method::GET };
            let n = RepoName::parse(&name).unwrap();
            prop_assert_eq!(
                parse(&m, &format!("/v2/{name}/manifests/{r}")).unwrap(),
                Endpoint::Manifest(n.clone(), r.clone())
            );
            prop_assert_eq!(
                parse(&m, &format!("/v2/{name}/blobs/{d}")).unwrap(),
                Endpoint::Blob(n.clone(), d.clone())
            );
            prop_assert_eq!(parse(&m, &format!("/v2/{name}/tags/list")).unwrap(), Endpoint::Tags(n.clone()));
            prop_assert_eq!(parse(&m, &format!("/v2/{name}/referrers/{d}")).unwrap(), Endpoint::Referrers(n, d));
        }

        /// Any reference: a valid tag or digest routes; one with a `:` that is not a digest is
        /// 400 DIGEST_INVALID; anything else names no manifest there could be, 404.
        #[test]
        fn references_route_or_are_a_bad_digest_or_unknown(
            name in valid_name(),
            r in "[a-zA-Z0-9._:@+=~-]{1,140}",
            head in any::<bool>(),
        ) {
            let m = if head { Method::HEAD } else { Method::GET };
            let got = parse(&m, &format!("/v2/{name}/manifests/{r}"));
            let want = if r.contains(':') {
                Digest::parse(&r).map(Reference::Digest).map_err(|_| Code::DigestInvalid)
            } else {
                crate::oci::Tag::parse(&r).map(Reference::Tag).map_err(|_| Code::ManifestUnknown)
            };
            match (got, want) {
                (Ok(Endpoint::Manifest(_, a)), Ok(b)) => prop_assert_eq!(a, b),
                (Err(e), Err(code)) => prop_assert_eq!(e.code, code),
                (got, want) => prop_assert!(false, "{:?}: {:?}, want {:?}", r, got, want),
            }
        }

        /// Writes are recognised as writes, so they are refused as such.
        #[test]
        fn write_routes_are_uploads(name in valid_name(), d in digest(), session in "[a-zA-Z0-9_.=-]{1,40}") {
            for (m, p) in [
                (Method::POST, format!("/v2/{name}/blobs/uploads/")),
                (Method::POST, format!("/v2/{name}/blobs/uploads")),
                (Method::PATCH, format!("/v2/{name}/blobs/uploads/{session}")),
                (Method::PUT, format!("/v2/{name}/blobs/uploads/{session}")),
                (Method::DELETE, format!("/v2/{name}/blobs/{d}")),
            ] {
                prop_assert_eq!(parse(&m, &p).unwrap(), Endpoint::Upload, "{} {}", m, p);
            }
        }

        /// Traversal fragments (`..`, `%2e%2e`, `%2F`, NUL, backslashes) never make it into a
        /// parsed name, tag or digest, and so never into a storage key; refusals carry a
        /// client-error code.
        #[test]
        fn hostile_paths_never_reach_storage(m in method(), path in hostile_path()) {
            match parse(&m, &path) {
                Ok(ep) => {
                    let keys = storage_keys(&ep);
                    if !keys.is_empty() {
                        let rest = path.strip_prefix("/v2/").unwrap();
                        for bad in ["%", "\\", "\0", "//"] {
                            prop_assert!(!rest.contains(bad), "{:?} accepted as {:?}", path, ep);
                        }
                        prop_assert!(rest.split('/').all(|s| s != "." && s != ".."), "{:?}", path);
                    }
                    for key in keys {
                        prop_assert!(
                            key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."),
                            "{:?} -> {:?}", path, key
                        );
                        prop_assert!(
                            key.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-:".contains(&b)),
                            "{:?} -> {:?}", path, key
                        );
                    }
                }
                Err(e) => prop_assert!(matches!(
                    e.code,
                    Code::NotFound | Code::NameInvalid | Code::TagInvalid | Code::DigestInvalid
                        | Code::ManifestUnknown
                ), "{:?}: {:?}", path, e.code),
            }
        }
    }
}
