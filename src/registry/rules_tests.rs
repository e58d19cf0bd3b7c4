//! The pull-through rules against an in-memory storage and a scripted upstream: counts every
//! upstream call, so "exactly one fetch" and "zero requests when cached" are checked exactly.
//!
//! Size: the whole file is test code (compiled only under `cfg(test)`); its length is the fake
//! upstream and storage plus one test per rule, which belong together.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::*;
use crate::cache::MemoryCache;
use crate::layout;
use crate::oci::{ByteRange, Tag};
use crate::storage::MemoryStorage;
use crate::storage::{ObjectMeta, Storage, StorageError};
use crate::upstream::{BlobResponse, FetchedManifest, ManifestHead, TagsResponse};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Fault {
    None,
    /// Serve bytes that do not hash to the digest.
    Corrupt,
    /// Send half the body, then fail.
    Truncate,
    RateLimited,
    Down,
}

pub(super) struct Fake {
    pub(super) blob: Bytes,
    pub(super) blob_digest: Digest,
    manifest: Bytes,
    pub(super) manifest_digest: Digest,
    fault: Mutex<Fault>,
    /// Delay between 64 KiB chunks, so concurrent requests overlap the fill.
    pace: Duration,
    pub(super) blob_gets: AtomicUsize,
    pub(super) manifest_gets: AtomicUsize,
    pub(super) manifest_heads: AtomicUsize,
    /// Where each blob GET started (its range).
    pub(super) blob_gets_from: Mutex<Vec<u64>>,
    /// Blob bytes sent, over every GET.
    pub(super) blob_bytes: Arc<AtomicUsize>,
    /// Answer every range with the whole blob.
    pub(super) ignore_ranges: std::sync::atomic::AtomicBool,
    /// The first GET stops before this offset until the semaphore has a permit (never, for a
    /// stalled fetch).
    pub(super) pause: Mutex<Option<(usize, Arc<tokio::sync::Semaphore>)>>,
    pub(super) blob_heads: AtomicUsize,
    /// While set, blob bodies stop after their first chunk: a fill stays in flight.
    stall: Arc<std::sync::atomic::AtomicBool>,
    /// Repositories under which the upstream denies knowing the blob (a private repository's
    /// digest asked for under a public name).
    denied: Mutex<Vec<String>>,
    /// The blob bounds the registry is told to hold blobs to (this fake's own bodies ignore
    /// them, as a holder's fill past its own bounds would not).
    pub(super) bounds: Mutex<crate::upstream::bounds::BlobBounds>,
}

impl Fake {
    pub(super) fn new(size: usize) -> Arc<Self> {
        let blob: Bytes = (0..size)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let blob_digest = Digest::sha256_of(&blob);
        let manifest = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{blob_digest}","size":{size}}},"layers":[]}}"#
        ));
        Arc::new(Fake {
            manifest_digest: Digest::sha256_of(&manifest),
            manifest,
            blob,
            blob_digest,
            fault: Mutex::new(Fault::None),
            pace: Duration::from_millis(2),
            blob_gets: AtomicUsize::new(0),
            manifest_gets: AtomicUsize::new(0),
            manifest_heads: AtomicUsize::new(0),
            blob_gets_from: Mutex::new(Vec::new()),
            blob_bytes: Arc::new(AtomicUsize::new(0)),
            ignore_ranges: std::sync::atomic::AtomicBool::new(false),
            pause: Mutex::new(None),
            blob_heads: AtomicUsize::new(0),
            stall: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            denied: Mutex::new(Vec::new()),
            bounds: Mutex::new(Default::default()),
        })
    }

    pub(super) fn deny(&self, repo: &str) {
        self.denied.lock().unwrap().push(repo.to_owned());
    }

    fn is_denied(&self, n: &RepoName) -> bool {
        self.denied.lock().unwrap().iter().any(|r| r == n.as_str())
    }

    pub(super) fn set(&self, f: Fault) {
        *self.fault.lock().unwrap() = f;
    }

    fn fault(&self) -> Result<Fault, UpstreamError> {
        match *self.fault.lock().unwrap() {
            Fault::RateLimited => Err(UpstreamError::RateLimited {
                retry_after: Some("7".into()),
            }),
            Fault::Down => Err(UpstreamError::Unavailable("down".into())),
            f => Ok(f),
        }
    }

    /// The fault, else whether `r` names the one manifest (as `latest` or by its digest).
    fn manifest_known(&self, r: &Reference) -> Result<(), UpstreamError> {
        self.fault()?;
        match r {
            Reference::Tag(t) if t.as_str() == "latest" => Ok(()),
            Reference::Digest(d) if *d == self.manifest_digest => Ok(()),
            _ => Err(UpstreamError::NotFound),
        }
    }
}

#[async_trait]
impl Upstream for Fake {
    fn canonical_name(&self, name: &RepoName) -> RepoName {
        name.with_library_prefix()
    }

    fn blob_bounds(&self, _: &RepoName) -> crate::upstream::bounds::BlobBounds {
        *self.bounds.lock().unwrap()
    }

    fn own_name(&self, name: &RepoName) -> RepoName {
        self.canonical_name(name)
    }

    async fn head_manifest(
        &self,
        _: &RepoName,
        r: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        self.manifest_heads.fetch_add(1, Ordering::SeqCst);
        self.manifest_known(r)?;
        Ok(ManifestHead {
            digest: Some(self.manifest_digest.clone()),
            media_type: None,
            size: Some(self.manifest.len() as u64),
        })
    }

    async fn get_manifest(
        &self,
        _: &RepoName,
        r: &Reference,
    ) -> Result<FetchedManifest, UpstreamError> {
        self.manifest_gets.fetch_add(1, Ordering::SeqCst);
        self.manifest_known(r)?;
        Ok(FetchedManifest {
            body: self.manifest.clone(),
            media_type: None,
            digest: Some(self.manifest_digest.clone()),
        })
    }

    async fn head_blob(&self, n: &RepoName, d: &Digest) -> Result<u64, UpstreamError> {
        self.blob_heads.fetch_add(1, Ordering::SeqCst);
        self.fault()?;
        if *d != self.blob_digest || self.is_denied(n) {
            return Err(UpstreamError::NotFound);
        }
        Ok(self.blob.len() as u64)
    }

    async fn get_blob(
        &self,
        n: &RepoName,
        d: &Digest,
        from: u64,
    ) -> Result<BlobResponse, UpstreamError> {
        self.blob_gets.fetch_add(1, Ordering::SeqCst);
        self.blob_gets_from.lock().unwrap().push(from);
        let fault = self.fault()?;
        if *d != self.blob_digest || self.is_denied(n) {
            return Err(UpstreamError::NotFound);
        }
        let mut data = self.blob.to_vec();
        if fault == Fault::Corrupt {
            data[0] ^= 0xff;
        }
        let size = data.len();
        let cut = if fault == Fault::Truncate {
            size / 2
        } else {
            size
        };
        let start = if self.ignore_ranges.load(Ordering::SeqCst) {
            0
        } else {
            (from as usize).min(size)
        };
        let first = self.blob_gets_from.lock().unwrap().len() == 1;
        let pause = if first {
            self.pause.lock().unwrap().clone()
        } else {
            None
        };
        let mut chunks: Vec<(usize, Result<Bytes, UpstreamError>)> = Vec::new();
        let mut at = start;
        while at < cut {
            let end = (at + 64 * 1024).min(cut);
            chunks.push((at, Ok(Bytes::copy_from_slice(&data[at..end]))));
            at = end;
        }
        if fault == Fault::Truncate {
            chunks.push((cut, Err(UpstreamError::Unavailable("reset".into()))));
        }
        let pace = self.pace;
        let fake = self.blob_bytes.clone();
        let stall = self.stall.clone();
        let stream = futures_util::stream::iter(chunks)
            .enumerate()
            .then(move |(i, (at, c))| {
                let (pause, fake, stall) = (pause.clone(), fake.clone(), stall.clone());
                async move {
                    if let Some((offset, gate)) = pause
                        && at + 64 * 1024 > offset
                    {
                        // Given back at once: one permit opens the gate for every stream.
                        let _ = gate.acquire().await;
                    }
                    tokio::time::sleep(pace).await;
                    while i > 0 && stall.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if let Ok(b) = &c {
                        fake.fetch_add(b.len(), Ordering::SeqCst);
                    }
                    c
                }
            })
            .boxed();
        Ok(BlobResponse {
            size: Some(size as u64),
            start: start as u64,
            stream,
        })
    }

    async fn tags(
        &self,
        _: &RepoName,
        _: Option<usize>,
        _: Option<&str>,
    ) -> Result<TagsResponse, UpstreamError> {
        self.fault()?;
        Ok(TagsResponse {
            body: Bytes::from_static(br#"{"name":"library/x","tags":["latest"]}"#),
            next: None,
        })
    }
}

struct Rig {
    registry: Arc<Registry>,
    storage: MemoryStorage,
    fake: Arc<Fake>,
    _spool: tempfile::TempDir,
}

fn rig(size: usize, tag_ttl: Duration, offline: bool) -> Rig {
    let spool = tempfile::tempdir().unwrap();
    let storage = MemoryStorage::new();
    let fake = Fake::new(size);
    let registry = Arc::new(registry_on(
        Arc::new(storage.clone()),
        1000,
        fake.clone(),
        tag_ttl,
        offline,
        spool.path(),
    ));
    Rig {
        registry,
        storage,
        fake,
        _spool: spool,
    }
}

impl Rig {
    /// The registry's answer to a whole-blob GET of the fake's blob under `name()`.
    async fn blob(&self) -> BlobReply {
        let d = &self.fake.blob_digest;
        self.registry.blob(&name(), d, None, false).await.unwrap()
    }

    async fn blob_stored(&self) -> bool {
        let key = layout::blob_data(&self.fake.blob_digest);
        self.storage.stat(&key).await.unwrap().is_some()
    }

    /// An offline registry on this rig's storage and upstream.
    fn offline(&self) -> Arc<Registry> {
        let storage = Arc::new(self.storage.clone());
        let spool = self._spool.path();
        Arc::new(registry_on(
            storage,
            10,
            self.fake.clone(),
            Duration::ZERO,
            true,
            spool,
        ))
    }
}

/// A registry on `storage` and `upstream`, with a memory descriptor cache of `entries`.
pub(super) fn registry_on(
    storage: Arc<dyn Storage>,
    entries: usize,
    upstream: Arc<dyn Upstream>,
    tag_ttl: Duration,
    offline: bool,
    spool: &std::path::Path,
) -> Registry {
    Registry::new(
        storage,
        Arc::new(MemoryCache::new(entries)),
        upstream,
        RegistrySettings {
            tag_ttl,
            tag_ttls: Vec::new(),
            offline,
            read_only: false,
            spool_dir: spool.to_owned(),
        },
    )
}

pub(super) fn name() -> RepoName {
    RepoName::parse("app").unwrap()
}

pub(super) fn latest() -> Reference {
    Reference::Tag(Tag::parse("latest").unwrap())
}

/// `n` concurrent whole-blob GETs of `fake`'s blob, spread over `replicas` in turn: each one
/// must read the whole blob.
pub(super) async fn concurrent_reads(replicas: &[Arc<Registry>], fake: &Fake, n: usize) {
    let mut handles = Vec::new();
    for i in 0..n {
        let reg = replicas[i % replicas.len()].clone();
        let d = fake.blob_digest.clone();
        handles.push(tokio::spawn(async move { pull(&reg, &name(), &d).await }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), fake.blob);
    }
}

pub(super) async fn read_all(reply: BlobReply) -> std::io::Result<Vec<u8>> {
    let chunks: Vec<Bytes> = reply.body.expect("body").try_collect().await?;
    Ok(chunks.concat())
}

/// The whole body of `reg`'s answer to a GET of blob `d` under `repo`.
pub(super) async fn pull(reg: &Arc<Registry>, repo: &RepoName, d: &Digest) -> Vec<u8> {
    read_all(reg.blob(repo, d, None, false).await.unwrap())
        .await
        .unwrap()
}

/// `reg`'s answer to a GET of bytes `first..=last` of blob `d` under `name()`: that range.
pub(super) async fn get_range(reg: &Arc<Registry>, d: &Digest, first: u64, last: u64) -> BlobReply {
    let range = ByteRange::parse(&format!("bytes={first}-{last}")).unwrap();
    let reply = reg.blob(&name(), d, Some(range), false).await.unwrap();
    assert_eq!(reply.range, Some((first, last)));
    reply
}

#[tokio::test]
async fn sixteen_concurrent_cold_gets_make_one_upstream_fetch() {
    let r = rig(2 * 1024 * 1024, Duration::from_secs(300), false);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    concurrent_reads(std::slice::from_ref(&r.registry), &r.fake, 16).await;
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 1);
    // Committed: the next request is served from storage.
    assert_eq!(read_all(r.blob().await).await.unwrap(), r.fake.blob);
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn corrupt_upstream_bytes_end_in_an_error_and_store_nothing() {
    let r = rig(512 * 1024, Duration::from_secs(300), false);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    r.fake.set(Fault::Corrupt);
    let reply = r.blob().await;
    // With Content-Length known, a client that got every byte has a "complete" response
    // whatever follows: the last byte must be held back until the digest checks out.
    let size = reply.size as usize;
    let mut body = reply.body.unwrap();
    let mut received = 0;
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => received += c.len(),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a corrupt fill must not end cleanly");
    assert!(
        received < size,
        "all {received} bytes of a corrupt blob were sent"
    );
    assert!(!r.blob_stored().await);
    // Healed upstream: a new fill succeeds.
    r.fake.set(Fault::None);
    assert_eq!(read_all(r.blob().await).await.unwrap(), r.fake.blob);
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn truncated_upstream_stream_stores_nothing() {
    let r = rig(512 * 1024, Duration::from_secs(300), false);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    r.fake.set(Fault::Truncate);
    let reply = r.blob().await;
    assert_eq!(reply.size, 512 * 1024);
    assert!(read_all(reply).await.is_err());
    assert!(!r.blob_stored().await);
}

#[tokio::test]
async fn a_client_that_leaves_does_not_cancel_the_fill() {
    let r = rig(1024 * 1024, Duration::from_secs(300), false);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    let mut body = r.blob().await.body.unwrap();
    body.next().await.unwrap().unwrap();
    drop(body);
    let key = layout::blob_data(&r.fake.blob_digest);
    for _ in 0..200 {
        if r.storage.stat(&key).await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.storage.read(&key).await.unwrap(), r.fake.blob);
}

#[tokio::test]
async fn range_on_a_fill_in_progress() {
    let r = rig(1024 * 1024, Duration::from_secs(300), false);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    let full = r.blob().await;
    let ranged = get_range(&r.registry, &r.fake.blob_digest, 1000, 1999).await;
    assert_eq!(read_all(ranged).await.unwrap(), r.fake.blob[1000..2000]);
    read_all(full).await.unwrap();
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tags_within_ttl_make_no_upstream_request_and_stale_is_served_on_failure() {
    let r = rig(1024, Duration::from_secs(300), false);
    let m1 = r.registry.manifest(&name(), &latest()).await.unwrap();
    assert_eq!(m1.body, r.fake.manifest);
    let heads = r.fake.manifest_heads.load(Ordering::SeqCst);
    let gets = r.fake.manifest_gets.load(Ordering::SeqCst);
    for _ in 0..5 {
        r.registry.manifest(&name(), &latest()).await.unwrap();
    }
    assert_eq!(r.fake.manifest_heads.load(Ordering::SeqCst), heads);
    assert_eq!(r.fake.manifest_gets.load(Ordering::SeqCst), gets);

    // A tag never seen costs exactly one GET (no HEAD first). With tag_ttl 0 every later
    // request revalidates with a HEAD, never a GET; stale on failure.
    let r = rig(1024, Duration::ZERO, false);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    assert_eq!(r.fake.manifest_gets.load(Ordering::SeqCst), 1);
    assert_eq!(r.fake.manifest_heads.load(Ordering::SeqCst), 0);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    r.registry.manifest(&name(), &latest()).await.unwrap();
    assert_eq!(r.fake.manifest_gets.load(Ordering::SeqCst), 1);
    assert_eq!(r.fake.manifest_heads.load(Ordering::SeqCst), 2);
    for f in [Fault::Down, Fault::RateLimited] {
        r.fake.set(f);
        let m = r.registry.manifest(&name(), &latest()).await.unwrap();
        assert_eq!(m.digest, r.fake.manifest_digest);
    }
}

/// After a restart the tag's link is read from storage once, then remembered with the link's
/// confirmation time: later requests read no link (here: one deleted meanwhile is not missed)
/// and ask the upstream nothing until that confirmation is `tag_ttl` old.
#[tokio::test]
async fn a_tag_read_from_storage_after_a_restart_is_remembered() {
    let r = rig(1024, Duration::from_secs(3600), false);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    let asked = || {
        r.fake.manifest_heads.load(Ordering::SeqCst) + r.fake.manifest_gets.load(Ordering::SeqCst)
    };
    let before = asked();
    let restarted = Arc::new(registry_on(
        Arc::new(r.storage.clone()),
        1000,
        r.fake.clone(),
        Duration::from_secs(3600),
        false,
        r._spool.path(),
    ));
    let m = restarted.manifest(&name(), &latest()).await.unwrap();
    assert_eq!(m.digest, r.fake.manifest_digest);
    let key = layout::tag_current(
        &RepoName::parse("library/app").unwrap(),
        &Tag::parse("latest").unwrap(),
    );
    r.storage.delete(&key).await.unwrap();
    for _ in 0..3 {
        let m = restarted.manifest(&name(), &latest()).await.unwrap();
        assert_eq!(m.digest, r.fake.manifest_digest);
    }
    assert_eq!(asked(), before, "the restarted registry asked the upstream");
}

#[tokio::test]
async fn uncached_content_with_failing_upstream_gets_clear_errors() {
    let r = rig(1024, Duration::ZERO, false);
    r.fake.set(Fault::RateLimited);
    match r.registry.manifest(&name(), &latest()).await {
        Err(RegistryError::Upstream(UpstreamError::RateLimited { retry_after })) => {
            assert_eq!(retry_after.as_deref(), Some("7"))
        }
        other => panic!("unexpected {:?}", other.map(|m| m.digest)),
    }
    r.fake.set(Fault::None);
    let missing = Reference::Tag(Tag::parse("nope").unwrap());
    assert!(matches!(
        r.registry.manifest(&name(), &missing).await,
        Err(RegistryError::ManifestUnknown(_))
    ));
}

#[tokio::test]
async fn offline_serves_only_the_cache() {
    let r = rig(1024, Duration::ZERO, false);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    read_all(r.blob().await).await.unwrap();
    let offline = r.offline();
    let before =
        r.fake.manifest_heads.load(Ordering::SeqCst) + r.fake.blob_gets.load(Ordering::SeqCst);
    offline.manifest(&name(), &latest()).await.unwrap();
    let b = pull(&offline, &name(), &r.fake.blob_digest).await;
    assert_eq!(b, r.fake.blob);
    // The blob is not referenced by another repository: unknown there.
    let other = RepoName::parse("other").unwrap();
    assert!(matches!(
        offline.blob(&other, &r.fake.blob_digest, None, false).await,
        Err(RegistryError::BlobUnknown)
    ));
    let after =
        r.fake.manifest_heads.load(Ordering::SeqCst) + r.fake.blob_gets.load(Ordering::SeqCst);
    assert_eq!(before, after, "offline mode contacted the upstream");
}

#[tokio::test]
async fn allow_list_refuses_before_any_upstream_call() {
    use crate::upstream::{AllowFn, AllowListed};
    let spool = tempfile::tempdir().unwrap();
    let fake = Fake::new(1024);
    let allowed: AllowFn = Arc::new(|n| n.starts_with("myorg/"));
    let registry = Arc::new(registry_on(
        Arc::new(MemoryStorage::new()),
        10,
        Arc::new(AllowListed::new(fake.clone(), allowed)),
        Duration::ZERO,
        false,
        spool.path(),
    ));
    let outside = RepoName::parse("other/app").unwrap();
    assert!(matches!(
        registry.manifest(&outside, &latest()).await,
        Err(RegistryError::Upstream(UpstreamError::NotAllowed))
    ));
    assert!(matches!(
        registry
            .blob(&outside, &fake.blob_digest, None, false)
            .await,
        Err(RegistryError::Upstream(UpstreamError::NotAllowed))
    ));
    assert_eq!(fake.manifest_heads.load(Ordering::SeqCst), 0);
    assert_eq!(fake.blob_gets.load(Ordering::SeqCst), 0);
    let inside = RepoName::parse("myorg/app").unwrap();
    registry.manifest(&inside, &latest()).await.unwrap();
}

/// A lease store shared by the replicas of a test fleet, with its own short lifetime so that a
/// holder's death is noticed within the test.
pub(super) struct MemLeases {
    pub(super) ttl: Duration,
    pub(super) map: Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    /// Renewals fail (as for a holder cut off from the lease store): leases lapse.
    pub(super) frozen: std::sync::atomic::AtomicBool,
}

impl MemLeases {
    pub(super) fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(MemLeases {
            ttl,
            map: Mutex::new(Default::default()),
            frozen: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The lease on `d` for a new holder, unless a live holder `keeps` it.
    fn grant(
        &self,
        d: &str,
        peer: Option<&str>,
        keeps: impl Fn(&str) -> bool,
    ) -> crate::cache::lease::LeaseOutcome {
        use crate::cache::lease::{LeaseOutcome, lease_value};
        let mut map = self.map.lock().unwrap();
        let now = std::time::Instant::now();
        match map.get(d) {
            Some((v, until)) if *until > now && keeps(v) => LeaseOutcome::HeldElsewhere(v.clone()),
            _ => {
                let token = lease_value(peer);
                map.insert(d.to_owned(), (token.clone(), now + self.ttl));
                LeaseOutcome::Acquired(token)
            }
        }
    }
}

#[async_trait]
impl crate::cache::lease::Leases for MemLeases {
    async fn try_acquire(
        &self,
        d: &str,
        _: Duration,
        peer: Option<&str>,
    ) -> crate::cache::lease::LeaseOutcome {
        self.grant(d, peer, |_| true)
    }

    async fn take_over(
        &self,
        d: &str,
        held: &str,
        _: Duration,
        peer: Option<&str>,
    ) -> crate::cache::lease::LeaseOutcome {
        self.grant(d, peer, |v| v != held)
    }

    async fn renew(&self, d: &str, token: &str, _: Duration) -> bool {
        if self.frozen.load(Ordering::SeqCst) {
            return false;
        }
        let mut map = self.map.lock().unwrap();
        match map.get_mut(d) {
            Some((t, until)) if t == token => {
                *until = std::time::Instant::now() + self.ttl;
                true
            }
            _ => false,
        }
    }

    async fn release(&self, d: &str, token: &str) {
        let mut map = self.map.lock().unwrap();
        if map.get(d).is_some_and(|(t, _)| t == token) {
            map.remove(d);
        }
    }
}

pub(super) fn replica(
    storage: &MemoryStorage,
    fake: &Arc<Fake>,
    leases: &Arc<MemLeases>,
    spool: &tempfile::TempDir,
) -> Arc<Registry> {
    let storage = Arc::new(storage.clone());
    let ttl = Duration::from_secs(300);
    let registry = registry_on(storage, 100, fake.clone(), ttl, false, spool.path());
    Arc::new(registry.with_leases(leases.clone()))
}

#[tokio::test]
async fn one_fill_across_replicas_sharing_storage_and_leases() {
    let spool = tempfile::tempdir().unwrap();
    let storage = MemoryStorage::new();
    let fake = Fake::new(2 * 1024 * 1024);
    let leases = MemLeases::new(Duration::from_secs(5));
    let replicas: Vec<Arc<Registry>> = (0..3)
        .map(|_| replica(&storage, &fake, &leases, &spool))
        .collect();
    for r in &replicas {
        r.manifest(&name(), &latest()).await.unwrap();
    }
    concurrent_reads(&replicas, &fake, 48).await;
    assert_eq!(fake.blob_gets.load(Ordering::SeqCst), 1);
    assert!(leases.map.lock().unwrap().is_empty(), "lease not released");
}

#[tokio::test]
async fn a_replica_takes_over_when_the_lease_holder_dies() {
    let spool = tempfile::tempdir().unwrap();
    let storage = MemoryStorage::new();
    let fake = Fake::new(64 * 1024);
    let leases = MemLeases::new(Duration::from_millis(400));
    // A holder that never fills or renews: it died right after taking the lease.
    use crate::cache::lease::{LeaseOutcome, Leases, fill_lease};
    assert!(matches!(
        leases
            .try_acquire(&fill_lease(&fake.blob_digest), Duration::ZERO, None)
            .await,
        LeaseOutcome::Acquired(_)
    ));
    let r = replica(&storage, &fake, &leases, &spool);
    r.manifest(&name(), &latest()).await.unwrap();
    assert_eq!(pull(&r, &name(), &fake.blob_digest).await, fake.blob);
    assert_eq!(fake.blob_gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_tag_link_that_failed_to_update_is_repaired_on_revalidation() {
    let r = rig(1024, Duration::ZERO, false);
    r.registry.manifest(&name(), &latest()).await.unwrap();
    let key = layout::tag_current(
        &RepoName::parse("library/app").unwrap(),
        &Tag::parse("latest").unwrap(),
    );
    // As if the last link write had failed: the cache knows the digest, the link does not.
    let stale = Digest::sha256_of(b"stale");
    r.storage
        .put(&key, Bytes::from(stale.to_string()))
        .await
        .unwrap();
    r.registry.manifest(&name(), &latest()).await.unwrap();
    let linked = r.storage.read(&key).await.unwrap();
    assert_eq!(linked, Bytes::from(r.fake.manifest_digest.to_string()));
}

/// Storage whose blob data cannot be looked at (an S3 outage seen from one kind of key), slowly
/// enough that concurrent requests are coalesced onto the failing look.
struct DataDown(MemoryStorage);

#[async_trait]
impl Storage for DataDown {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        if key.ends_with("/data") {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(StorageError::Io {
                key: key.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
            });
        }
        self.0.stat(key).await
    }
    async fn read(&self, key: &str) -> Result<Bytes, StorageError> {
        self.0.read(key).await
    }
    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<crate::storage::ByteStream, StorageError> {
        self.0.read_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.0.put(key, data).await
    }
    async fn writer(
        &self,
        key: &str,
    ) -> Result<Box<dyn crate::storage::ObjectWriter>, StorageError> {
        self.0.writer(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.0.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.0.list(prefix).await
    }
}

/// Concurrent requests for a manifest whose storage look-up fails share one pass-through: one
/// upstream GET; and with the upstream down as well, every one of them gets the same 503.
#[tokio::test]
async fn coalesced_requests_pass_a_storage_outage_through_together() {
    let spool = tempfile::tempdir().unwrap();
    let fake = Fake::new(1024);
    let registry = Arc::new(registry_on(
        Arc::new(DataDown(MemoryStorage::new())),
        100,
        fake.clone(),
        Duration::from_secs(300),
        false,
        spool.path(),
    ));
    let reference = Reference::Digest(fake.manifest_digest.clone());
    let many = || {
        (0..8)
            .map(|_| {
                let (reg, reference) = (registry.clone(), reference.clone());
                tokio::spawn(async move { reg.manifest(&name(), &reference).await })
            })
            .collect::<Vec<_>>()
    };
    for h in many() {
        let m = h.await.unwrap().expect("passed through");
        assert_eq!(m.digest, fake.manifest_digest);
    }
    assert_eq!(fake.manifest_gets.load(Ordering::SeqCst), 1);
    fake.set(Fault::Down);
    let other = Reference::Digest(Digest::sha256_of(b"not cached"));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (reg, other) = (registry.clone(), other.clone());
            tokio::spawn(async move { reg.manifest(&name(), &other).await })
        })
        .collect();
    for h in handles {
        let e = h.await.unwrap().expect_err("the upstream is down");
        assert!(
            matches!(e, RegistryError::Upstream(UpstreamError::Unavailable(_))),
            "every caller sees the upstream failure, not an internal error: {e:?}"
        );
        let status =
            axum::response::IntoResponse::into_response(crate::error::ApiError::from(e)).status();
        assert_eq!(status, 503);
    }
}

pub(super) fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

/// Issue 20: a manifest is only a claim on the blobs it lists. A repository whose manifest lists
/// a digest cached for another repository gets it only when the upstream confirms it under that
/// repository; a cold pull still costs one GET per blob and no HEAD.
#[tokio::test]
async fn a_manifest_listing_a_blob_does_not_let_its_repository_serve_it() {
    let r = rig(1024, Duration::from_secs(300), false);
    let d = r.fake.blob_digest.clone();
    r.registry
        .manifest(&repo("private"), &latest())
        .await
        .unwrap();
    assert_eq!(pull(&r.registry, &repo("private"), &d).await, r.fake.blob);
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 1);
    assert_eq!(
        r.fake.blob_heads.load(Ordering::SeqCst),
        0,
        "the cold pull asked more than its GET"
    );
    let private_link = layout::layer_link(&repo("library/private"), &d);
    assert!(r.storage.stat(&private_link).await.unwrap().is_some());

    // The attacker's repository lists the same digest; its upstream does not serve it there.
    r.fake.deny("library/evil");
    r.registry.manifest(&repo("evil"), &latest()).await.unwrap();
    let evil_link = layout::layer_link(&repo("library/evil"), &d);
    assert!(
        r.storage.stat(&evil_link).await.unwrap().is_none(),
        "a manifest's claim was linked"
    );
    for head in [false, true] {
        assert!(matches!(
            r.registry.blob(&repo("evil"), &d, None, head).await,
            Err(RegistryError::BlobUnknown)
        ));
    }
    assert!(r.storage.stat(&evil_link).await.unwrap().is_none());
    assert_eq!(r.fake.blob_heads.load(Ordering::SeqCst), 2);
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 1);

    // A legitimate image sharing the blob: one HEAD confirms it, the bytes come from storage,
    // and the confirmation is kept (no upstream call the next time).
    assert_eq!(pull(&r.registry, &repo("shared"), &d).await, r.fake.blob);
    assert_eq!(r.fake.blob_heads.load(Ordering::SeqCst), 3);
    assert_eq!(pull(&r.registry, &repo("shared"), &d).await, r.fake.blob);
    assert_eq!(r.fake.blob_heads.load(Ordering::SeqCst), 3);
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 1);
}

/// A request under one name joining a fill started under another must be confirmed under its
/// own name first: the fill's GET answered for the other repository only.
#[tokio::test]
async fn joining_a_fill_started_under_another_name_asks_the_upstream_first() {
    let r = rig(512 * 1024, Duration::from_secs(300), false);
    let d = r.fake.blob_digest.clone();
    r.fake.deny("library/evil");
    r.fake.stall.store(true, Ordering::SeqCst);
    let first = r
        .registry
        .blob(&repo("private"), &d, None, false)
        .await
        .unwrap();
    assert!(
        r.registry.fills.get(&d).is_some(),
        "the fill should be in flight"
    );
    assert!(matches!(
        r.registry.blob(&repo("evil"), &d, None, false).await,
        Err(RegistryError::BlobUnknown)
    ));
    assert_eq!(r.fake.blob_heads.load(Ordering::SeqCst), 1);
    // Under the same name, joining costs nothing.
    let same = r
        .registry
        .blob(&repo("private"), &d, None, false)
        .await
        .unwrap();
    assert_eq!(r.fake.blob_heads.load(Ordering::SeqCst), 1);
    // Under another name the upstream allows, it joins after one HEAD.
    let other = r
        .registry
        .blob(&repo("shared"), &d, None, false)
        .await
        .unwrap();
    assert_eq!(r.fake.blob_heads.load(Ordering::SeqCst), 2);
    r.fake.stall.store(false, Ordering::SeqCst);
    for reply in [first, same, other] {
        assert_eq!(read_all(reply).await.unwrap(), r.fake.blob);
    }
    assert_eq!(r.fake.blob_gets.load(Ordering::SeqCst), 1);
    r.registry.wait_for_fills().await;
    for (name, linked) in [("private", true), ("shared", true), ("evil", false)] {
        let key = layout::layer_link(&repo(&format!("library/{name}")), &d);
        assert_eq!(
            r.storage.stat(&key).await.unwrap().is_some(),
            linked,
            "{name}"
        );
    }
}

/// Offline, only confirmed links serve, whoever wrote them (a Distribution-written cache's
/// links were made by fetches, so they count).
#[tokio::test]
async fn offline_serves_confirmed_links_only() {
    let r = rig(1024, Duration::ZERO, false);
    let d = r.fake.blob_digest.clone();
    r.registry
        .manifest(&repo("private"), &latest())
        .await
        .unwrap();
    pull(&r.registry, &repo("private"), &d).await;
    r.registry
        .manifest(&repo("claims"), &latest())
        .await
        .unwrap();
    let written_by_distribution = layout::layer_link(&repo("library/fetched"), &d);
    r.storage
        .put(&written_by_distribution, Bytes::from(d.to_string()))
        .await
        .unwrap();
    let offline = r.offline();
    let calls = |f: &Fake| f.blob_heads.load(Ordering::SeqCst) + f.blob_gets.load(Ordering::SeqCst);
    let before = calls(&r.fake);
    for name in ["private", "fetched"] {
        assert_eq!(pull(&offline, &repo(name), &d).await, r.fake.blob, "{name}");
    }
    assert!(matches!(
        offline.blob(&repo("claims"), &d, None, false).await,
        Err(RegistryError::BlobUnknown)
    ));
    assert_eq!(calls(&r.fake), before);
}

/// A blob being filled, taken as spool pieces (a connection that sends files), is held for
/// expiry until its pieces are dropped, as a streamed body or a stored file is.
#[tokio::test]
async fn a_fill_sent_as_pieces_is_held_for_expiry_until_sent() {
    let spool = tempfile::tempdir().unwrap();
    let storage = MemoryStorage::new();
    let fake = Fake::new(256 * 1024);
    let log = crate::expiry::AccessLog::new(
        Arc::new(storage.clone()),
        &crate::expiry::ExpiryPolicy::default(),
    );
    let registry = Arc::new(
        registry_on(
            Arc::new(storage),
            100,
            fake.clone(),
            Duration::from_secs(300),
            false,
            spool.path(),
        )
        .with_access_log(log.clone()),
    );
    registry.manifest(&name(), &latest()).await.unwrap();
    let d = &fake.blob_digest;
    let take = Take {
        redirect: false,
        file: true,
    };
    let reply = registry
        .blob_for(&name(), d, None, false, take)
        .await
        .unwrap();
    let pieces = reply.pieces.expect("a miss taken as pieces");
    log.flush().await;
    assert!(log.is_active(d), "not held while its pieces are being sent");
    let sent: usize = pieces
        .map_ok(|p| p.len)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .sum();
    assert_eq!(sent, fake.blob.len());
    log.flush().await;
    assert!(!log.is_active(d), "still held after its pieces were sent");
}
