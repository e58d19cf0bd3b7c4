//! A fleet streams like one mirror: three replicas of ocimirror (real processes) on one
//! SeaweedFS bucket and one Redis, with `cluster` sections, in front of a real Distribution
//! registry behind a throttling proxy. The proxy is the one in-process part: it paces blob
//! bodies, holds the first fetch of a blob half-way until the test lets it go (so "while the
//! fill is still running" is an ordering the test sets, not a time it measures), can corrupt a
//! byte or ignore `Range`, and counts every blob request and byte it passes on.

mod common;

use std::net::SocketAddr;
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
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let state = Arc::new(ProxyState {
            target: target.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            shaping: Shaping::default(),
            gate: tokio::sync::Semaphore::new(0),
            blob_gets: Mutex::new(Vec::new()),
            blob_bytes: AtomicU64::new(0),
            blob_bodies_done: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Proxy { state, addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn open_gate(&self) {
        self.state.gate.add_permits(1);
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
    let path_q = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let is_blob_get = req.method() == "GET" && req.uri().path().contains("/blobs/sha256:");
    let mut out = p
        .http
        .request(req.method().clone(), format!("{}{path_q}", p.target));
    let mut range = None;
    for (k, v) in req.headers() {
        if k == "host" {
            continue;
        }
        if k == "range" {
            range = v.to_str().ok().map(str::to_owned);
            if p.shaping.ignore_ranges.load(Ordering::SeqCst) {
                continue;
            }
        }
        out = out.header(k, v);
    }
    let first = if is_blob_get {
        let mut gets = p.blob_gets.lock().unwrap();
        gets.push((req.uri().path().to_owned(), range));
        gets.len() == 1
    } else {
        false
    };
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(e.to_string()))
                .unwrap();
        }
    };
    let mut b = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "connection" {
            b = b.header(k, v);
        }
    }
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
    weed: Weed,
    redis: RedisServer,
    _secret: TempDir,
}

/// The fleet's blob: its name, digest and size.
struct Blob {
    name: String,
    digest: String,
    size: u64,
}

impl Fleet {
    /// Three replicas with `cluster` sections on one bucket and one Redis; `None` (skip) when a
    /// real part is missing.
    async fn start(n: usize) -> Option<Fleet> {
        let redis = RedisServer::start().await?;
        let weed = Weed::start().await?;
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
                .storage_yaml(&weed.storage_yaml(ROOT))
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
            weed,
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

    /// The blob's object in the bucket, hashed: (size, digest), or `None` when absent.
    async fn stored(&self, b: &Blob) -> Option<(u64, String)> {
        let op = s3_operator(&self.weed.endpoint, ROOT);
        let hex = hex_of(&b.digest);
        let key = format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
        let data = op.read(&key).await.ok()?.to_vec();
        Some((data.len() as u64, sha256_digest(&data)))
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

/// A client of `m` (replica `replica`) GETting the blob, reporting its first byte on `first`.
fn client_task(
    m: &Mirror,
    replica: usize,
    b: &Blob,
    proxy: &Arc<ProxyState>,
    first: tokio::sync::mpsc::UnboundedSender<usize>,
) -> tokio::task::JoinHandle<Seen> {
    let url = format!("{}/v2/{}/blobs/{}", m.url(), b.name, b.digest);
    let proxy = proxy.clone();
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

/// Wait for `n` first-byte reports; panics with the count after 60 s.
async fn firsts(rx: &mut tokio::sync::mpsc::UnboundedReceiver<usize>, n: usize) -> Vec<usize> {
    let mut v = Vec::new();
    while v.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(r)) => v.push(r),
            _ => panic!("only {} of {n} clients had a first byte: {v:?}", v.len()),
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------

/// 18 clients spread over 3 replicas ask for one uncached blob: the upstream sends it once;
/// every client of every replica has its first byte while the one fetch is still held half-way;
/// a ranged GET on a replica that does not hold the lease is answered mid-fill; every client
/// gets every byte right, and the bucket holds the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_stream_one_fill_to_every_client() {
    const CLIENTS: usize = 18;
    let Some(f) = Fleet::start(3).await else {
        return;
    };
    let b = f.blob("stream/big", 48 << 20, 901).await;
    f.proxy.state.shaping.rate.store(16 << 20, Ordering::SeqCst);
    f.proxy
        .state
        .shaping
        .pause_at
        .store(b.size / 2, Ordering::SeqCst);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Replica 0 takes the lease: its client asks first.
    let mut clients = vec![client_task(
        &f.replicas[0],
        0,
        &b,
        &f.proxy.state,
        tx.clone(),
    )];
    firsts(&mut rx, 1).await;
    for k in 1..CLIENTS {
        let r = k % 3;
        clients.push(client_task(
            &f.replicas[r],
            r,
            &b,
            &f.proxy.state,
            tx.clone(),
        ));
    }
    let got = firsts(&mut rx, CLIENTS - 1).await;
    // Every first byte came while the only upstream body was held half-way.
    assert_eq!(f.proxy.blob_bodies_done(), 0);
    assert!(f.proxy.blob_bytes() <= b.size / 2);
    for r in 0..3 {
        assert!(got.contains(&r), "no first byte on replica {r}: {got:?}");
    }
    // A lazily pulling client on a replica that does not hold the lease: a range of what has
    // arrived, mid-fill.
    let (lo, hi) = (1_000_000u64, 3_000_000u64);
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
    for c in clients {
        let s = c.await.unwrap();
        assert_eq!(
            s.bodies_done_at_first_byte,
            Some(0),
            "replica {}'s client had its first byte after the fill",
            s.replica
        );
        if s.result != Ok((b.size, b.digest.clone())) {
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
    assert_eq!(f.stored(&b).await, Some((b.size, b.digest.clone())));
}

/// The replica fetching a blob is SIGKILLed half-way: the clients of the two others complete
/// with the right bytes, the upstream sent little more than the blob once (the rest was asked
/// with a Range), and the bucket holds one whole, verified object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_is_resumed_not_restarted() {
    let Some(mut f) = Fleet::start(3).await else {
        return;
    };
    let b = f.blob("stream/kill", 32 << 20, 902).await;
    f.proxy.state.shaping.rate.store(32 << 20, Ordering::SeqCst);
    f.proxy
        .state
        .shaping
        .pause_at
        .store(b.size / 2, Ordering::SeqCst);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let holder = client_task(&f.replicas[0], 0, &b, &f.proxy.state, tx.clone());
    firsts(&mut rx, 1).await;
    let mut clients = Vec::new();
    for k in 0..8 {
        let r = 1 + k % 2;
        clients.push(client_task(
            &f.replicas[r],
            r,
            &b,
            &f.proxy.state,
            tx.clone(),
        ));
    }
    firsts(&mut rx, 8).await;
    // Let the relays catch up with all the holder has before it dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    for m in &f.replicas[1..] {
        while m.metric("ocimirror_peer_bytes_relayed_total", &[]).await < (b.size / 2 - 1) as f64 {
            assert!(Instant::now() < deadline, "relays did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    f.replicas[0].kill();
    let got = holder.await.unwrap();
    assert!(got.result.is_err(), "the killed replica's client finished");
    for c in clients {
        let s = c.await.unwrap();
        assert_eq!(
            s.result,
            Ok((b.size, b.digest.clone())),
            "replica {}'s client",
            s.replica
        );
    }
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
    assert_eq!(f.stored(&b).await, Some((b.size, b.digest.clone())));
    let op = s3_operator(&f.weed.endpoint, ROOT);
    let hex = hex_of(&b.digest);
    let dir = format!("docker/registry/v2/blobs/sha256/{}/{hex}/", &hex[..2]);
    assert_eq!(s3_keys(&op, &dir).await, vec![format!("{dir}data")]);
}

/// Corrupt bytes from the upstream: no client of any replica gets a complete response, and
/// nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_upstream_bytes_complete_no_response_anywhere() {
    let Some(f) = Fleet::start(3).await else {
        return;
    };
    let b = f.blob("stream/corrupt", 8 << 20, 903).await;
    f.proxy
        .state
        .shaping
        .corrupt_at
        .store(b.size / 3, Ordering::SeqCst);
    f.proxy
        .state
        .shaping
        .pause_at
        .store(b.size / 2, Ordering::SeqCst);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = vec![client_task(
        &f.replicas[0],
        0,
        &b,
        &f.proxy.state,
        tx.clone(),
    )];
    firsts(&mut rx, 1).await;
    for k in 0..6 {
        let r = 1 + k % 2;
        clients.push(client_task(
            &f.replicas[r],
            r,
            &b,
            &f.proxy.state,
            tx.clone(),
        ));
    }
    firsts(&mut rx, 6).await;
    f.proxy.open_gate();
    for c in clients {
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
    let Some(f) = Fleet::start(1).await else {
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
    let Some(mut f) = Fleet::start(3).await else {
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
    assert_eq!(f.stored(&b).await, Some((b.size, b.digest.clone())));
}

/// A relay is a join of another replica's fill (issue 20): the holder fetches under one
/// repository; on a replica relaying it, a request for the same digest under a repository the
/// upstream does not serve it in is refused after a HEAD there, one under a repository that has
/// it is served after a HEAD there, and one under the holder's own name costs no request. The
/// upstream sends the blob once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_under_another_repository_is_confirmed_there_first() {
    let Some(f) = Fleet::start(3).await else {
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
    f.proxy
        .state
        .shaping
        .pause_at
        .store(b.size / 2, Ordering::SeqCst);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let holder = client_task(&f.replicas[0], 0, &b, &f.proxy.state, tx.clone());
    firsts(&mut rx, 1).await;

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
    let on_shared = client_task(&f.replicas[1], 1, &shared, &f.proxy.state, tx.clone());
    firsts(&mut rx, 1).await;
    assert_eq!(heads().await, 2);
    let on_same = client_task(&f.replicas[2], 2, &b, &f.proxy.state, tx.clone());
    firsts(&mut rx, 1).await;
    assert_eq!(heads().await, 2, "the holder's own repository asked again");
    assert_eq!(f.proxy.blob_bodies_done(), 0, "all of it during the fill");

    f.proxy.open_gate();
    for c in [holder, on_shared, on_same] {
        let s = c.await.unwrap();
        assert_eq!(
            s.result,
            Ok((b.size, b.digest.clone())),
            "replica {}'s client",
            s.replica
        );
    }
    assert_eq!(f.proxy.blob_gets().len(), 1, "upstream blob GETs");
}
