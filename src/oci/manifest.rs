//! Reading manifests: their media type and the digests they reference. The mirror never
//! re-serialises a manifest; it parses only to learn what it points at and serves the raw bytes.

use serde::Deserialize;

use super::digest::Digest;

/// Manifests larger than this are refused, as Distribution does.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// The `Accept` list sent upstream: every manifest kind the mirror can store.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes; at most 4 MiB is accepted")]
    TooLarge(usize),
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest references an invalid digest: {0}")]
    BadDigest(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    subject: Option<RawDescriptor>,
    #[serde(default)]
    fs_layers: Option<Vec<RawV1Layer>>,
    #[serde(default)]
    signatures: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawV1Layer {
    blob_sum: String,
}

/// What the mirror needs to know about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub media_type: String,
    /// Blobs (config and layers) this manifest references.
    pub blobs: Vec<Digest>,
    /// Child manifests (of an index or manifest list).
    pub children: Vec<Digest>,
}

impl ManifestInfo {
    /// Parse `body`. `content_type` is the upstream's header, used when the body does not name its
    /// own media type (optional in OCI manifests).
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge(body.len()));
        }
        let raw: Raw =
            serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
        let declared_ct = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| is_manifest_type(c));
        let media_type = match (&raw.media_type, declared_ct) {
            (Some(m), _) if !m.is_empty() => m.clone(),
            (_, Some(ct)) => ct.to_owned(),
            _ if raw.manifests.is_some() => OCI_INDEX.to_owned(),
            _ if raw.schema_version == Some(1) => {
                if raw.signatures.is_some() {
                    DOCKER_MANIFEST_V1_SIGNED.to_owned()
                } else {
                    DOCKER_MANIFEST_V1.to_owned()
                }
            }
            _ => OCI_MANIFEST.to_owned(),
        };
        let parse = |d: &str| Digest::parse(d).map_err(|e| ManifestError::BadDigest(e.to_string()));
        let mut blobs = Vec::new();
        if let Some(c) = &raw.config {
            blobs.push(parse(&c.digest)?);
        }
        for l in raw.layers.iter().flatten() {
            blobs.push(parse(&l.digest)?);
        }
        for l in raw.fs_layers.iter().flatten() {
            blobs.push(parse(&l.blob_sum)?);
        }
        blobs.sort();
        blobs.dedup();
        let mut children = Vec::new();
        for m in raw.manifests.iter().flatten() {
            children.push(parse(&m.digest)?);
        }
        if let Some(s) = &raw.subject {
            // Validated for well-formedness only; the subject is another manifest, fetched on demand.
            parse(&s.digest)?;
        }
        Ok(ManifestInfo {
            media_type,
            blobs,
            children,
        })
    }
}

pub fn is_manifest_type(ct: &str) -> bool {
    matches!(
        ct,
        OCI_MANIFEST
            | OCI_INDEX
            | DOCKER_MANIFEST
            | DOCKER_MANIFEST_LIST
            | DOCKER_MANIFEST_V1
            | DOCKER_MANIFEST_V1_SIGNED
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn image_manifest_lists_blobs() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{D1}","size":1}},"layers":[{{"digest":"{D2}","size":2}},{{"digest":"{D1}","size":1}}]}}"#
        );
        let m = ManifestInfo::parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(m.blobs.len(), 2);
        assert!(m.children.is_empty());
    }

    #[test]
    fn index_without_media_type_is_inferred() {
        let body = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D1}","size":1}}]}}"#);
        let m = ManifestInfo::parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.media_type, OCI_INDEX);
        assert_eq!(m.children, vec![Digest::parse(D1).unwrap()]);
        let m = ManifestInfo::parse(body.as_bytes(), Some(DOCKER_MANIFEST_LIST)).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST_LIST);
    }

    #[test]
    fn refuses_garbage_and_oversize() {
        assert!(ManifestInfo::parse(b"not json", None).is_err());
        let bad = r#"{"config":{"digest":"sha256:nope"}}"#;
        assert!(matches!(
            ManifestInfo::parse(bad.as_bytes(), None),
            Err(ManifestError::BadDigest(_))
        ));
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert!(matches!(
            ManifestInfo::parse(&big, None),
            Err(ManifestError::TooLarge(_))
        ));
    }
}
