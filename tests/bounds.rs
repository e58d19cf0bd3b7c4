//! The attacks of docs/reliability.md's "Bounds" table, each against the real binary with the
//! bound set low: the bound holds (refusals and cut-offs counted, descriptors and disk bounded)
//! and a well-behaved client keeps pulling meanwhile.
//!
//! The upstream is an in-process fake (a real registry cannot announce 100 GB or trickle on
//! demand), kept here so that these tests own their harness.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use common::*;
use tokio::io::AsyncWriteExt;

/// How the fake answers a blob GET of a digest it holds no bytes for.
#[derive(Clone, Copy)]
enum Hostile {
    /// Zeros forever, announcing this `Content-Length` (None: chunked).
    Endless(Option<u64>),
    /// One byte every 100 ms, announcing a MiB.
    Trickle,
}

#[derive(Default)]
struct FakeState {
    manifests: Mutex<HashMap<String, (String, Bytes)>>,
    blobs: Mutex<HashMap<String, Bytes>>,
    hostile: Mutex<HashMap<String, Hostile>>,
    blob_gets: AtomicUsize,
}

struct Fake {
    st: Arc<FakeState>,
    url: String,
}

impl Fake {
    async fn start() -> Fake {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let st = Arc::new(FakeState::default());
        let s = st.clone();
        let app = Router::new().fallback(move |req: Request| {
            let st = s.clone();
            async move { serve(st, req).await }
        });
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Fake { st, url }
    }

    fn add_image(&self, name: &str, tag: &str, img: &Image) {
        let mut m = self.st.manifests.lock().unwrap();
        let v = (img.media_type.clone(), Bytes::from(img.manifest.clone()));
        m.insert(format!("{name}:{tag}"), v.clone());
        m.insert(format!("{name}:{}", img.digest), v);
        let mut b = self.st.blobs.lock().unwrap();
        for (d, bytes) in &img.blobs {
            b.insert(d.clone(), bytes.clone());
        }
    }

    fn hostile(&self, digest: &str, h: Hostile) {
        self.st.hostile.lock().unwrap().insert(digest.to_owned(), h);
    }
}

async fn serve(st: Arc<FakeState>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let head = req.method() == axum::http::Method::HEAD;
    let not_found = || Response::builder().status(404).body(Body::empty()).unwrap();
    if path == "/v2/" {
        return Response::new(Body::from("{}"));
    }
    if let Some((name, reference)) = path
        .strip_prefix("/v2/")
        .and_then(|p| p.rsplit_once("/manifests/"))
    {
        let Some((mt, body)) = st
            .manifests
            .lock()
            .unwrap()
            .get(&format!("{name}:{reference}"))
            .cloned()
        else {
            return not_found();
        };
        let b = Response::builder()
            .header("content-type", mt)
            .header("docker-content-digest", sha256_digest(&body))
            .header("content-length", body.len());
        return b
            .body(if head {
                Body::empty()
            } else {
                Body::from(body)
            })
            .unwrap();
    }
    let Some((_, digest)) = path.rsplit_once("/blobs/") else {
        return not_found();
    };
    let hostile = st.hostile.lock().unwrap().get(digest).copied();
    if let Some(h) = hostile {
        let b = Response::builder().header("content-type", "application/octet-stream");
        if head {
            return b.body(Body::empty()).unwrap();
        }
        st.blob_gets.fetch_add(1, Ordering::SeqCst);
        return match h {
            Hostile::Endless(announce) => {
                let b = match announce {
                    Some(n) => b.header("content-length", n),
                    None => b,
                };
                let zeros = Bytes::from(vec![0u8; 64 * 1024]);
                let s = futures_util::stream::repeat_with(move || {
                    Ok::<_, std::io::Error>(zeros.clone())
                });
                b.body(Body::from_stream(s)).unwrap()
            }
            Hostile::Trickle => {
                let s = futures_util::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
                });
                b.header("content-length", 1 << 20)
                    .body(Body::from_stream(s))
                    .unwrap()
            }
        };
    }
    let Some(bytes) = st.blobs.lock().unwrap().get(digest).cloned() else {
        return not_found();
    };
    if !head {
        st.blob_gets.fetch_add(1, Ordering::SeqCst);
    }
    Response::builder()
        .header("content-length", bytes.len())
        .body(if head {
            Body::empty()
        } else {
            Body::from(bytes)
        })
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A well-behaved pull of `img`: the manifest, then every blob, each verified; 503s with
/// `Retry-After` are retried as a client would.
async fn pull(m: &Mirror, name: &str, img: &Image) {
    let r = m.get_manifest(name, &img.digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "manifest");
    for d in img.all_blobs() {
        let mut tries = 0;
        loop {
            let r = m.get_blob(name, &d.digest).send().await.unwrap();
            if r.status().as_u16() == 503 && tries < 60 {
                assert!(r.headers().contains_key("retry-after"));
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            assert_eq!(r.status().as_u16(), 200, "blob {}", d.digest);
            let body = r.bytes().await.unwrap();
            assert_eq!(sha256_digest(&body), d.digest);
            break;
        }
    }
}

/// Many connections ask for a cached big blob and never read: beyond `max_blob_streams` they are
/// refused at once, the rest are closed after `send_timeout`, descriptors stay bounded, and a
/// well-behaved pull completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_bounded_and_cut_off() {
    let fake = Fake::start().await;
    let big = build_image(Kind::Oci, 21, &[8 << 20], "amd64", "linux");
    let small = build_oci_image(22);
    fake.add_image("big", "v1", &big);
    fake.add_image("small", "v1", &small);
    let m = Mirror::start(MirrorOpts::upstream(&fake.url).short_timeouts().extra(
        "server:\n  max_blob_streams: 16\n  send_timeout: 2s\n  max_concurrent_streams: 4\n",
    ))
    .await;
    pull(&m, "big", &big).await;
    let pid = m.pid().unwrap();
    let before = open_fds(pid);
    let layer = big.biggest_layer().digest;

    const ATTACKERS: usize = 48;
    let mut held = Vec::new();
    for _ in 0..ATTACKERS {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(m.hostport().parse().unwrap()).await.unwrap();
        let req = format!(
            "GET /v2/big/blobs/{layer} HTTP/1.1\r\nhost: {}\r\n\r\n",
            m.hostport()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        held.push(s);
    }
    // Every attacker is either streaming (holding a permit) or refused.
    let mut refused = 0.0;
    for _ in 0..100 {
        refused = m.metric("ocimirror_blob_streams_refused_total", &[]).await;
        let open = m.metric("ocimirror_blob_streams_open", &[]).await;
        if refused + open >= ATTACKERS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused >= (ATTACKERS - 16) as f64,
        "refused {refused} of {ATTACKERS}"
    );
    assert!(m.metric("ocimirror_blob_streams_open", &[]).await <= 16.0);
    // Each attacker holds at most its socket and one blob file.
    let during = open_fds(pid);
    assert!(
        during <= before + ATTACKERS + 16 + 8,
        "descriptors {before} -> {during}"
    );

    // A well-behaved client pulls meanwhile (waiting out 503s as told).
    pull(&m, "small", &small).await;
    // The stalled readers were cut off: their connections closed by the mirror.
    let timeouts = m.metric("ocimirror_send_timeouts_total", &[]).await;
    assert!(timeouts >= 1.0, "send timeouts {timeouts}");
    for _ in 0..100 {
        if m.metric("ocimirror_blob_streams_open", &[]).await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(m.metric("ocimirror_blob_streams_open", &[]).await, 0.0);
    let after = open_fds(pid);
    assert!(
        after <= before + ATTACKERS + 8,
        "descriptors after the cut-off {before} -> {after}"
    );
    drop(held);
}

/// Files under `dir`, recursively, with their total size.
fn disk_use(dir: &std::path::Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// An upstream announcing 100 GB, or sending without end, cannot fill the disk: the fetch stops
/// at `upstream.max_blob_size`, nothing is kept, and other pulls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_upstream_blob_stops_at_max_blob_size() {
    let fake = Fake::start().await;
    let small = build_oci_image(23);
    fake.add_image("small", "v1", &small);
    let announced = sha256_digest(b"announces 100 GB");
    let chunked = sha256_digest(b"sends without end");
    fake.hostile(&announced, Hostile::Endless(Some(100 << 30)));
    fake.hostile(&chunked, Hostile::Endless(None));
    let m = Mirror::start(
        MirrorOpts::upstream(&fake.url)
            .short_timeouts()
            .up("max_blob_size", "4MiB"),
    )
    .await;

    let r = m.get_blob("evil", &announced).send().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    let r = m.get_blob("evil", &chunked).send().await.unwrap();
    // Without a length the answer starts before the size is known; its body must fail.
    if r.status().is_success() {
        assert!(
            r.bytes().await.is_err(),
            "a body past the bound ends in an error"
        );
    }
    pull(&m, "small", &small).await;
    assert!(
        m.metric("ocimirror_upstream_bounds_total", &["max_blob_size"])
            .await
            >= 2.0
    );
    assert!(
        disk_use(&m.data_dir()) < 16 << 20,
        "data dir holds {} bytes",
        disk_use(&m.data_dir())
    );
    assert!(
        !blob_data_path(&m.storage_root(), &chunked).exists(),
        "nothing kept"
    );
}

/// An upstream trickling a blob falls behind `upstream.min_blob_rate` and is cut off, releasing
/// its fill; a second request starts a fresh fetch rather than joining a fill held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_upstream_is_cut_off_at_the_minimum_rate() {
    let fake = Fake::start().await;
    let small = build_oci_image(24);
    fake.add_image("small", "v1", &small);
    let slow = sha256_digest(b"trickles");
    fake.hostile(&slow, Hostile::Trickle);
    let m = Mirror::start(
        MirrorOpts::upstream(&fake.url)
            .short_timeouts()
            .up("min_blob_rate", "64KiB"),
    )
    .await;
    let r = m.get_blob("evil", &slow).send().await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(60), r.bytes())
        .await
        .expect("the fetch ends");
    assert!(
        body.is_err(),
        "a cut-off fill ends the response in an error"
    );
    pull(&m, "small", &small).await;
    assert!(
        m.metric("ocimirror_upstream_bounds_total", &["min_blob_rate"])
            .await
            >= 1.0
    );
    // Every fill ends: the gauge drops once each fill's task has finished (after its clients'
    // last bytes), so it is awaited, with a bound on a hang.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while m.metric("ocimirror_fills_in_flight", &[]).await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a fill is still in flight:\n{}",
            m.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A manifest listing thousands of layers (Distribution accepts ~22,700 in 4 MiB) is refused
/// with `MANIFEST_INVALID` saying why, by tag and by digest, and nothing of it is kept; a
/// well-behaved pull goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_with_absurd_fan_out_is_refused() {
    let fake = Fake::start().await;
    let small = build_oci_image(25);
    fake.add_image("small", "v1", &small);
    let layers: Vec<serde_json::Value> = (0..5000u64)
        .map(|i| {
            serde_json::json!({"mediaType": OCI_LAYER_GZIP,
                "digest": sha256_digest(&i.to_le_bytes()), "size": 1})
        })
        .collect();
    let mut wide = small.clone();
    wide.manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": small.config.json(), "layers": layers,
    }))
    .unwrap();
    wide.digest = sha256_digest(&wide.manifest);
    fake.add_image("wide", "v1", &wide);
    let m =
        Mirror::start(MirrorOpts::upstream(&fake.url).up("max_manifest_descriptors", "200")).await;

    for reference in ["v1", wide.digest.as_str()] {
        let r = m.get_manifest("wide", reference).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 502, "{reference}");
        let body = r.bytes().await.unwrap();
        assert_eq!(error_codes(&body), vec!["MANIFEST_INVALID"]);
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("5001 descriptors") && text.contains("200"),
            "{text}"
        );
    }
    assert!(!blob_data_path(&m.storage_root(), &wide.digest).exists());
    assert!(
        files_under(&m.storage_root())
            .iter()
            .all(|p| !p.display().to_string().contains("/wide/")),
        "nothing kept for the refused manifest"
    );
    assert!(
        m.metric(
            "ocimirror_upstream_bounds_total",
            &["max_manifest_descriptors"]
        )
        .await
            >= 2.0
    );
    pull(&m, "small", &small).await;
}

/// A stalled GET of `layer` from `source` (its socket's receive buffer kept small).
async fn stalled_get(m: &Mirror, source: &str, name: &str, layer: &str) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(m.hostport().parse().unwrap()).await.unwrap();
    let req = format!(
        "GET /v2/{name}/blobs/{layer} HTTP/1.1\r\nhost: {}\r\n\r\n",
        m.hostport()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// One client opening many never-read blob streams gets its share of `max_blob_streams` and
/// no more; a client from another address still streams while it holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_blob_stream() {
    let fake = Fake::start().await;
    let big = build_image(Kind::Oci, 26, &[8 << 20], "amd64", "linux");
    fake.add_image("big", "v1", &big);
    let m = Mirror::start(MirrorOpts::upstream(&fake.url).short_timeouts().extra(
        "server:\n  max_blob_streams: 8\n  max_blob_streams_per_client: 3\n  send_timeout: 60s\n",
    ))
    .await;
    pull(&m, "big", &big).await;
    let layer = big.biggest_layer().digest;
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(stalled_get(&m, "127.0.0.1", "big", &layer).await);
    }
    let mut refused = 0.0;
    for _ in 0..100 {
        refused = m
            .metric("ocimirror_blob_streams_client_refused_total", &[])
            .await;
        if refused >= 9.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused, 9.0, "12 asked, 3 may stream");
    assert_eq!(m.metric("ocimirror_blob_streams_open", &[]).await, 3.0);
    // Another client (another loopback address) streams the same blob meanwhile.
    let other = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = other
            .get(format!("{}/v2/big/blobs/{layer}", m.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(sha256_digest(&r.bytes().await.unwrap()), layer);
    }
    assert_eq!(
        m.metric("ocimirror_blob_streams_refused_total", &[]).await,
        0.0
    );
    drop(held);
}

/// Peak resident memory of `pid` in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// The mirror's memory does not grow with blob size: after a small blob has been fetched and
/// served, a blob 16 times larger (fetched through a fill, then served from storage, to two
/// clients at once each time) raises the process's peak RSS by far less than its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_in_blob_size() {
    const SMALL: usize = 3 << 20;
    const LARGE: usize = 48 << 20;
    let fake = Fake::start().await;
    let small = build_image(Kind::Oci, 27, &[SMALL], "amd64", "linux");
    let large = build_image(Kind::Oci, 28, &[LARGE], "amd64", "linux");
    fake.add_image("small", "v1", &small);
    fake.add_image("large", "v1", &large);
    let m = Mirror::start(MirrorOpts::upstream(&fake.url)).await;
    let pid = m.pid().unwrap();
    let twice = |name: &'static str, img: &Image| {
        let d = img.biggest_layer().digest;
        let m = &m;
        async move {
            let get = || async {
                let r = m.get_blob(name, &d).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let (n, got) = stream_hash(r).await.unwrap();
                assert_eq!(got, d);
                n
            };
            // Cold (both join one fill), then warm (both from storage).
            let (a, b) = tokio::join!(get(), get());
            let (c, e) = tokio::join!(get(), get());
            a + b + c + e
        }
    };
    pull(&m, "small", &small).await;
    twice("small", &small).await;
    let after_small = peak_rss_kib(pid);
    let served = twice("large", &large).await;
    assert_eq!(served, 4 * large.biggest_layer().size);
    let after_large = peak_rss_kib(pid);
    let growth = after_large.saturating_sub(after_small) * 1024;
    eprintln!(
        "peak RSS: {after_small} KiB after the small blob, {after_large} KiB after the large"
    );
    assert!(
        growth < (LARGE / 4) as u64,
        "peak RSS grew by {growth} bytes for a {LARGE}-byte blob ({after_small} -> {after_large} KiB)"
    );
}

/// A layer whose manifest declares 1 MiB is held to that size: an upstream announcing 100 GB
/// for it is refused before any byte, one sending more without a length is cut off at the
/// declared size. The client gets an error, nothing is stored, the disk does not grow, and
/// other pulls go on. (`max_blob_size` is set far above 100 GB: the manifest's size binds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_is_held_to_the_size_its_manifest_declares() {
    let fake = FakeUpstream::start().await;
    let small = build_oci_image(31);
    fake.add_image("small", "v1", &small);
    let real = Bytes::from(pseudo_random_bytes(32, 3 << 20));
    let layer = fake.add_blob(real.clone());
    let mut lying = small.clone();
    lying.manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": small.config.json(),
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer, "size": 1 << 20}],
    }))
    .unwrap();
    lying.digest = sha256_digest(&lying.manifest);
    fake.add_image("evil/app", "v1", &lying);
    fake.on(Route::Blob)
        .get()
        .path_contains(hex_of(&layer))
        .length(Length::Long((100usize << 30) - real.len()));
    let m = Mirror::start(
        MirrorOpts::upstream(&fake.url())
            .short_timeouts()
            .up("max_blob_size", "1TiB"),
    )
    .await;
    pull(&m, "small", &small).await;
    let before = disk_use(&m.data_dir());
    let r = m.get_manifest("evil/app", "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let r = m.get_blob("evil/app", &layer).send().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    let body = String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned();
    assert!(body.contains("declares 1048576 bytes"), "{body}");
    assert_eq!(
        m.metric("ocimirror_upstream_bounds_total", &["declared_size"])
            .await,
        1.0
    );

    // Without a length, the body is cut off where the declared size ends.
    fake.clear();
    fake.on(Route::Blob)
        .get()
        .path_contains(hex_of(&layer))
        .length(Length::Chunked);
    let r = m.get_blob("evil/app", &layer).send().await.unwrap();
    if r.status().is_success() {
        assert!(
            r.bytes().await.is_err(),
            "a body past the size ends in an error"
        );
    } else {
        assert!(r.status().is_server_error(), "{}", r.status());
    }
    assert_eq!(
        m.metric("ocimirror_upstream_bounds_total", &["declared_size"])
            .await,
        2.0
    );
    assert_eq!(
        fake.count("GET", hex_of(&layer)),
        2,
        "each time the upstream was asked"
    );
    pull(&m, "small", &small).await;
    assert!(
        !blob_data_path(&m.storage_root(), &layer).exists(),
        "nothing kept"
    );
    let after = disk_use(&m.data_dir());
    assert!(
        after < before + (1 << 20),
        "the data dir grew from {before} to {after} bytes"
    );
    // Under a repository none of whose manifests declares it, only max_blob_size binds.
    fake.clear();
    let r = m.get_blob("other/app", &layer).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), real);
}

/// Waits (up to 30 s) until `metric` (with `labels`) reaches `at_least`.
async fn await_metric(m: &Mirror, metric: &str, labels: &[&str], at_least: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = m.metric(metric, labels).await;
        if v >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{metric}{labels:?} stayed at {v}, below {at_least}:\n{}",
            m.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two ranged requests for big uncached blobs (a few bytes of one, the last byte of the other),
/// dropped, with `max_concurrent_requests: 2`: each started a whole-blob fill holding an upstream
/// slot. Nobody reads them any more, so both are abandoned and give their slots back; an
/// uncached tag then pulls, and nothing of the abandoned blobs is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_ranged_fills_free_their_upstream_slots() {
    let fake = FakeUpstream::start().await;
    let small = build_oci_image(33);
    fake.add_image("small", "v1", &small);
    let a = fake.add_blob(pseudo_random_bytes(34, 4 << 20).into());
    let b = fake.add_blob(pseudo_random_bytes(35, 4 << 20).into());
    for d in [&a, &b] {
        fake.on(Route::Blob)
            .get()
            .path_contains(hex_of(d))
            .hold_after(64 << 10);
    }
    let m = Mirror::start(
        MirrorOpts::upstream(&fake.url())
            .up("max_concurrent_requests", "2")
            .up("manifest_slots", "0")
            .up("abandon_fills_after", "1s"),
    )
    .await;
    let r = m
        .get_blob("big", &a)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.unwrap().len(), 10);
    let r = m
        .get_blob("big", &b)
        .header("range", "bytes=-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    drop(r);
    assert_eq!(fake.max_in_flight(Route::Blob), 2, "both slots were taken");

    await_metric(&m, "ocimirror_fills_abandoned_total", &[], 2.0).await;
    // Bounded: without the slots given back, the blob fetches below would queue forever.
    tokio::time::timeout(Duration::from_secs(60), pull(&m, "small", &small))
        .await
        .expect("an uncached tag pulls once the abandoned fills gave their slots back");
    assert_eq!(m.metric("ocimirror_fills_abandoned_total", &[]).await, 2.0);
    assert_eq!(fake.count("GET", hex_of(&a)), 1);
    assert_eq!(fake.count("GET", hex_of(&b)), 1);
    for d in [&a, &b] {
        assert!(
            !blob_data_path(&m.storage_root(), d).exists(),
            "nothing kept"
        );
    }
}

/// Blob downloads hold every slot they may (`max_concurrent_requests` less `manifest_slots`)
/// and more wait for one: manifest and tag list requests still get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_requests_keep_slots_blob_downloads_cannot_take() {
    let fake = FakeUpstream::start().await;
    let small = build_oci_image(36);
    fake.add_image("small", "v1", &small);
    let big: Vec<String> = (0..4)
        .map(|i| fake.add_blob(pseudo_random_bytes(37 + i, 1 << 20).into()))
        .collect();
    fake.on(Route::Blob).get().hold_after(64 << 10);
    let m = Mirror::start(
        MirrorOpts::upstream(&fake.url())
            .up("max_concurrent_requests", "4")
            .up("manifest_slots", "2"),
    )
    .await;
    let downloads: Vec<_> = big
        .iter()
        .map(|d| {
            let req = m.get_blob("big", d).send();
            let d = d.clone();
            tokio::spawn(async move {
                let r = req.await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                assert_eq!(sha256_digest(&r.bytes().await.unwrap()), d);
            })
        })
        .collect();
    await_metric(&m, "ocimirror_upstream_queued_total", &["blob"], 2.0).await;
    fake.wait_for("two downloads", |f| f.count_route(Route::Blob, "GET") >= 2)
        .await;

    let r = m.get_manifest("small", "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "a manifest gets a kept slot");
    let r = m.get("/v2/small/tags/list").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "so does a tag list");
    assert_eq!(
        fake.count_route(Route::Blob, "GET"),
        2,
        "two downloads wait"
    );

    fake.release();
    for d in downloads {
        d.await.unwrap();
    }
    assert_eq!(fake.max_in_flight(Route::Blob), 2);
}

/// Identical upstream reads in flight at once share one upstream request: eight clients asking
/// for the same tag list, and seven blob checks of one repository needing the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_upstream_reads_in_flight_are_shared() {
    let fake = FakeUpstream::start().await;
    let img = build_image(Kind::Oci, 40, &[1000; 6], "amd64", "linux");
    fake.add_image("team/app", "v1", &img);
    fake.on(Route::Tags).hold_after(0);
    let m = Mirror::start(MirrorOpts::upstream(&fake.url())).await;
    let lists: Vec<_> = (0..8)
        .map(|_| {
            let req = m.get("/v2/team/app/tags/list").send();
            tokio::spawn(async move {
                let r = req.await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                r.text().await.unwrap()
            })
        })
        .collect();
    await_metric(&m, "ocimirror_upstream_shared_total", &["tags"], 7.0).await;
    fake.release();
    for l in lists {
        assert!(l.await.unwrap().contains("v1"));
    }
    assert_eq!(fake.count_route(Route::Tags, "GET"), 1);

    let fake = FakeUpstream::start_with(FakeOpts {
        auth: Auth::public(&["team/app"]),
        ..FakeOpts::default()
    })
    .await;
    fake.add_image("team/app", "v1", &img);
    fake.on(Route::Token).hold_after(0);
    let m = Mirror::start(MirrorOpts::upstream(&fake.url())).await;
    let blobs = img.all_blobs();
    let heads: Vec<_> = blobs
        .iter()
        .map(|d| {
            let req = m.head(&format!("/v2/team/app/blobs/{}", d.digest)).send();
            tokio::spawn(async move { req.await.unwrap().status().as_u16() })
        })
        .collect();
    // The first check asks for a token (held); the others, challenged too or knowing the
    // scheme by now, need the same one meanwhile.
    fake.wait_for("a token request", |f| f.count_route(Route::Token, "") >= 1)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fake.release();
    for h in heads {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(
        fake.count_route(Route::Token, ""),
        1,
        "one token request for the one scope"
    );
    // Those that asked while it was held took its token (any later found it cached).
    assert!(
        m.metric("ocimirror_upstream_shared_total", &["token"])
            .await
            >= 1.0
    );
}

const SBOM: &str = "application/vnd.example.sbom.v1";

/// Concurrent identical referrers requests, with and without `?artifactType=`, against a real
/// Distribution (2.x, without the referrers API: a fetch is one API request answered 404, then
/// the `sha256-<hex>` tag-schema index) cost one upstream fetch. The upstream is paused until every
/// request is waiting on the mirror, so none of them can have been answered from a finished
/// fetch instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_referrers_requests_cost_one_upstream_fetch() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let img = p.push_oci_image("team/app", "v1", 4101).await;
    // An SBOM for the image, listed in the tag-schema index an OCI client pushes for it.
    let config = bytes::Bytes::from_static(b"{}");
    p.push_blob("team/app", config.clone()).await;
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    p.push_blob("team/app", payload.clone()).await;
    let sbom = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(&config), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256_digest(&payload), "size": 64}],
        "subject": {"mediaType": img.media_type, "digest": img.digest, "size": img.manifest.len()},
    }))
    .unwrap();
    let sbom_digest = sha256_digest(&sbom);
    p.push_manifest("team/app", &sbom_digest, OCI_MANIFEST, &sbom)
        .await;
    let tag = format!("sha256-{}", hex_of(&img.digest));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sbom_digest, "size": sbom.len(), "artifactType": SBOM}],
    }))
    .unwrap();
    p.push_manifest(
        "team/app",
        &tag,
        "application/vnd.oci.image.index.v1+json",
        &index,
    )
    .await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).tag_ttl("1h")).await;

    const N: usize = 12;
    reg.pause();
    let path = format!("/v2/team/app/referrers/{}", img.digest);
    let asks: Vec<_> = (0..N)
        .map(|i| {
            let (url, filtered) = match i % 3 {
                0 => (path.clone(), false),
                1 => (format!("{path}?artifactType={SBOM}"), true),
                _ => (
                    format!("{path}?artifactType=application/vnd.example.other"),
                    true,
                ),
            };
            let req = m.get(&url).send();
            tokio::spawn(async move {
                let r = req.await.unwrap();
                assert_eq!(r.status().as_u16(), 200, "{url}");
                let v: serde_json::Value =
                    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                (i, filtered, v["manifests"].as_array().unwrap().len())
            })
        })
        .collect();
    // Every request but the first joined the first one's fetch, which waits on the upstream.
    await_metric(
        &m,
        "ocimirror_upstream_shared_total",
        &["referrers"],
        (N - 1) as f64,
    )
    .await;
    reg.resume();
    for a in asks {
        let (i, filtered, n) = a.await.unwrap();
        let want = match (i % 3, filtered) {
            (2, _) => 0,
            _ => 1,
        };
        assert_eq!(n, want, "request {i}");
    }
    // Each fetch asks the referrers API (a route Distribution 2.x does not know, answered 404
    // without a log line) and then reads the tag-schema index: one read is one fetch.
    assert_eq!(
        reg.count_requests("GET", &format!("/manifests/{tag}"))
            .await,
        1,
        "one read of the tag-schema index"
    );
}

/// An HTTP/2 client (cleartext, prior knowledge) asks on one connection for two uncached big
/// blobs from a slow upstream, two streams each, reads a little and resets every stream. With
/// nobody reading, each fill is abandoned after `upstream.abandon_fills_after`: its upstream
/// fetch stops, nothing of it is kept, and the next request fetches the blob afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_reset_abandon_their_fills() {
    let fake = FakeUpstream::start().await;
    let blobs: Vec<(String, Bytes)> = (0..2)
        .map(|i| {
            let b = Bytes::from(pseudo_random_bytes(4201 + i, 4 << 20));
            (fake.add_blob(b.clone()), b)
        })
        .collect();
    // 128 KiB/s: half a minute per blob unless the fill is abandoned.
    fake.on(Route::Blob).get().throttle(128 << 10);
    let m = Mirror::start(MirrorOpts::upstream(&fake.url()).up("abandon_fills_after", "1s")).await;
    let before = disk_use(&m.data_dir());
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut streams = Vec::new();
    for (d, _) in &blobs {
        for _ in 0..2 {
            let mut r = h2
                .get(format!("{}/v2/big/blobs/{d}", m.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            assert_eq!(r.status().as_u16(), 200);
            assert!(!r.chunk().await.unwrap().unwrap().is_empty());
            streams.push(r);
        }
    }
    for (d, _) in &blobs {
        assert_eq!(
            fake.count("GET", hex_of(d)),
            1,
            "the two streams share a fill"
        );
    }
    assert_eq!(m.metric("ocimirror_fills_abandoned_total", &[]).await, 0.0);
    // Dropping a response whose body is unfinished resets its stream (RST_STREAM).
    drop(streams);

    await_metric(&m, "ocimirror_fills_abandoned_total", &[], 2.0).await;
    for (d, _) in &blobs {
        assert!(
            !blob_data_path(&m.storage_root(), d).exists(),
            "nothing of an abandoned fill is stored"
        );
        assert_eq!(fake.count("GET", hex_of(d)), 1);
    }
    // Its temp and spool files go with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while disk_use(&m.data_dir()) > before + (64 << 10) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = disk_use(&m.data_dir());
    assert!(
        after <= before + (64 << 10),
        "the data dir holds {after} bytes after the abandoned fills (from {before}):\n{:?}",
        files_under(&m.data_dir())
    );
    // A new request starts a fresh fetch and gets the whole blob.
    fake.clear();
    let (d, b) = &blobs[0];
    let r = h2
        .get(format!("{}/v2/big/blobs/{d}", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(&r.bytes().await.unwrap(), b);
    assert_eq!(fake.count("GET", hex_of(d)), 2);
    assert_eq!(m.metric("ocimirror_fills_abandoned_total", &[]).await, 2.0);
}
