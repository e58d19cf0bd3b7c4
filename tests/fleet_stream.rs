//! A fleet streams like one mirror: three replicas of ocimirror (real processes) on one
//! store (SeaweedFS; fake-gcs-server and Azurite too for the streaming of one fill) and one Redis, with `cluster` sections, in front of a real Distribution
//! registry behind a throttling proxy. The proxy is the one in-process part: it paces blob
//! bodies, holds the first fetch of a blob half-way until the test lets it go (so "while the
//! fill is still running" is an ordering the test sets, not a time it measures), can corrupt a
//! byte or ignore `Range`, and counts every blob request and byte it passes on.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tempfile::TempDir;

use common::*;

const ROOT: &str = "fleet";
/// Secret every replica of a test fleet shares.
const SECRET: &str = "fleet-stream-test-secret-0123456789";

// ---------------------------------------------------------------------------------------------
// The throttling proxy in front of the upstream
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Shaping {
    /// Blob bytes per second; 0: as fast as the registry sends them.
    rate: AtomicU64,
    /// The first blob GET stops at this offset until `gate` has a permit (0: never stops).
    pause_at: AtomicU64,
    /// Flip the byte at this offset of blob bodies (0: none).
    corrupt_at: AtomicU64,
    ignore_ranges: AtomicBool,
}

struct ProxyState {
    target: String,
    http: reqwest::Client,
    shaping: Shaping,
    gate: tokio::sync::Semaphore,
    /// (path, Range header) of every blob GET.
    blob_gets: Mutex<Vec<(String, Option<String>)>>,
    blob_bytes: AtomicU64,
    /// Blob bodies sent to their end.
    blob_bodies_done: AtomicUsize,
}

struct Proxy {
    state: Arc<ProxyState>,
    server: LocalServer,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let state = Arc::new(ProxyState {
            target: target.trim_end_matches('/').to_owned(),
            http: forwarding_client(),
            shaping: Shaping::default(),
            gate: tokio::sync::Semaphore::new(0),
            blob_gets: Mutex::new(Vec::new()),
            blob_bytes: AtomicU64::new(0),
            blob_bodies_done: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let server = LocalServer::start(app).await;
        Proxy { state, server }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn open_gate(&self) {
        self.state.gate.add_permits(1);
    }

    /// Blob bodies at `rate` bytes per second.
    fn pace(&self, rate: u64) {
        self.state.shaping.rate.store(rate, Ordering::SeqCst);
    }

    /// The first blob GET stops at `offset` until [`Proxy::open_gate`].
    fn hold_first_fetch_at(&self, offset: u64) {
        self.state.shaping.pause_at.store(offset, Ordering::SeqCst);
    }

    /// Flip the byte at `offset` of every blob body.
    fn corrupt_at(&self, offset: u64) {
        self.state
            .shaping
            .corrupt_at
            .store(offset, Ordering::SeqCst);
    }

    fn blob_gets(&self) -> Vec<(String, Option<String>)> {
        self.state.blob_gets.lock().unwrap().clone()
    }

    fn blob_bytes(&self) -> u64 {
        self.state.blob_bytes.load(Ordering::SeqCst)
    }

    fn blob_bodies_done(&self) -> usize {
        self.state.blob_bodies_done.load(Ordering::SeqCst)
    }
}

async fn forward(State(p): State<Arc<ProxyState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let is_blob_get = parts.method == "GET" && parts.uri.path().contains("/blobs/sha256:");
    let ignore_ranges = p.shaping.ignore_ranges.load(Ordering::SeqCst);
    let out = forwarded(&p.http, &p.target, &parts, |k| {
        k == "range" && ignore_ranges
    });
    let first = if is_blob_get {
        let range = parts.headers.get("range").and_then(|v| v.to_str().ok());
        let mut gets = p.blob_gets.lock().unwrap();
        gets.push((parts.uri.path().to_owned(), range.map(str::to_owned)));
        gets.len() == 1
    } else {
        false
    };
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => return bad_gateway(e),
    };
    let b = response_head(&resp);
    if !is_blob_get {
        let body = resp.bytes().await.unwrap_or_default();
        return b.body(Body::from(body)).unwrap();
    }
    // Where the body starts in the blob.
    let start: u64 = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let upstream = resp.bytes_stream();
    let body = futures_util::stream::unfold(
        (upstream, Bytes::new(), start, p.clone(), false),
        move |(mut up, mut buf, mut at, p, ended)| async move {
            if ended {
                return None;
            }
            if buf.is_empty() {
                match up.next().await {
                    Some(Ok(b)) => buf = b,
                    Some(Err(e)) => {
                        let e = std::io::Error::other(e.to_string());
                        return Some((Err(e), (up, buf, at, p, true)));
                    }
                    None => {
                        p.blob_bodies_done.fetch_add(1, Ordering::SeqCst);
                        return None;
                    }
                }
            }
            let pause = p.shaping.pause_at.load(Ordering::SeqCst);
            let mut n = buf.len().min(64 * 1024);
            if first && pause > at {
                n = n.min((pause - at) as usize);
            }
            if first && pause > 0 && at == pause {
                // Held here until the test opens the gate (given back at once: it stays open).
                let _ = p.gate.acquire().await;
            }
            let rate = p.shaping.rate.load(Ordering::SeqCst);
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
            }
            let mut chunk = buf.split_to(n).to_vec();
            let corrupt = p.shaping.corrupt_at.load(Ordering::SeqCst);
            if corrupt > 0 && corrupt >= at && corrupt < at + n as u64 {
                chunk[(corrupt - at) as usize] ^= 0xff;
            }
            at += n as u64;
            p.blob_bytes.fetch_add(n as u64, Ordering::SeqCst);
            Some((Ok(Bytes::from(chunk)), (up, buf, at, p, false)))
        },
    );
    b.body(Body::from_stream(body)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// A fleet of three
// ---------------------------------------------------------------------------------------------

struct Fleet {
    replicas: Vec<Mirror>,
    peer_urls: Vec<String>,
    proxy: Proxy,
    reg: Registry,
    store: Store,
    redis: RedisServer,
    _secret: TempDir,
}

/// The fleet's blob: its name, digest and size.
struct Blob {
    name: String,
    digest: String,
    size: u64,
}

impl Blob {
    /// What a client that got the whole blob, right, saw: (size, digest).
    fn whole(&self) -> Result<(u64, String), String> {
        Ok((self.size, self.digest.clone()))
    }
}

impl Fleet {
    /// `n` replicas with `cluster` sections on one store and one Redis; `None` (skip) when a
    /// real part is missing.
    async fn start(n: usize, backend: Backend) -> Option<Fleet> {
        let redis = RedisServer::start().await?;
        let store = Store::start(backend).await?;
        let reg = Registry::start(RegistryOpts::default()).await;
        let proxy = Proxy::start(&reg.url()).await;
        let secret = tempfile::tempdir().unwrap();
        let secret_file = secret.path().join("cluster");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let mut replicas = Vec::new();
        let mut peer_urls = Vec::new();
        for _ in 0..n {
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let opts = MirrorOpts::upstream(&proxy.url())
                .tag_ttl("5m")
                .storage_yaml(&store.storage_yaml(ROOT))
                .extra(&redis.cache_yaml())
                .extra(&cluster_yaml(port, &url, &secret_file));
            replicas.push(Mirror::start(opts).await);
            peer_urls.push(url);
        }
        Some(Fleet {
            replicas,
            peer_urls,
            proxy,
            reg,
            store,
            redis,
            _secret: secret,
        })
    }

    /// Push a `size`-byte single-layer image and fetch its manifest on every replica, so that
    /// the layer GETs that follow need no upstream HEAD.
    async fn blob(&self, name: &str, size: u64, seed: u64) -> Blob {
        let (img, _) = self
            .reg
            .pusher()
            .push_big_image(name, "v1", size, seed)
            .await;
        for (i, m) in self.replicas.iter().enumerate() {
            let r = m.get_manifest(name, "v1").send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "manifest from replica {i}");
        }
        Blob {
            name: name.to_owned(),
            digest: img.layers[0].digest.clone(),
            size,
        }
    }

    /// The blob's object in the store, hashed: (size, digest), or `None` when absent.
    async fn stored(&self, b: &Blob) -> Option<(u64, String)> {
        self.store.stored(ROOT, &blob_key(&b.digest)).await
    }

    /// Wait until no replica has a fill in flight.
    async fn fills_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (i, m) in self.replicas.iter().enumerate() {
            while m.metric("ocimirror_fills_in_flight", &[]).await > 0.0 {
                assert!(Instant::now() < deadline, "replica {i} still filling");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn cluster_yaml(port: u16, advertise: &str, secret: &std::path::Path) -> String {
    format!(
        "cluster:\n  listen: 127.0.0.1:{port}\n  advertise: {advertise}\n  secret_file: {}\n",
        q(&secret.display().to_string())
    )
}

/// What a client saw: when its first byte came (by the count of blob bodies the proxy had
/// finished then), and the whole body hashed (or how it broke).
struct Seen {
    replica: usize,
    bodies_done_at_first_byte: Option<usize>,
    result: Result<(u64, String), String>,
}

/// Clients of a fleet's replicas, each GETting a blob and reporting its first byte.
struct Clients<'f> {
    fleet: &'f Fleet,
    tx: tokio::sync::mpsc::UnboundedSender<usize>,
    rx: tokio::sync::mpsc::UnboundedReceiver<usize>,
}

impl<'f> Clients<'f> {
    fn of(fleet: &'f Fleet) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Clients { fleet, tx, rx }
    }

    /// A client of replica `replica` GETting `b`.
    fn spawn(&self, replica: usize, b: &Blob) -> tokio::task::JoinHandle<Seen> {
        let url = format!(
            "{}/v2/{}/blobs/{}",
            self.fleet.replicas[replica].url(),
            b.name,
            b.digest
        );
        let proxy = self.fleet.proxy.state.clone();
        let first = self.tx.clone();
        tokio::spawn(async move {
            let mut seen = Seen {
                replica,
                bodies_done_at_first_byte: None,
                result: Err("no response".into()),
            };
            let r = match client().get(&url).send().await {
                Ok(r) => r,
                Err(e) => {
                    seen.result = Err(format!("request failed: {e}"));
                    return seen;
                }
            };
            let status = r.status().as_u16();
            if status != 200 {
                seen.result = Err(format!("status {status}"));
                return seen;
            }
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            let mut n = 0u64;
            let mut s = r.bytes_stream();
            while let Some(item) = s.next().await {
                match item {
                    Ok(c) => {
                        if n == 0 && !c.is_empty() {
                            seen.bodies_done_at_first_byte =
                                Some(proxy.blob_bodies_done.load(Ordering::SeqCst));
                            let _ = first.send(replica);
                        }
                        n += c.len() as u64;
                        ctx.update(&c);
                    }
                    Err(e) => {
                        seen.result = Err(format!("body broke after {n} bytes: {e}"));
                        return seen;
                    }
                }
            }
            seen.result = Ok((n, format!("sha256:{}", hex::encode(ctx.finish().as_ref()))));
            seen
        })
    }

    /// Wait for `n` first-byte reports: the replicas they came from. Panics after 60 s.
    async fn firsts(&mut self, n: usize) -> Vec<usize> {
        let mut v = Vec::new();
        while v.len() < n {
            match tokio::time::timeout(Duration::from_secs(60), self.rx.recv()).await {
                Ok(Some(r)) => v.push(r),
                _ => panic!("only {} of {n} clients had a first byte: {v:?}", v.len()),
            }
        }
        v
    }

    /// A client of `replica` GETting `b`, once it had its first byte (the first one to ask
    /// takes the fill's lease).
    async fn started(&mut self, replica: usize, b: &Blob) -> tokio::task::JoinHandle<Seen> {
        let c = self.spawn(replica, b);
        self.firsts(1).await;
        c
    }

    /// `n` clients GETting `b`, on `replicas` in turn, once each had its first byte: the
    /// clients, and the replicas the first bytes came from.
    async fn spread(
        &mut self,
        b: &Blob,
        n: usize,
        replicas: &[usize],
    ) -> (Vec<tokio::task::JoinHandle<Seen>>, Vec<usize>) {
        let clients = (0..n)
            .map(|k| self.spawn(replicas[k % replicas.len()], b))
            .collect();
        (clients, self.firsts(n).await)
    }
}

/// Every client got the whole blob, right.
async fn all_whole(clients: Vec<tokio::task::JoinHandle<Seen>>, b: &Blob) {
    for c in clients {
        let s = c.await.unwrap();
        assert_eq!(s.result, b.whole(), "replica {}'s client", s.replica);
    }
}

// ---------------------------------------------------------------------------------------------

on_backends!(three_replicas_stream_one_fill_to_every_client: seaweedfs, fake_gcs, azurite);

/// 18 clients spread over 3 replicas ask for one uncached blob: the upstream sends it once;
/// every client of every replica has its first byte while the one fetch is still held half-way;
/// a ranged GET on a replica that does not hold the lease is answered mid-fill; every client
/// gets every byte right, and the store holds the blob. (48 MiB; 7 MiB on fake-gcs-server,
/// which takes no object over one upload part.)
async fn three_replicas_stream_one_fill_to_every_client(backend: Backend) {
    const CLIENTS: usize = 18;
    let Some(f) = Fleet::start(3, backend).await else {
        return;
    };
    let size = (48 << 20).min(f.store.max_object());
    let b = f.blob("stream/big", size, 901).await;
    f.proxy.pace(16 << 20);
    f.proxy.hold_first_fetch_at(b.size / 2);
    let mut clients = Clients::of(&f);
    // Replica 0 takes the lease: its client asks first.
    let holder = clients.started(0, &b).await;
    let (mut others, got) = clients.spread(&b, CLIENTS - 1, &[1, 2, 0]).await;
    others.push(holder);
    // Every first byte came while the only upstream body was held half-way.
    assert_eq!(f.proxy.blob_bodies_done(), 0);
    assert!(f.proxy.blob_bytes() <= b.size / 2);
    for r in 0..3 {
        assert!(got.contains(&r), "no first byte on replica {r}: {got:?}");
    }
    // A lazily pulling client on a replica that does not hold the lease: a range of what has
    // arrived, mid-fill.
    let (lo, hi) = (1_000_000u64, 3_000_000u64);
    assert!(hi < b.size / 2);
    let r = f.replicas[1]
        .get_blob(&b.name, &b.digest)
        .header("range", format!("bytes={lo}-{hi}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        header(r.headers(), "content-range"),
        format!("bytes {lo}-{hi}/{}", b.size)
    );
    let part = r.bytes().await.unwrap();
    let whole = BigBlob::new(901, b.size);
    let expected: Vec<u8> = (lo / BigBlob::CHUNK..=hi / BigBlob::CHUNK)
        .flat_map(|i| whole.chunk(i).to_vec())
        .skip((lo % BigBlob::CHUNK) as usize)
        .take((hi - lo + 1) as usize)
        .collect();
    assert!(
        part[..] == expected[..],
        "ranged bytes from a relaying replica"
    );
    assert_eq!(
        f.proxy.blob_bodies_done(),
        0,
        "the range waited for the fill"
    );

    f.proxy.open_gate();
    let mut wrong = Vec::new();
    for c in others {
        let s = c.await.unwrap();
        assert_eq!(
            s.bodies_done_at_first_byte,
            Some(0),
            "replica {}'s client had its first byte after the fill",
            s.replica
        );
        if s.result != b.whole() {
            wrong.push(format!("replica {}: {:?}", s.replica, s.result));
        }
    }
    assert!(
        wrong.is_empty(),
        "clients without the blob:\n{}",
        wrong.join("\n")
    );
    let gets = f.proxy.blob_gets();
    assert_eq!(gets.len(), 1, "upstream blob GETs: {gets:?}");
    // One peer stream on each replica that did not fetch, whatever its number of clients; their
    // first bytes counted as from a peer.
    let mut opened = Vec::new();
    for m in &f.replicas {
        opened.push(m.metric("ocimirror_peer_streams_opened_total", &[]).await);
    }
    opened.sort_by(f64::total_cmp);
    assert_eq!(opened, [0.0, 1.0, 1.0], "peer streams opened per replica");
    for m in &f.replicas[1..] {
        assert!(
            m.metric(
                "ocimirror_blob_first_byte_seconds_count",
                &["source=\"peer\""]
            )
            .await
                >= 1.0
        );
    }
    f.fills_settled().await;
    assert_eq!(f.stored(&b).await, b.whole().ok());
}

/// The replica fetching a blob is SIGKILLed half-way: the clients of the two others complete
/// with the right bytes, the upstream sent little more than the blob once (the rest was asked
/// with a Range), and the bucket holds one whole, verified object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_is_resumed_not_restarted() {
    let Some(mut f) = Fleet::start(3, Backend::Seaweedfs).await else {
        return;
    };
    let b = f.blob("stream/kill", 32 << 20, 902).await;
    f.proxy.pace(32 << 20);
    f.proxy.hold_first_fetch_at(b.size / 2);
    let mut clients = Clients::of(&f);
    let holder = clients.started(0, &b).await;
    let (others, _) = clients.spread(&b, 8, &[1, 2]).await;
    // Let the relays catch up with all the holder has before it dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    for m in &f.replicas[1..] {
        while m.metric("ocimirror_peer_bytes_relayed_total", &[]).await < (b.size / 2 - 1) as f64 {
            assert!(Instant::now() < deadline, "relays did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(clients);
    f.replicas[0].kill();
    let got = holder.await.unwrap();
    assert!(got.result.is_err(), "the killed replica's client finished");
    all_whole(others, &b).await;
    let gets = f.proxy.blob_gets();
    assert_eq!(gets.len(), 2, "the holder's fetch and one resume: {gets:?}");
    assert!(
        gets[1]
            .1
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=")),
        "the resume asked for the rest with a Range: {gets:?}"
    );
    let sent = f.proxy.blob_bytes();
    assert!(
        (sent as f64) < 1.1 * b.size as f64,
        "the upstream sent {sent} bytes for a blob of {}",
        b.size
    );
    let mut takeovers = 0.0;
    for m in &f.replicas[1..] {
        takeovers += m.metric("ocimirror_fill_takeovers_total", &[]).await;
    }
    assert_eq!(takeovers, 1.0);
    f.replicas.remove(0);
    f.fills_settled().await;
    assert_eq!(f.stored(&b).await, b.whole().ok());
    let op = f.store.operator(ROOT);
    let data = blob_key(&b.digest);
    let dir = data.trim_end_matches("data");
    assert_eq!(s3_keys(&op, dir).await, vec![data.clone()]);
}

/// Corrupt bytes from the upstream: no client of any replica gets a complete response, and
/// nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_upstream_bytes_complete_no_response_anywhere() {
    let Some(f) = Fleet::start(3, Backend::Seaweedfs).await else {
        return;
    };
    let b = f.blob("stream/corrupt", 8 << 20, 903).await;
    f.proxy.corrupt_at(b.size / 3);
    f.proxy.hold_first_fetch_at(b.size / 2);
    let mut clients = Clients::of(&f);
    let holder = clients.started(0, &b).await;
    let (mut others, _) = clients.spread(&b, 6, &[1, 2]).await;
    others.push(holder);
    f.proxy.open_gate();
    for c in others {
        let s = c.await.unwrap();
        assert!(
            s.result.is_err(),
            "replica {}'s client got a complete response: {:?}",
            s.replica,
            s.result
        );
    }
    f.fills_settled().await;
    assert_eq!(f.stored(&b).await, None, "corrupt bytes committed");
}

/// The peer endpoint answers only with the fleet's secret, serves only fills in progress, and
/// is not reachable through the public listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_endpoint_wants_the_secret_and_is_not_public() {
    let Some(f) = Fleet::start(1, Backend::Seaweedfs).await else {
        return;
    };
    let b = f.blob("stream/peer", 1 << 20, 904).await;
    let peer = format!("{}/fills/{}", f.peer_urls[0], b.digest);
    let c = client();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(c.get(&peer).send().await.unwrap()), 401, "no secret");
    assert_eq!(
        status(
            c.get(&peer)
                .bearer_auth("wrong-secret-0123456789")
                .send()
                .await
                .unwrap()
        ),
        401,
        "wrong secret"
    );
    assert_eq!(
        status(
            c.get(&peer)
                .bearer_auth(&SECRET[..SECRET.len() - 1])
                .send()
                .await
                .unwrap()
        ),
        401,
        "a prefix of the secret"
    );
    // The right secret, but no fill of it in progress: never served from storage.
    assert_eq!(
        status(c.get(&peer).bearer_auth(SECRET).send().await.unwrap()),
        404
    );
    let pulled = f.replicas[0]
        .get_blob(&b.name, &b.digest)
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status().as_u16(), 200);
    assert_eq!(pulled.bytes().await.unwrap().len() as u64, b.size);
    f.fills_settled().await;
    assert_eq!(
        status(c.get(&peer).bearer_auth(SECRET).send().await.unwrap()),
        404,
        "a committed blob is not served to peers"
    );
    // The public listener knows no such path, with or without the secret.
    let public = format!("{}/fills/{}", f.replicas[0].url(), b.digest);
    for req in [c.get(&public), c.get(&public).bearer_auth(SECRET)] {
        assert_eq!(status(req.send().await.unwrap()), 404);
    }
    let refused = f.replicas[0]
        .metric("ocimirror_peer_requests_refused_total", &[])
        .await;
    assert_eq!(refused, 3.0);
}

/// Redis down: the replicas cannot coordinate, so each fetches alone; pulls still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_replicas_fetch_alone() {
    let Some(mut f) = Fleet::start(3, Backend::Seaweedfs).await else {
        return;
    };
    let b = f.blob("stream/alone", 4 << 20, 905).await;
    f.redis.stop();
    let mut tasks = Vec::new();
    for m in &f.replicas {
        let url = format!("{}/v2/{}/blobs/{}", m.url(), b.name, b.digest);
        tasks.push(tokio::spawn(async move {
            let r = client().get(&url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            stream_hash(r).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok((b.size, b.digest.clone())));
    }
    let gets = f.proxy.blob_gets().len();
    assert!((1..=3).contains(&gets), "upstream blob GETs: {gets}");
    f.fills_settled().await;
    assert_eq!(f.stored(&b).await, b.whole().ok());
}

/// A relay is a join of another replica's fill (issue 20): the holder fetches under one
/// repository; on a replica relaying it, a request for the same digest under a repository the
/// upstream does not serve it in is refused after a HEAD there, one under a repository that has
/// it is served after a HEAD there, and one under the holder's own name costs no request. The
/// upstream sends the blob once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_under_another_repository_is_confirmed_there_first() {
    let Some(f) = Fleet::start(3, Backend::Seaweedfs).await else {
        return;
    };
    let b = f.blob("stream/conf", 8 << 20, 905).await;
    let shared = f.blob("stream/shared", 8 << 20, 905).await;
    assert_eq!(b.digest, shared.digest, "one blob in two repositories");
    // A repository the upstream has, without this blob.
    f.blob("stream/other", 1 << 20, 906).await;
    let blob_path = format!("/blobs/{}", b.digest);
    let heads = || f.reg.count_requests("HEAD", &blob_path);
    assert_eq!(heads().await, 0);
    f.proxy.hold_first_fetch_at(b.size / 2);
    let mut clients = Clients::of(&f);
    let holder = clients.started(0, &b).await;

    let r = f.replicas[1]
        .get_blob("stream/other", &b.digest)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "a relay served a blob under a repository the upstream does not serve it in"
    );
    assert_eq!(heads().await, 1);
    let on_shared = clients.started(1, &shared).await;
    assert_eq!(heads().await, 2);
    let on_same = clients.started(2, &b).await;
    assert_eq!(heads().await, 2, "the holder's own repository asked again");
    assert_eq!(f.proxy.blob_bodies_done(), 0, "all of it during the fill");

    f.proxy.open_gate();
    all_whole(vec![holder, on_shared, on_same], &b).await;
    assert_eq!(f.proxy.blob_gets().len(), 1, "upstream blob GETs");
}
