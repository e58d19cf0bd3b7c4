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

/// A config or layer descriptor with the size its manifest declares.
#[derive(Deserialize)]
struct SizedDescriptor {
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct SizedBlobs {
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<Vec<serde_json::Value>>,
}

/// The blobs (config and layers) `body` lists with the size it declares for each. Descriptors
/// without a well-formed digest and size are left out (schema 1 declares none); so is all of a
/// body that is not a manifest.
pub fn declared_blob_sizes(body: &[u8]) -> Vec<(Digest, u64)> {
    let Ok(raw) = serde_json::from_slice::<SizedBlobs>(body) else {
        return Vec::new();
    };
    raw.config
        .into_iter()
        .chain(raw.layers.into_iter().flatten())
        .filter_map(|v| serde_json::from_value::<SizedDescriptor>(v).ok())
        .filter_map(|d| Some((Digest::parse(&d.digest).ok()?, d.size)))
        .collect()
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
    fn declared_sizes_of_config_and_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":7}},"layers":[{{"digest":"{D2}","size":1048576}},{{"digest":"bad","size":1}},{{"digest":"{D1}"}}]}}"#
        );
        let got = declared_blob_sizes(body.as_bytes());
        assert_eq!(
            got,
            vec![
                (Digest::parse(D1).unwrap(), 7),
                (Digest::parse(D2).unwrap(), 1 << 20)
            ]
        );
        let index = format!(r#"{{"manifests":[{{"digest":"{D1}","size":1}}]}}"#);
        assert!(declared_blob_sizes(index.as_bytes()).is_empty());
        assert!(declared_blob_sizes(b"not json").is_empty());
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

#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::oci::digest::props::digest;

    /// Arbitrary JSON, nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
            digest().prop_map(|d| Value::from(d.to_string())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("mediaType".to_owned()),
                        Just("schemaVersion".to_owned()),
                        Just("config".to_owned()),
                        Just("layers".to_owned()),
                        Just("manifests".to_owned()),
                        Just("subject".to_owned()),
                        Just("fsLayers".to_owned()),
                        Just("digest".to_owned()),
                        Just("blobSum".to_owned()),
                        Just("signatures".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn descriptors(ds: &[Digest]) -> Value {
        Value::from(
            ds.iter()
                .map(|d| json!({"digest": d.to_string(), "size": 1, "mediaType": "x"}))
                .collect::<Vec<_>>(),
        )
    }

    fn content_type() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            proptest::sample::select(vec![
                OCI_MANIFEST,
                OCI_INDEX,
                DOCKER_MANIFEST,
                DOCKER_MANIFEST_LIST,
                DOCKER_MANIFEST_V1,
                DOCKER_MANIFEST_V1_SIGNED,
                "application/json",
                "",
            ])
            .prop_map(str::to_owned),
            ".{0,30}",
        ])
    }

    proptest! {
        /// Well-formed manifests: the blobs are exactly config + layers + fsLayers (sorted, no
        /// duplicates), the children exactly the index entries in order.
        #[test]
        fn references_are_read_exactly(
            config in proptest::option::of(digest()),
            layers in proptest::option::of(proptest::collection::vec(digest(), 0..6)),
            fs_layers in proptest::option::of(proptest::collection::vec(digest(), 0..4)),
            manifests in proptest::option::of(proptest::collection::vec(digest(), 0..6)),
            subject in proptest::option::of(digest()),
            media_type in proptest::option::of(".{0,40}"),
            ct in content_type(),
        ) {
            let mut doc = serde_json::Map::new();
            doc.insert("schemaVersion".into(), 2.into());
            if let Some(m) = &media_type {
                doc.insert("mediaType".into(), m.clone().into());
            }
            if let Some(c) = &config {
                doc.insert("config".into(), json!({"digest": c.to_string(), "size": 3}));
            }
            if let Some(l) = &layers {
                doc.insert("layers".into(), descriptors(l));
            }
            if let Some(l) = &fs_layers {
                let v: Vec<Value> = l.iter().map(|d| json!({"blobSum": d.to_string()})).collect();
                doc.insert("fsLayers".into(), v.into());
            }
            if let Some(m) = &manifests {
                doc.insert("manifests".into(), descriptors(m));
            }
            if let Some(s) = &subject {
                doc.insert("subject".into(), json!({"digest": s.to_string(), "size": 9}));
            }
            let body = serde_json::to_vec(&Value::Object(doc)).unwrap();
            let info = ManifestInfo::parse(&body, ct.as_deref()).unwrap();

            let mut want: Vec<Digest> = config.into_iter()
                .chain(layers.into_iter().flatten())
                .chain(fs_layers.into_iter().flatten())
                .collect();
            want.sort();
            want.dedup();
            prop_assert_eq!(info.blobs, want);
            prop_assert_eq!(info.children, manifests.clone().unwrap_or_default());

            // The body's own media type wins, then a manifest Content-Type, then inference.
            let declared = ct.as_deref().map(|c| c.split(';').next().unwrap_or("").trim())
                .filter(|c| is_manifest_type(c));
            let want_type = match (media_type.as_deref(), declared) {
                (Some(m), _) if !m.is_empty() => m.to_owned(),
                (_, Some(c)) => c.to_owned(),
                _ if manifests.is_some() => OCI_INDEX.to_owned(),
                _ => OCI_MANIFEST.to_owned(),
            };
            prop_assert_eq!(info.media_type, want_type);
        }

        /// One bad digest anywhere refuses the whole manifest.
        #[test]
        fn one_bad_digest_refuses(
            good in proptest::collection::vec(digest(), 1..5),
            bad in prop_oneof![
                "sha256:[0-9a-f]{0,63}",
                "sha256:[0-9A-F]{64}",
                "sha256:../../[a-z]{1,10}",
                "md5:[0-9a-f]{32}",
                ".{0,20}",
            ],
            field in 0usize..5,
        ) {
            let mut layers: Vec<Value> = good.iter().map(|d| json!({"digest": d.to_string()})).collect();
            let bad_desc = json!({"digest": bad});
            let doc = match field {
                0 => json!({"config": bad_desc, "layers": layers}),
                1 => { layers.push(bad_desc); json!({"layers": layers}) }
                2 => { layers.insert(0, bad_desc); json!({"manifests": layers}) }
                3 => json!({"layers": layers, "subject": bad_desc}),
                _ => json!({"schemaVersion": 1, "fsLayers": [{"blobSum": bad}]}),
            };
            let r = ManifestInfo::parse(doc.to_string().as_bytes(), None);
            prop_assert!(matches!(r, Err(ManifestError::BadDigest(_))), "{:?}", r);
        }

        /// Arbitrary JSON documents and arbitrary bytes: an answer, never a panic; every digest
        /// returned is valid, and a refusal's message stays bounded.
        #[test]
        fn arbitrary_documents(v in json_value(), ct in content_type()) {
            let body = serde_json::to_vec(&v).unwrap();
            if let Ok(info) = ManifestInfo::parse(&body, ct.as_deref()) {
                for d in info.blobs.iter().chain(&info.children) {
                    prop_assert_eq!(&Digest::parse(&d.to_string()).unwrap(), d);
                }
                prop_assert!(info.blobs.windows(2).all(|w| w[0] < w[1]));
            }
        }

        #[test]
        fn arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512), ct in content_type()) {
            let _ = ManifestInfo::parse(&body, ct.as_deref());
        }
    }

    /// Deeply nested input is refused by the JSON parser's depth limit, not by a stack overflow.
    #[test]
    fn deep_nesting_is_refused() {
        for open in ["[", "{\"signatures\":", "{\"x\":[{\"y\":"] {
            let body = open.repeat(100_000);
            assert!(ManifestInfo::parse(body.as_bytes(), None).is_err());
        }
    }
}
