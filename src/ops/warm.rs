//! `ocimirror warm`: pre-fetch images into the cache so that later pulls need no upstream.
//! Either through a running mirror ([`MirrorSource`]: plain GETs of the manifests and of every
//! blob, each body read to the end so the mirror fills and commits it), or straight into the
//! storage a config names ([`LocalSource`]: the registry built in-process, each missing blob's
//! stream drained, and the commits awaited before exiting). Every image of an index is warmed
//! unless platforms are named.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use url::Url;

use super::auth::{Credentials, MirrorAuth};
use super::{ImageRef, Parsed, Platform, is_index};
use crate::config::Settings;
use crate::expiry::AccessLog;
use crate::layout;
use crate::oci::manifest::ACCEPT_ALL;
use crate::oci::{Digest, Hasher, ManifestInfo, Reference, RepoName};
use crate::registry::Registry;
use crate::storage::Storage;
use crate::util::human_bytes;

/// Index nesting followed at most (an index of indexes is rare; deeper is refused).
const MAX_DEPTH: usize = 3;
/// A config blob is kept in memory (to name the platform of a single image) up to this size.
const MAX_KEPT: usize = 4 << 20;

/// A manifest as fetched.
pub struct Fetched {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// One blob brought into the cache.
pub struct BlobFetch {
    pub size: u64,
    /// Whether the cache already held it (None: the mirror could not say).
    pub cached: Option<bool>,
    /// The body, when asked to keep it.
    pub body: Option<Bytes>,
}

/// Where warming fetches through.
#[async_trait]
pub trait Source: Send + Sync {
    async fn manifest(&self, name: &RepoName, reference: &Reference) -> Result<Fetched, String>;
    /// Bring `digest` into the cache, reading the whole body; `keep` asks for the bytes back.
    async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        keep: bool,
        progress: &ProgressBar,
    ) -> Result<BlobFetch, String>;
    /// Let everything started finish (commits, records) before the process exits.
    async fn finish(&self) {}
}

#[derive(Clone, Debug, Default)]
pub struct WarmOptions {
    /// Only these platforms of an index (empty: all).
    pub platforms: Vec<Platform>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ImageReport {
    /// As given on the command line.
    pub image: String,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    /// Platforms warmed (of an index's entries, or a single image's config).
    pub platforms: Vec<String>,
    /// Manifests fetched (the index, and each platform's manifest).
    pub manifests: usize,
    /// Distinct blobs (configs and layers) of the warmed manifests.
    pub blobs: usize,
    pub blobs_fetched: usize,
    pub blobs_cached: usize,
    /// Through a mirror whose metrics do not tell (a fleet behind a load balancer).
    pub blobs_unknown: usize,
    /// Bytes of those blobs.
    pub bytes: u64,
    pub bytes_fetched: u64,
    /// Why the image failed, when it did.
    pub error: Option<String>,
}

impl ImageReport {
    /// One line for people.
    pub fn line(&self) -> String {
        let mut s = format!("{}  {}", self.image, self.digest.as_deref().unwrap_or("-"));
        if !self.platforms.is_empty() {
            s += &format!("  {}", self.platforms.join(","));
        }
        s += &format!(
            "  {} manifests, {} blobs: {} fetched, {} already cached",
            self.manifests, self.blobs, self.blobs_fetched, self.blobs_cached
        );
        if self.blobs_unknown > 0 {
            s += &format!(", {} not told by the mirror", self.blobs_unknown);
        }
        s += &format!(
            "; {} ({} fetched)",
            human_bytes(self.bytes),
            human_bytes(self.bytes_fetched)
        );
        s
    }
}

/// Warm each image in turn; one that fails does not stop the others.
pub async fn warm(source: &dyn Source, images: &[String], opts: &WarmOptions) -> Vec<ImageReport> {
    let mut out = Vec::new();
    for image in images {
        let mut report = ImageReport {
            image: image.clone(),
            ..Default::default()
        };
        match ImageRef::parse(image) {
            Ok(r) => {
                if let Err(e) = warm_image(source, &r, opts, &mut report).await {
                    report.error = Some(e);
                }
            }
            Err(e) => report.error = Some(e),
        }
        out.push(report);
    }
    source.finish().await;
    out
}

/// A word for the operator when `image` names what looks like a registry host that is not a
/// configured upstream: it would be asked of the default upstream under that name.
pub fn routing_note(s: &Settings, image: &str) -> Option<String> {
    let r = ImageRef::parse(image).ok()?;
    let (first, _) = r.name.as_str().split_once('/')?;
    let hostlike = first.contains('.') || first.contains(':') || first == "localhost";
    if !hostlike || s.upstreams.iter().any(|u| u.name == first) {
        return None;
    }
    Some(format!(
        "{first} is not a configured upstream: {} is asked of the default upstream ({})",
        r.name, s.upstream.url
    ))
}

/// An image manifest to warm, with the platform its index gave it.
struct ImageManifest {
    platform: Option<Platform>,
    parsed: Parsed,
    body: Bytes,
}

async fn warm_image(
    source: &dyn Source,
    r: &ImageRef,
    opts: &WarmOptions,
    report: &mut ImageReport,
) -> Result<(), String> {
    let top = source.manifest(&r.name, &r.reference).await?;
    report.digest = Some(top.digest.to_string());
    report.media_type = Some(top.media_type.clone());
    report.manifests = 1;

    // The image manifests to warm: the top one, or the index's selected entries.
    let mut images = Vec::new();
    let mut pending = vec![(top, None::<Platform>, 0usize)];
    while let Some((m, platform, depth)) = pending.pop() {
        let parsed = Parsed::of(&m.body);
        if !is_index(&m.media_type) {
            images.push(ImageManifest {
                platform,
                parsed,
                body: m.body,
            });
            continue;
        }
        if depth >= MAX_DEPTH {
            return Err(format!("indexes nested deeper than {MAX_DEPTH}"));
        }
        let mut offered = Vec::new();
        let mut chosen = Vec::new();
        for e in &parsed.manifests {
            let nested = e.media_type.as_deref().is_some_and(is_index);
            let selected = match &e.platform {
                _ if opts.platforms.is_empty() => true,
                Some(p) => {
                    offered.push(p.to_string());
                    opts.platforms.iter().any(|want| want.selects(p))
                }
                None => nested,
            };
            if selected {
                chosen.push(e.clone());
            }
        }
        if chosen.is_empty() {
            let wanted: Vec<String> = opts.platforms.iter().map(|p| p.to_string()).collect();
            return Err(format!(
                "no manifest for {} in the index (it has {})",
                wanted.join(", "),
                if offered.is_empty() {
                    "none with a platform".to_owned()
                } else {
                    offered.join(", ")
                }
            ));
        }
        for e in chosen.into_iter().rev() {
            let d = Digest::parse(&e.digest).map_err(|err| format!("index entry: {err}"))?;
            let child = source
                .manifest(&r.name, &Reference::Digest(d.clone()))
                .await
                .map_err(|err| format!("manifest {d}: {err}"))?;
            report.manifests += 1;
            pending.push((child, e.platform.clone(), depth + 1));
        }
    }

    // Their blobs, each once: (digest, size if declared, is a config).
    let mut seen = BTreeSet::new();
    let mut blobs: Vec<(Digest, Option<u64>, bool)> = Vec::new();
    for im in &images {
        let declared: Vec<(String, Option<u64>, bool)> = if im.parsed.config.is_some() {
            im.parsed
                .blobs()
                .enumerate()
                .map(|(i, d)| (d.digest.clone(), d.size, i == 0))
                .collect()
        } else {
            // Docker schema 1 and the like: digests only.
            ManifestInfo::parse(&im.body, None)
                .map(|i| {
                    i.blobs
                        .iter()
                        .map(|d| (d.to_string(), None, false))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (d, size, config) in declared {
            let d = Digest::parse(&d).map_err(|e| format!("manifest references {e}"))?;
            if seen.insert(d.clone()) {
                blobs.push((d, size, config));
            }
        }
    }
    report.blobs = blobs.len();
    let total: u64 = blobs.iter().filter_map(|(_, s, _)| *s).sum();

    let bar = progress_bar(&report.image, total);
    let mut failures = Vec::new();
    let mut configs = Vec::new();
    for (d, _, config) in &blobs {
        match source.blob(&r.name, d, *config, &bar).await {
            Ok(f) => {
                report.bytes += f.size;
                match f.cached {
                    Some(true) => report.blobs_cached += 1,
                    Some(false) => {
                        report.blobs_fetched += 1;
                        report.bytes_fetched += f.size;
                    }
                    None => report.blobs_unknown += 1,
                }
                if bar.is_hidden() {
                    let how = match f.cached {
                        Some(true) => "already cached",
                        Some(false) => "fetched",
                        None => "read through the mirror",
                    };
                    eprintln!("{}: blob {d} ({} bytes) {how}", report.image, f.size);
                }
                if let Some(b) = f.body {
                    configs.push((d.clone(), b));
                }
            }
            Err(e) => failures.push(format!("blob {d}: {e}")),
        }
    }
    bar.finish_and_clear();

    // Platforms: what the index said, else what each image's config says.
    for im in &images {
        let from_config = || {
            let cfg = im.parsed.config.as_ref()?;
            let body = configs.iter().find(|(d, _)| d.to_string() == cfg.digest)?;
            serde_json::from_slice::<Platform>(&body.1)
                .ok()
                .filter(|p| !p.os.is_empty())
        };
        if let Some(p) = im.platform.clone().or_else(from_config) {
            report.platforms.push(p.to_string());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// A byte bar on a terminal; hidden (and plain lines printed instead) otherwise.
fn progress_bar(label: &str, total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar
}

/// Read `stream` to the end, checking the bytes against `digest`.
async fn drain<S, E>(
    mut stream: S,
    digest: &Digest,
    keep: bool,
    bar: &ProgressBar,
) -> Result<(u64, Option<Bytes>), String>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut hasher = Hasher::new(digest.algorithm());
    let mut n = 0u64;
    let mut kept = keep.then(BytesMut::new);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("after {n} bytes: {e}"))?;
        hasher.update(&chunk);
        n += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
        if let Some(k) = &mut kept {
            if k.len() + chunk.len() <= MAX_KEPT {
                k.extend_from_slice(&chunk);
            } else {
                kept = None;
            }
        }
    }
    let got = hasher.finish();
    if &got != digest {
        return Err(format!("{n} bytes with digest {got}"));
    }
    Ok((n, kept.map(BytesMut::freeze)))
}

// ---- through a running mirror ------------------------------------------------------------------

/// Plain HTTP against a running mirror, with a token per repository from its realm when it
/// requires them ([`MirrorAuth`]). Whether a blob was already cached is read from the
/// mirror's `/metrics` (its blob hit and miss counters before and after each blob); when they do
/// not move by exactly one (another replica answered, or `/metrics` is not reachable) the
/// blob is counted as not told.
pub struct MirrorSource {
    client: reqwest::Client,
    base: Url,
    metrics: AtomicBool,
    /// Tokens from the mirror's realm, when it requires them.
    auth: MirrorAuth,
}

impl MirrorSource {
    /// `credentials` are for the mirror's token service (`auth`); without them warm asks for
    /// anonymous tokens, as `docker pull` without a login does.
    pub fn new(
        url: &str,
        insecure: bool,
        ca_file: Option<&Path>,
        credentials: Option<Credentials>,
    ) -> Result<Self, String> {
        let base = Url::parse(url).map_err(|e| format!("--mirror {url:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("--mirror {url:?}: not an http or https URL"));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("ocimirror-warm/", env!("CARGO_PKG_VERSION")));
        if insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(MirrorSource {
            client,
            base,
            metrics: AtomicBool::new(true),
            auth: MirrorAuth::new(credentials),
        })
    }

    fn url(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        let base = u.path().trim_end_matches('/').to_owned();
        u.set_path(&format!("{base}{path}"));
        u
    }

    /// The mirror's blob hit and miss counters.
    async fn blob_counters(&self) -> Option<(f64, f64)> {
        if !self.metrics.load(Ordering::Relaxed) {
            return None;
        }
        let text = match self.client.get(self.url("/metrics")).send().await {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        };
        let Some(text) = text else {
            self.metrics.store(false, Ordering::Relaxed);
            return None;
        };
        let sum = |name: &str| {
            crate::metrics::total_in_text_where(&text, name, "kind=\"blob\"").unwrap_or(0.0)
        };
        Some((
            sum(crate::metrics::CACHE_HITS),
            sum(crate::metrics::CACHE_MISSES),
        ))
    }
}

/// An error with its causes (reqwest's own text leaves out why a request failed).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s += &format!(": {c}");
        cause = c.source();
    }
    s
}

/// `404 MANIFEST_UNKNOWN: …` from an error response.
async fn describe_error(r: reqwest::Response) -> String {
    let status = r.status();
    let body = r.bytes().await.unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            ))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    format!("the mirror answered {status}: {detail}")
}

#[async_trait]
impl Source for MirrorSource {
    async fn manifest(&self, name: &RepoName, reference: &Reference) -> Result<Fetched, String> {
        let url = self.url(&format!("/v2/{name}/manifests/{reference}"));
        let r = self
            .auth
            .send(&self.client, Some(name), || {
                self.client
                    .get(url.clone())
                    .header(reqwest::header::ACCEPT, ACCEPT_ALL)
            })
            .await?;
        if !r.status().is_success() {
            return Err(describe_error(r).await);
        }
        let header = |h: &str| {
            r.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (announced, content_type) = (header("docker-content-digest"), header("content-type"));
        let body = r.bytes().await.map_err(|e| format!("manifest body: {e}"))?;
        let digest = match (reference, announced.and_then(|a| Digest::parse(&a).ok())) {
            (Reference::Digest(d), _) => d.clone(),
            (_, Some(d)) => d,
            (_, None) => crate::oci::schema1::manifest_digest(&body),
        };
        if !crate::oci::schema1::manifest_matches(&digest, &body) {
            return Err(format!("the manifest does not match its digest {digest}"));
        }
        let info = ManifestInfo::parse(&body, content_type.as_deref())
            .map_err(|e| format!("manifest {digest}: {e}"))?;
        Ok(Fetched {
            digest,
            media_type: info.media_type,
            body,
        })
    }

    async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        keep: bool,
        bar: &ProgressBar,
    ) -> Result<BlobFetch, String> {
        let before = self.blob_counters().await;
        let url = self.url(&format!("/v2/{name}/blobs/{digest}"));
        let r = self
            .auth
            .send(&self.client, Some(name), || self.client.get(url.clone()))
            .await?;
        if !r.status().is_success() {
            return Err(describe_error(r).await);
        }
        let (size, body) = drain(r.bytes_stream(), digest, keep, bar).await?;
        let after = self.blob_counters().await;
        let cached = match (before, after) {
            (Some((h0, m0)), Some((h1, m1))) => match (h1 - h0, m1 - m0) {
                (1.0, 0.0) => Some(true),
                (0.0, 1.0) => Some(false),
                _ => None,
            },
            _ => None,
        };
        Ok(BlobFetch { size, cached, body })
    }
}

// ---- straight into storage ---------------------------------------------------------------------

/// The registry of a config, built in this process: what it fetches is stored as a running
/// mirror would store it. With an `expiry` section the warmed content is recorded as pulled.
pub struct LocalSource {
    registry: Arc<Registry>,
    storage: Arc<dyn Storage>,
    access: Option<Arc<AccessLog>>,
}

impl LocalSource {
    pub async fn new(s: &Settings) -> Result<Self, String> {
        if s.read_only {
            return Err("storage.read_only is set: nothing fetched would be kept".into());
        }
        let b = crate::assemble::build_backends(s)
            .await
            .map_err(|e| e.to_string())?;
        let storage = b.storage.clone();
        let access = s
            .expiry
            .as_ref()
            .map(|policy| AccessLog::new(storage.clone(), policy));
        let upstreams = crate::assemble::build_upstreams(s).map_err(|e| e.to_string())?;
        let registry = crate::assemble::build_registry_on(s, b, access.clone(), upstreams)
            .await
            .map_err(|e| e.to_string())?;
        Ok(LocalSource {
            registry,
            storage,
            access,
        })
    }
}

#[async_trait]
impl Source for LocalSource {
    async fn manifest(&self, name: &RepoName, reference: &Reference) -> Result<Fetched, String> {
        let m = self
            .registry
            .manifest(name, reference)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Fetched {
            digest: m.digest,
            media_type: m.media_type,
            body: m.body,
        })
    }

    async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        keep: bool,
        bar: &ProgressBar,
    ) -> Result<BlobFetch, String> {
        let stored = self
            .storage
            .stat(&layout::blob_data(digest))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(meta) = &stored
            && !keep
        {
            // Held already: a HEAD links it to this repository (asking the upstream when the
            // repository has not been seen to reference it) without reading it.
            self.registry
                .blob(name, digest, None, true)
                .await
                .map_err(|e| e.to_string())?;
            bar.inc(meta.size);
            return Ok(BlobFetch {
                size: meta.size,
                cached: Some(true),
                body: None,
            });
        }
        let reply = self
            .registry
            .blob(name, digest, None, false)
            .await
            .map_err(|e| e.to_string())?;
        let Some(stream) = reply.body else {
            return Err("no body".into());
        };
        let (size, body) = drain(stream, digest, keep, bar).await?;
        Ok(BlobFetch {
            size,
            cached: Some(stored.is_some()),
            body,
        })
    }

    async fn finish(&self) {
        self.registry.wait_for_fills().await;
        if let Some(log) = &self.access {
            log.flush().await;
        }
    }
}
