//! Where things live in storage: Distribution's layout (its `paths.go`), so a cache written by
//! the Distribution registry is served as it is, and the other way round.
//!
//! ```text
//! docker/registry/v2/
//!   blobs/<alg>/<hex[0..2]>/<hex>/data                   content: blobs and manifests
//!   repositories/<name>/
//!     _layers/<alg>/<hex>/link                           blob referenced by this repository
//!     _manifests/revisions/<alg>/<hex>/link              manifest held by this repository
//!     _manifests/tags/<tag>/current/link                 the digest the tag points at
//!     _manifests/tags/<tag>/index/<alg>/<hex>/link       every digest the tag has pointed at
//! ```
//! A link file holds the digest as text (`sha256:…`).

use crate::oci::{Digest, RepoName, Tag};

pub const ROOT: &str = "docker/registry/v2";
pub const REPOSITORIES: &str = "docker/registry/v2/repositories";

pub fn blob_data(d: &Digest) -> String {
    format!(
        "{ROOT}/blobs/{}/{}/{}/data",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

pub fn repo_dir(name: &RepoName) -> String {
    format!("{REPOSITORIES}/{name}")
}

pub fn layer_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_layers/{}/{}/link",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn revision_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_manifests/revisions/{}/{}/link",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn tags_dir(name: &RepoName) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/tags")
}

pub fn tag_current(name: &RepoName, tag: &Tag) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/tags/{tag}/current/link")
}

pub fn tag_index(name: &RepoName, tag: &Tag, d: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_manifests/tags/{tag}/index/{}/{}/link",
        d.algorithm().as_str(),
        d.hex()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_distribution_paths() {
        let d = Digest::sha256_of(b"");
        let n = RepoName::parse("library/alpine").unwrap();
        assert_eq!(
            blob_data(&d),
            "docker/registry/v2/blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/data"
        );
        assert_eq!(
            layer_link(&n, &d),
            "docker/registry/v2/repositories/library/alpine/_layers/sha256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/link"
        );
        assert_eq!(
            tag_current(&n, &Tag::parse("3.19").unwrap()),
            "docker/registry/v2/repositories/library/alpine/_manifests/tags/3.19/current/link"
        );
    }
}
