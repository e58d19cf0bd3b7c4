//! Deterministic test content: media types, hashing, pseudo-random bytes, stored-deflate gzip
//! layers, big streamed blobs, and OCI / Docker images and indexes built from a seed.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The Accept header a manifest-fetching client sends (what skopeo/containerd accept).
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, \
application/json";

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// `sha256:<hex>` -> `<hex>`.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// SplitMix64: a tiny deterministic PRNG.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `len` pseudo-random bytes derived from `seed`.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// A valid gzip stream holding `payload` in stored (uncompressed) deflate blocks, so layers are
/// genuinely gzip (skopeo detects compression from the bytes) without a compression library.
pub fn gzip_stored(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    if payload.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    } else {
        let mut chunks = payload.chunks(65535).peekable();
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            out.push(last as u8);
            let len = c.len() as u16;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(c);
        }
    }
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out
}

/// A large deterministic blob that is never held in memory: 1 MiB chunks of a seeded base block,
/// each 4 KiB stamped with its absolute offset (so misplaced bytes are detectable).
#[derive(Clone)]
pub struct BigBlob {
    pub seed: u64,
    pub size: u64,
    base: Arc<Vec<u8>>,
}

impl BigBlob {
    pub const CHUNK: u64 = 1 << 20;

    pub fn new(seed: u64, size: u64) -> Self {
        BigBlob {
            seed,
            size,
            base: Arc::new(pseudo_random_bytes(seed, Self::CHUNK as usize)),
        }
    }

    pub fn n_chunks(&self) -> u64 {
        self.size.div_ceil(Self::CHUNK)
    }

    pub fn chunk(&self, idx: u64) -> Bytes {
        let start = idx * Self::CHUNK;
        let len = Self::CHUNK.min(self.size - start) as usize;
        let mut v = self.base[..len].to_vec();
        let salt = self.seed.rotate_left(17);
        let mut off = 0usize;
        while off < len {
            let stamp = ((start + off as u64) ^ salt).to_le_bytes();
            let n = 8.min(len - off);
            v[off..off + n].copy_from_slice(&stamp[..n]);
            off += 4096;
        }
        Bytes::from(v)
    }

    pub fn stream(
        &self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let me = self.clone();
        futures_util::stream::iter(0..self.n_chunks()).map(move |i| Ok(me.chunk(i)))
    }

    /// sha256 of the whole blob, streamed chunk by chunk.
    pub fn digest(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for i in 0..self.n_chunks() {
            ctx.update(&self.chunk(i));
        }
        format!("sha256:{}", hex::encode(ctx.finish().as_ref()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn of(media_type: &str, data: &[u8]) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(data),
            size: data.len() as u64,
        }
    }
    pub fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Oci,
    Docker,
}

/// An image manifest with its blobs (config + layers). `name`/`tag` are set once pushed.
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub tag: String,
    pub media_type: String,
    pub digest: String,
    pub manifest: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// digest -> bytes for config and layers (empty for a [`BigBlob`] layer).
    pub blobs: HashMap<String, Bytes>,
}

impl Image {
    pub fn all_blobs(&self) -> Vec<Descriptor> {
        let mut v = vec![self.config.clone()];
        v.extend(self.layers.iter().cloned());
        v
    }
    pub fn blob(&self, digest: &str) -> &Bytes {
        self.blobs.get(digest).expect("blob of image")
    }
    /// The largest layer (descriptor).
    pub fn biggest_layer(&self) -> Descriptor {
        self.layers.iter().max_by_key(|d| d.size).unwrap().clone()
    }
}

/// A multi-platform index and its child images.
#[derive(Clone, Debug)]
pub struct Index {
    pub name: String,
    pub tag: String,
    pub media_type: String,
    pub digest: String,
    pub manifest: Vec<u8>,
    pub children: Vec<Image>,
}

/// Build an image (config + one gzip layer per entry of `layer_sizes`), deterministic in `seed`.
pub fn build_image(kind: Kind, seed: u64, layer_sizes: &[usize], arch: &str, os: &str) -> Image {
    let (mt, cfg_mt, layer_mt) = match kind {
        Kind::Oci => (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP),
        Kind::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER),
    };
    let mut blobs = HashMap::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, &size) in layer_sizes.iter().enumerate() {
        let payload = pseudo_random_bytes(seed.wrapping_mul(1000).wrapping_add(i as u64), size);
        diff_ids.push(sha256_digest(&payload));
        let gz = gzip_stored(&payload);
        let d = Descriptor::of(layer_mt, &gz);
        blobs.insert(d.digest.clone(), Bytes::from(gz));
        layers.push(d);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": os,
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": [format!("SEED={seed}")]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_d = Descriptor::of(cfg_mt, &config);
    blobs.insert(config_d.digest.clone(), Bytes::from(config));
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": config_d.json(),
        "layers": layers.iter().map(|d| d.json()).collect::<Vec<_>>(),
    }))
    .unwrap();
    Image {
        name: String::new(),
        tag: String::new(),
        media_type: mt.to_string(),
        digest: sha256_digest(&manifest),
        manifest,
        config: config_d,
        layers,
        blobs,
    }
}

/// The standard multi-layer OCI image: config + 3 layers (3 KiB, 300 KiB, 3 MiB).
pub fn build_oci_image(seed: u64) -> Image {
    build_image(
        Kind::Oci,
        seed,
        &[3 << 10, 300 << 10, 3 << 20],
        "amd64",
        "linux",
    )
}

/// A Docker schema2 image: config + 2 layers (10 KiB, 1 MiB).
pub fn build_docker_image(seed: u64) -> Image {
    build_image(Kind::Docker, seed, &[10 << 10, 1 << 20], "amd64", "linux")
}

/// An OCI index over linux/amd64 and linux/arm64 images.
pub fn build_index(seed: u64) -> Index {
    let children = vec![
        build_image(
            Kind::Oci,
            seed * 10 + 1,
            &[20 << 10, 200 << 10],
            "amd64",
            "linux",
        ),
        build_image(
            Kind::Oci,
            seed * 10 + 2,
            &[24 << 10, 150 << 10],
            "arm64",
            "linux",
        ),
    ];
    let entries: Vec<Value> = children
        .iter()
        .zip([("amd64", "linux"), ("arm64", "linux")])
        .map(|(c, (arch, os))| {
            json!({
                "mediaType": c.media_type,
                "digest": c.digest,
                "size": c.manifest.len(),
                "platform": {"architecture": arch, "os": os},
            })
        })
        .collect();
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    }))
    .unwrap();
    Index {
        name: String::new(),
        tag: String::new(),
        media_type: OCI_INDEX.to_string(),
        digest: sha256_digest(&manifest),
        manifest,
        children,
    }
}
