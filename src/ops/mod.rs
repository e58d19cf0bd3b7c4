//! Operator commands on a cache, outside the request path: `warm` pre-fetches images (through a
//! running mirror, with its tokens when it requires them (`auth.rs`), or straight into the
//! configured storage), `ls` and `inspect` report what the
//! storage holds, and `gc` runs one expiry pass. Shared here: image references as operators type them, platforms, and the parts
//! of a manifest these commands read (descriptors with sizes and platforms).

pub mod auth;
pub mod listing;
pub mod warm;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::oci::manifest::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use crate::oci::{Digest, Reference, RepoName, Tag};

/// One expiry pass over the configured storage, for `ocimirror gc`.
pub async fn expiry_pass(
    s: &crate::config::Settings,
    policy: crate::expiry::ExpiryPolicy,
    dry_run: bool,
) -> Result<crate::expiry::Report, String> {
    let b = crate::assemble::build_backends(s)
        .await
        .map_err(|e| e.to_string())?;
    crate::expiry::Collector::new(b.storage, b.leases, policy)
        .pass(dry_run)
        .await
        .map_err(|e| format!("expiry: {e}"))
}

/// `name[:tag|@digest]` (a tag defaults to `latest`; with both, the digest wins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub name: RepoName,
    pub reference: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(Digest::parse(d).map_err(|e| format!("{s:?}: {e}"))?),
            ),
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry's port.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        let name = RepoName::parse(name).map_err(|e| format!("{s:?}: {e}"))?;
        let reference = match (digest, tag) {
            (Some(d), _) => Reference::Digest(d),
            (None, Some(t)) => Reference::Tag(Tag::parse(t).map_err(|e| format!("{s:?}: {e}"))?),
            (None, None) => Reference::Tag(Tag::parse("latest").expect("valid tag")),
        };
        Ok(ImageRef { name, reference })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            Reference::Digest(d) => write!(f, "{}@{d}", self.name),
        }
    }
}

/// `os/arch[/variant]`, as in an index's `platform` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _]
                if !os.is_empty() && !arch.is_empty() && !parts.iter().any(|p| p.is_empty()) =>
            {
                Ok(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: parts.get(2).map(|v| v.to_string()),
                })
            }
            _ => Err(format!("platform {s:?} is not os/arch or os/arch/variant")),
        }
    }

    /// Whether `self` (what was asked for) selects `p`; no variant asked means any variant.
    pub fn selects(&self, p: &Platform) -> bool {
        self.os == p.os
            && self.architecture == p.architecture
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p.variant.as_ref() == Some(v))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A descriptor as manifests carry it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// What these commands read of a manifest: its entries with sizes and platforms.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parsed {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Parsed {
    /// Lenient: a body that does not parse has no entries (the registry validated what it
    /// stored; this is for reporting).
    pub fn of(body: &[u8]) -> Parsed {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// Config, then layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// A report on standard output: pretty JSON, or the text for people.
pub fn print<T: Serialize>(json: bool, value: &T, text: &str) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("reports serialise")
        );
    } else {
        print!("{text}");
    }
}

/// RFC 3339, to the second, UTC.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(r.to_string(), "alpine:latest");
        let r = ImageRef::parse("ghcr.io/owner/app:v1.2").unwrap();
        assert_eq!(r.name.as_str(), "ghcr.io/owner/app");
        assert_eq!(r.reference, Reference::Tag(Tag::parse("v1.2").unwrap()));
        let d = Digest::sha256_of(b"x");
        let r = ImageRef::parse(&format!("team/app:v1@{d}")).unwrap();
        assert_eq!(r.reference, Reference::Digest(d.clone()));
        assert_eq!(r.to_string(), format!("team/app@{d}"));
        assert!(ImageRef::parse("Team/App").is_err());
        assert!(ImageRef::parse("app:bad tag").is_err());
        assert!(ImageRef::parse("app@sha256:nope").is_err());
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64").unwrap();
        assert!(p.selects(&Platform::parse("linux/arm64/v8").unwrap()));
        assert!(!p.selects(&Platform::parse("linux/amd64").unwrap()));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(!v7.selects(&Platform::parse("linux/arm/v6").unwrap()));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v7").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }
}
