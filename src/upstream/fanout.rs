//! The manifest fan-out bound: a guard that refuses an upstream manifest listing more
//! descriptors (config, layers, index entries, schema 1 `fsLayers`) than
//! `upstream.max_manifest_descriptors`, before the mirror stores, caches or serves it. Distribution
//! accepts a 4 MiB manifest of some 22,000 layers; a client pulling one would make the mirror
//! fetch, spool and track every one of them. Nothing of a refused manifest is kept.

use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::guard::{Guard, Guarded};
use super::{Upstream, UpstreamError};

/// Docker caps an image at 127 layers and real indexes list tens of platforms: a thousand
/// descriptors leaves room for every real image.
pub const DEFAULT_MAX_DESCRIPTORS: usize = 1000;

pub struct FanOut {
    max: usize,
}

pub type FanOutBounded = Guarded<FanOut>;

impl FanOutBounded {
    pub fn new(inner: Arc<dyn Upstream>, max_descriptors: usize) -> Self {
        Guarded {
            inner,
            guard: FanOut {
                max: max_descriptors,
            },
        }
    }
}

/// Only the lists' lengths: their entries are not even parsed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Lists {
    #[serde(default)]
    config: Option<IgnoredAny>,
    #[serde(default)]
    layers: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    manifests: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    fs_layers: Option<Vec<IgnoredAny>>,
}

/// How many descriptors `body` lists; None when it is not a JSON object (the registry's own
/// parse reports that).
pub fn descriptors(body: &[u8]) -> Option<usize> {
    let l: Lists = serde_json::from_slice(body).ok()?;
    Some(
        usize::from(l.config.is_some())
            + [l.layers, l.manifests, l.fs_layers]
                .iter()
                .map(|v| v.as_ref().map_or(0, Vec::len))
                .sum::<usize>(),
    )
}

/// Refuse `body` when it lists more than `max` descriptors.
pub fn check(body: &[u8], max: usize) -> Result<(), UpstreamError> {
    match descriptors(body) {
        Some(n) if n > max => {
            metrics::counter!(crate::metrics::UPSTREAM_BOUNDS, "bound" => "max_manifest_descriptors")
                .increment(1);
            Err(UpstreamError::ManifestRefused(format!(
                "the upstream manifest lists {n} descriptors; at most {max} are accepted \
                 (upstream.max_manifest_descriptors)"
            )))
        }
        _ => Ok(()),
    }
}

impl Guard for FanOut {
    fn manifest(&self, body: &[u8]) -> Result<(), UpstreamError> {
        check(body, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn image(layers: usize) -> Vec<u8> {
        let l = format!(r#"{{"mediaType":"x","digest":"{D}","size":1}}"#);
        format!(
            r#"{{"schemaVersion":2,"config":{l},"layers":[{}]}}"#,
            vec![l.as_str(); layers].join(",")
        )
        .into_bytes()
    }

    #[test]
    fn counts_every_list() {
        assert_eq!(descriptors(&image(3)), Some(4));
        let index = format!(r#"{{"manifests":[{{"digest":"{D}"}},{{"digest":"{D}"}}]}}"#);
        assert_eq!(descriptors(index.as_bytes()), Some(2));
        let v1 = format!(r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{D}"}}]}}"#);
        assert_eq!(descriptors(v1.as_bytes()), Some(1));
        assert_eq!(descriptors(b"not json"), None);
    }

    #[test]
    fn refuses_above_the_bound_with_a_message() {
        assert!(check(&image(9), 10).is_ok());
        let e = check(&image(10), 10).unwrap_err();
        assert!(matches!(&e, UpstreamError::ManifestRefused(m) if m.contains("11 descriptors")));
        assert!(e.to_string().contains("upstream.max_manifest_descriptors"));
        assert!(
            check(b"not json", 0).is_ok(),
            "left to the registry's parse"
        );
    }
}
