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
//!
//! ocimirror's own bookkeeping lives beside that tree, where Distribution never looks:
//!
//! ```text
//! ocimirror/
//!   access/<alg>/<hex>                                   last pull of a blob or manifest (unix seconds)
//!   expiry/last-pass                                     when the fleet's last expiry pass finished
//!   referrers/<name>/<alg>/<hex>                         the referrers index of a digest, as last fetched
//! ```

use crate::oci::{Digest, RepoName, Tag};
use crate::storage::{Storage, StorageError};

pub const ROOT: &str = "docker/registry/v2";
pub const REPOSITORIES: &str = "docker/registry/v2/repositories";
pub const BLOBS: &str = "docker/registry/v2/blobs";
pub const ACCESS: &str = "ocimirror/access";
pub const LAST_EXPIRY_PASS: &str = "ocimirror/expiry/last-pass";

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

pub fn referrers(name: &RepoName, d: &Digest) -> String {
    format!(
        "ocimirror/referrers/{name}/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn access_marker(d: &Digest) -> String {
    format!("{ACCESS}/{}/{}", d.algorithm().as_str(), d.hex())
}

/// Every repository under [`REPOSITORIES`] (a directory holding `_manifests`), sorted.
pub async fn repositories(storage: &dyn Storage) -> Result<Vec<String>, StorageError> {
    let mut repos = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            REPOSITORIES.to_owned()
        } else {
            format!("{REPOSITORIES}/{rel}")
        };
        let children = storage.list(&dir).await?;
        if children.iter().any(|c| c == "_manifests") && !rel.is_empty() {
            repos.push(rel.clone());
        }
        for c in children {
            if c.starts_with('_') || rel.len() + c.len() >= crate::oci::name::MAX_NAME_LEN {
                continue;
            }
            stack.push(if rel.is_empty() {
                c
            } else {
                format!("{rel}/{c}")
            });
        }
    }
    repos.sort();
    Ok(repos)
}

/// The digests named by the entries of a `<dir>/<alg>/<hex>` tree (`_layers`, `revisions`,
/// `index`, `blobs/<alg>/<xx>` aside), skipping names that are not digests.
pub async fn digests_under(storage: &dyn Storage, dir: &str) -> Result<Vec<Digest>, StorageError> {
    let mut out = Vec::new();
    for alg in storage.list(dir).await? {
        for hex in storage.list(&format!("{dir}/{alg}")).await? {
            if let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) {
                out.push(d);
            }
        }
    }
    Ok(out)
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
