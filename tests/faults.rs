//! ocimirror against an in-process fake upstream that misbehaves on demand: rate limits, 5xx,
//! hangs, connections dropped or stalled mid-blob, wrong bytes, bearer-token auth, blob redirects,
//! slow blobs (to observe coalescing and disconnects).
//!
//! The mirror is the real binary; the fake is an axum server inside the test process.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// 429 with `Retry-After: 7` for every repository request.
    TooMany,
    Status500,
    Status503,
    /// Never answer repository requests.
    Hang,
    /// Blob GETs: send half the body (Content-Length says all), then close the connection.
    DropMidBlob,
    /// Blob GETs: send half the body, then send nothing more (connection kept open).
    StallMidBlob,
    /// Blob GETs: right length, wrong bytes.
    WrongBytes,
    /// Blob GETs: `Content-Length` 100 bytes short, and only that many bytes (a clean response).
    ShortLength,
    /// Blob GETs: `Content-Length` 100 bytes over the blob, which is sent whole (the connection
    /// closes before the announced end).
    LongLength,
    /// Blob GETs: no `Content-Length` (chunked) and only half the blob, ended cleanly.
    TruncatedChunked,
    /// Blob GETs: no `Content-Length` (chunked), the whole blob: nothing wrong.
    NoLength,
    /// Blob GETs: a redirect to the same URL, forever.
    RedirectLoop,
    /// The token endpoint answers 503.
    TokenDown,
    /// The token endpoint never answers.
    TokenHang,
}

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    auth: Option<String>,
}

struct FakeState {
    port: u16,
    cdn_port: u16,
    manifests: Mutex<HashMap<(String, String), (String, Bytes)>>,
    blobs: Mutex<HashMap<String, Bytes>>,
    fault: Mutex<Fault>,
    /// Bearer-token mode: Basic credentials the token endpoint accepts.
    creds: Option<(String, String)>,
    token: String,
    redirect_blobs: AtomicBool,
    /// Blob bodies in chunks of this size with this pause after each.
    slow: Mutex<Option<(usize, Duration)>>,
    seen: Mutex<Vec<Seen>>,
    seen_cdn: Mutex<Vec<Seen>>,
    token_requests: AtomicUsize,
    /// Blob bodies fully handed to the server.
    blob_bodies_done: AtomicUsize,
}

struct Fake {
    st: Arc<FakeState>,
}

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn oci_err(status: u16, code: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("docker-distribution-api-version", "registry/2.0")
        .body(Body::from(
            json!({"errors": [{"code": code, "message": code.to_lowercase(), "detail": null}]})
                .to_string(),
        ))
        .unwrap()
}

impl Fake {
    async fn start(creds: Option<(&str, &str)>) -> Fake {
        Fake::start_on(creds, 0).await
    }

    /// The fake registry on `port` (0: any free port).
    async fn start_on(creds: Option<(&str, &str)>, port: u16) -> Fake {
        let l1 = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let st = Arc::new(FakeState {
            port: l1.local_addr().unwrap().port(),
            cdn_port: l2.local_addr().unwrap().port(),
            manifests: Mutex::default(),
            blobs: Mutex::default(),
            fault: Mutex::new(Fault::None),
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
            token: "tok-0123456789abcdef".to_string(),
            redirect_blobs: AtomicBool::new(false),
            slow: Mutex::new(None),
            seen: Mutex::default(),
            seen_cdn: Mutex::default(),
            token_requests: AtomicUsize::new(0),
            blob_bodies_done: AtomicUsize::new(0),
        });
        let s1 = st.clone();
        let app = Router::new().fallback(move |req: Request| {
            let st = s1.clone();
            async move { registry(st, req).await }
        });
        let s2 = st.clone();
        let cdn = Router::new().fallback(move |req: Request| {
            let st = s2.clone();
            async move { cdn(st, req).await }
        });
        tokio::spawn(async move { axum::serve(l1, app).await.unwrap() });
        tokio::spawn(async move { axum::serve(l2, cdn).await.unwrap() });
        Fake { st }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.st.port)
    }

    /// Serve `bytes` as `name:reference`; a tag is also served by the bytes' digest, as a real
    /// registry would (a mirror may resolve a tag with HEAD, then GET by digest).
    fn add_manifest(&self, name: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let mut m = self.st.manifests.lock().unwrap();
        let v = (media_type.to_string(), Bytes::copy_from_slice(bytes));
        if !reference.starts_with("sha256:") {
            m.insert((name.to_string(), sha256_digest(bytes)), v.clone());
        }
        m.insert((name.to_string(), reference.to_string()), v);
    }

    /// Serve `img` as `name:tag` (and by digest).
    fn add_image(&self, name: &str, tag: &str, img: &Image) -> Image {
        self.add_manifest(name, tag, &img.media_type, &img.manifest);
        self.add_manifest(name, &img.digest, &img.media_type, &img.manifest);
        let mut blobs = self.st.blobs.lock().unwrap();
        for (d, b) in &img.blobs {
            blobs.insert(d.clone(), b.clone());
        }
        let mut img = img.clone();
        img.name = name.to_string();
        img.tag = tag.to_string();
        img
    }

    fn set_fault(&self, f: Fault) {
        *self.st.fault.lock().unwrap() = f;
    }

    fn set_slow(&self, chunk: usize, pause: Duration) {
        *self.st.slow.lock().unwrap() = Some((chunk, pause));
    }

    fn redirect_blobs(&self, on: bool) {
        self.st.redirect_blobs.store(on, Ordering::SeqCst);
    }

    fn seen(&self) -> Vec<Seen> {
        self.st.seen.lock().unwrap().clone()
    }

    /// Requests the fake registry received with `method` (empty = any) and path containing `sub`.
    fn count(&self, method: &str, sub: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| (method.is_empty() || s.method == method) && s.path.contains(sub))
            .count()
    }

    fn tokens(&self) -> usize {
        self.st.token_requests.load(Ordering::SeqCst)
    }
}

fn challenge(st: &FakeState, path: &str) -> Response {
    let mut v = format!(
        "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"fake\"",
        st.port
    );
    let rest = path.trim_start_matches("/v2/");
    let name = ["/manifests/", "/blobs/", "/tags/list"]
        .iter()
        .find_map(|m| rest.rfind(m).map(|i| &rest[..i]));
    if let Some(name) = name {
        v += &format!(",scope=\"repository:{name}:pull\"");
    }
    let mut r = oci_err(401, "UNAUTHORIZED");
    r.headers_mut()
        .insert("www-authenticate", v.parse().unwrap());
    r
}

async fn token(st: Arc<FakeState>, req: Request) -> Response {
    st.token_requests.fetch_add(1, Ordering::SeqCst);
    let (u, p) = st.creds.clone().expect("token endpoint in bearer mode");
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let method = req.method().clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let basic_ok =
        auth.as_deref() == Some(&format!("Basic {}", b64(format!("{u}:{p}").as_bytes())));
    let form_ok = method == "POST" && {
        let f: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        f.get("username") == Some(&u) && f.get("password") == Some(&p)
    };
    if !(basic_ok || form_ok) {
        return oci_err(401, "UNAUTHORIZED");
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"token": st.token, "access_token": st.token, "expires_in": 300}).to_string(),
        ))
        .unwrap()
}

/// A blob body: paced by the receiver, optionally slow, optionally broken half-way.
fn blob_body(st: Arc<FakeState>, data: Bytes, fault: Fault) -> Body {
    let (chunk, pause) = st
        .slow
        .lock()
        .unwrap()
        .unwrap_or((64 << 10, Duration::ZERO));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        let broken = matches!(
            fault,
            Fault::DropMidBlob | Fault::StallMidBlob | Fault::TruncatedChunked
        );
        let limit = if broken { data.len() / 2 } else { data.len() };
        let mut off = 0;
        while off < limit {
            let end = (off + chunk).min(limit);
            if tx.send(Ok(data.slice(off..end))).await.is_err() {
                return;
            }
            off = end;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        match fault {
            Fault::DropMidBlob => {
                let _ = tx
                    .send(Err(std::io::Error::other("fake: connection dropped")))
                    .await;
            }
            Fault::StallMidBlob => tx.closed().await,
            _ => {
                st.blob_bodies_done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Body::from_stream(stream)
}

fn blob_response(st: Arc<FakeState>, digest: &str, head: bool, fault: Fault) -> Response {
    let Some(data) = st.blobs.lock().unwrap().get(digest).cloned() else {
        return oci_err(404, "BLOB_UNKNOWN");
    };
    let b = Response::builder()
        .status(200)
        .header("content-type", "application/octet-stream")
        .header("content-length", data.len())
        .header("docker-content-digest", digest)
        .header("docker-distribution-api-version", "registry/2.0");
    if head {
        return b.body(Body::empty()).unwrap();
    }
    let data = if fault == Fault::WrongBytes {
        Bytes::from(data.iter().map(|x| x ^ 0x5a).collect::<Vec<u8>>())
    } else {
        data
    };
    let mut r = b.body(blob_body(st, data.clone(), fault)).unwrap();
    let h = r.headers_mut();
    match fault {
        Fault::ShortLength => {
            let short = data.len() - 100;
            h.insert("content-length", short.into());
            *r.body_mut() = Body::from(data.slice(..short));
        }
        Fault::LongLength => {
            h.insert("content-length", (data.len() + 100).into());
        }
        Fault::TruncatedChunked | Fault::NoLength => {
            h.remove("content-length");
        }
        _ => {}
    }
    r
}

async fn registry(st: Arc<FakeState>, req: Request) -> Response {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    st.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        auth: auth.clone(),
    });
    if path == "/token" {
        let fault = *st.fault.lock().unwrap();
        match fault {
            Fault::TokenDown => return oci_err(503, "UNAVAILABLE"),
            Fault::TokenHang => {}
            _ => return token(st, req).await,
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return oci_err(503, "UNAVAILABLE");
    }
    if st.creds.is_some() && auth.as_deref() != Some(&format!("Bearer {}", st.token)) {
        return challenge(&st, &path);
    }
    if path == "/v2/" || path == "/v2" {
        return Response::builder()
            .status(200)
            .header("docker-distribution-api-version", "registry/2.0")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
    }
    let fault = *st.fault.lock().unwrap();
    match fault {
        Fault::TooMany => {
            let mut r = oci_err(429, "TOOMANYREQUESTS");
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            return r;
        }
        Fault::Status500 => return oci_err(500, "UNKNOWN"),
        Fault::Status503 => return oci_err(503, "UNAVAILABLE"),
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return oci_err(500, "UNKNOWN");
        }
        _ => {}
    }
    let head = method == "HEAD";
    let Some(rest) = path.strip_prefix("/v2/") else {
        return oci_err(404, "NOT_FOUND");
    };
    if let Some(i) = rest.rfind("/manifests/") {
        let key = (rest[..i].to_string(), rest[i + 11..].to_string());
        let Some((mt, bytes)) = st.manifests.lock().unwrap().get(&key).cloned() else {
            return oci_err(404, "MANIFEST_UNKNOWN");
        };
        let b = Response::builder()
            .status(200)
            .header("content-type", mt)
            .header("content-length", bytes.len())
            .header("docker-content-digest", sha256_digest(&bytes))
            .header("docker-distribution-api-version", "registry/2.0");
        return b
            .body(if head {
                Body::empty()
            } else {
                Body::from(bytes)
            })
            .unwrap();
    }
    if let Some(i) = rest.rfind("/blobs/") {
        let digest = rest[i + 7..].to_string();
        if !head && fault == Fault::RedirectLoop {
            return Response::builder()
                .status(307)
                .header("location", format!("http://127.0.0.1:{}{path}", st.port))
                .body(Body::empty())
                .unwrap();
        }
        if !head && st.redirect_blobs.load(Ordering::SeqCst) {
            return Response::builder()
                .status(307)
                .header(
                    "location",
                    format!("http://127.0.0.1:{}/cdn/{digest}?sig=abc", st.cdn_port),
                )
                .body(Body::empty())
                .unwrap();
        }
        return blob_response(st, &digest, head, fault);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let mut tags: Vec<String> = st
            .manifests
            .lock()
            .unwrap()
            .keys()
            .filter(|(n, r)| n == name && !r.starts_with("sha256:"))
            .map(|(_, r)| r.clone())
            .collect();
        tags.sort();
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(json!({"name": name, "tags": tags}).to_string()))
            .unwrap();
    }
    oci_err(404, "NOT_FOUND")
}

async fn cdn(st: Arc<FakeState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    st.seen_cdn.lock().unwrap().push(Seen {
        method: req.method().as_str().to_string(),
        path: path.clone(),
        auth: req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    });
    match path.strip_prefix("/cdn/") {
        Some(d) => blob_response(st.clone(), d, req.method() == "HEAD", Fault::None),
        None => oci_err(404, "NOT_FOUND"),
    }
}

// ---------------------------------------------------------------------------------------------

const NAME: &str = "fake/app";

async fn fake_with_image(creds: Option<(&str, &str)>) -> (Fake, Image) {
    let f = Fake::start(creds).await;
    let img = f.add_image(NAME, "v1", &build_oci_image(500));
    (f, img)
}

/// What a client got for a blob whose fill broke: it must not look like a success.
/// Accepts: an error status, a failed request, or a 200 whose body ends in an error.
/// `size` is the blob's size, or `None` when the upstream announced a wrong length (which the
/// mirror may pass on: what matters then is that the response does not end cleanly).
async fn assert_broken_fetch(resp: reqwest::Result<reqwest::Response>, size: Option<u64>) {
    let resp = match resp {
        Err(_) => return,
        Ok(r) => r,
    };
    let status = resp.status().as_u16();
    if status != 200 {
        assert!(status >= 500, "broken fill answered {status}");
        return;
    }
    if let (Some(cl), Some(size)) = (resp.headers().get("content-length"), size) {
        assert_eq!(cl.to_str().unwrap(), size.to_string());
    }
    match tokio::time::timeout(Duration::from_secs(30), stream_hash(resp))
        .await
        .expect("broken fill: the response must end, not hang")
    {
        Err(_) => {}
        Ok((n, d)) => panic!(
            "broken upstream fill ended as a clean response ({n} of {size:?} bytes, {d}): \
             must end in an error"
        ),
    }
}

fn nothing_stored_for(m: &Mirror, digest: &str) {
    assert!(
        !blob_data_path(&m.storage_root(), digest).exists(),
        "blob data of a broken fill was committed"
    );
    // Nothing under blobs/ for the digest (a repository `_layers` link alone is not blob data).
    let hex = hex_of(digest);
    let leftovers: Vec<_> = files_under(&m.storage_root().join("docker/registry/v2/blobs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(hex))
        .collect();
    assert!(
        leftovers.is_empty(),
        "broken fill left blob files: {leftovers:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream errors for uncached content
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_is_relayed_with_retry_after() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    f.set_fault(Fault::TooMany);
    // The first answer is the upstream's; then the mirror keeps off the upstream's manifests
    // for the rest of those 7 s and says how long is left. Blobs are not held back.
    let manifests0 = f.count("", "/manifests/");
    let h = expect_oci_error(
        m.get_manifest(NAME, "v1").send().await.unwrap(),
        429,
        &["TOOMANYREQUESTS"],
    )
    .await;
    assert_eq!(header(&h, "retry-after"), "7");
    let h = expect_oci_error(
        m.get_manifest(NAME, &img.digest).send().await.unwrap(),
        429,
        &["TOOMANYREQUESTS"],
    )
    .await;
    let left: u64 = header(&h, "retry-after").parse().unwrap();
    assert!((1..=7).contains(&left), "{left}");
    assert_eq!(
        f.count("", "/manifests/"),
        manifests0 + 1,
        "one manifest request upstream"
    );
    let h = expect_oci_error(
        m.get_blob(NAME, &img.layers[0].digest)
            .send()
            .await
            .unwrap(),
        429,
        &["TOOMANYREQUESTS"],
    )
    .await;
    assert_eq!(header(&h, "retry-after"), "7");
    assert!(
        m.metric("ocimirror_upstream_requests_total", &["status=\"429\""])
            .await
            >= 1.0,
        "upstream 429s are counted"
    );
    // Errors are not cached: once the cooldown is over, the manifest is fetched.
    f.set_fault(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = m.get_manifest(NAME, "v1").send().await.unwrap();
        if r.status().as_u16() == 200 {
            assert_eq!(r.bytes().await.unwrap(), img.manifest);
            break;
        }
        assert_eq!(r.status().as_u16(), 429);
        assert!(
            Instant::now() < deadline,
            "still refused after the cooldown"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_becomes_503_unavailable() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    for fault in [Fault::Status500, Fault::Status503] {
        f.set_fault(fault);
        for r in [
            m.get_manifest(NAME, "v1"),
            m.get_manifest(NAME, &img.digest),
            m.get_blob(NAME, &img.layers[1].digest),
        ] {
            expect_oci_error(r.send().await.unwrap(), 503, &["UNAVAILABLE"]).await;
        }
        let r = m
            .head(&format!("/v2/{NAME}/blobs/{}", img.layers[1].digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503, "{fault:?}: HEAD blob");
    }
    f.set_fault(Fault::None);
    let r = m
        .get_blob(NAME, &img.layers[1].digest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.blob(&img.layers[1].digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_404_is_relayed() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let r = m.get_manifest(NAME, "nope").send().await.unwrap();
    expect_oci_error(r, 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]).await;
    let missing = sha256_digest(b"missing");
    let r = m.get_manifest(NAME, &missing).send().await.unwrap();
    expect_oci_error(r, 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]).await;
    let r = m.get_blob(NAME, &missing).send().await.unwrap();
    expect_oci_error(r, 404, &["BLOB_UNKNOWN", "NAME_UNKNOWN"]).await;
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hang_times_out_with_503() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    f.set_fault(Fault::Hang);
    for r in [
        m.get_manifest(NAME, "v1"),
        m.get_blob(NAME, &img.layers[0].digest),
    ] {
        let t = Instant::now();
        let resp = r.timeout(Duration::from_secs(20)).send().await.unwrap();
        expect_oci_error(resp, 503, &["UNAVAILABLE"]).await;
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "first_byte_timeout 1s, but the answer took {took:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Stale tags
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tag_served_when_upstream_fails() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .tag_ttl("0s"),
    )
    .await;
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), img.blob(&d.digest));
    }
    let stale0 = m.metric("ocimirror_stale_served_total", &[]).await;
    let gets0 = f.count("GET", "/manifests/");
    // A 429 starts a cooldown in which the upstream is not asked at all: it comes last.
    for fault in [
        Fault::Status500,
        Fault::Status503,
        Fault::Hang,
        Fault::TooMany,
    ] {
        f.set_fault(fault);
        let heads = f.count("HEAD", "/manifests/v1");
        // The request's own timeout bounds the hang case: the mirror must answer, stale, well
        // before it (its first-byte timeout is 1 s).
        let r = m
            .get_manifest(NAME, "v1")
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "{fault:?}: stale tag must be served"
        );
        assert_eq!(header(r.headers(), "docker-content-digest"), img.digest);
        assert_eq!(r.bytes().await.unwrap(), img.manifest);
        assert!(
            f.count("HEAD", "/manifests/v1") > heads,
            "{fault:?}: the tag was revalidated with a HEAD"
        );
        // Cached blobs need nobody.
        let r = m
            .get_blob(NAME, &img.layers[0].digest)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    assert_eq!(
        f.count("GET", "/manifests/"),
        gets0,
        "a failing revalidation must not fall back to GET"
    );
    let stale = m.metric("ocimirror_stale_served_total", &[]).await;
    assert!(
        stale - stale0 >= 4.0,
        "stale_served_total grew by {}",
        stale - stale0
    );
}

// ---------------------------------------------------------------------------------------------
// Broken blob fills
// ---------------------------------------------------------------------------------------------

async fn broken_fill_case(fault: Fault) {
    let wrong_length = matches!(fault, Fault::ShortLength | Fault::LongLength);
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let layer = img.biggest_layer();
    f.set_fault(fault);
    let resp = m
        .get_blob(NAME, &layer.digest)
        .timeout(Duration::from_secs(40))
        .send()
        .await;
    assert_broken_fetch(resp, (!wrong_length).then_some(layer.size)).await;
    // A second client during the same breakage fares no better.
    let resp = m
        .get_blob(NAME, &layer.digest)
        .timeout(Duration::from_secs(40))
        .send()
        .await;
    assert_broken_fetch(resp, (!wrong_length).then_some(layer.size)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nothing_stored_for(&m, &layer.digest);
    let fetched = f.count("GET", &format!("/blobs/{}", layer.digest));
    assert!(fetched >= 1);

    // Healed: fetched again and served right.
    f.set_fault(Fault::None);
    let r = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(stream_hash(r).await, Ok((layer.size, layer.digest.clone())));
    assert!(f.count("GET", &format!("/blobs/{}", layer.digest)) > fetched);
    let data = blob_data_path(&m.storage_root(), &layer.digest);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !data.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sha256_digest(&std::fs::read(&data).expect("healed blob committed")),
        layer.digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_drop_mid_blob_is_an_error_and_not_stored() {
    broken_fill_case(Fault::DropMidBlob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stall_mid_blob_hits_read_timeout_and_not_stored() {
    broken_fill_case(Fault::StallMidBlob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_wrong_bytes_are_an_error_and_not_stored() {
    broken_fill_case(Fault::WrongBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_with_wrong_digest_is_refused() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    // By digest, the upstream answers other bytes.
    let other = build_oci_image(501);
    f.add_manifest(NAME, &other.digest, OCI_MANIFEST, &img.manifest);
    let r = m.get_manifest(NAME, &other.digest).send().await.unwrap();
    let st = r.status().as_u16();
    assert_ne!(
        st, 200,
        "a manifest whose bytes do not match the requested digest was served"
    );
    let revs = m
        .storage_root()
        .join("docker/registry/v2/repositories/fake/app/_manifests/revisions/sha256");
    assert!(!revs.join(hex_of(&other.digest)).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifest_is_refused_with_size_or_manifest_invalid() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let revs = m
        .storage_root()
        .join("docker/registry/v2/repositories/fake/app/_manifests/revisions/sha256");
    // Over 4 MiB: refused (SIZE_INVALID or MANIFEST_INVALID, per the contract), not stored.
    let pad = "x".repeat(5 << 20);
    let huge = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": img.config.json(), "layers": [],
        "annotations": {"pad": pad},
    }))
    .unwrap();
    f.add_manifest(NAME, "huge", OCI_MANIFEST, &huge);
    let r = m.get_manifest(NAME, "huge").send().await.unwrap();
    let st = r.status().as_u16();
    assert!(st >= 400, "a >4 MiB manifest was served ({st})");
    let body = r.bytes().await.unwrap();
    let codes = error_codes(&body);
    assert!(
        codes
            .iter()
            .any(|c| c == "SIZE_INVALID" || c == "MANIFEST_INVALID"),
        "{codes:?}"
    );
    assert!(!revs.join(hex_of(&sha256_digest(&huge))).exists());
}

// ---------------------------------------------------------------------------------------------
// Token auth and redirects
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_fetched_once_for_many_requests() {
    let (f, img) = fake_with_image(Some(("alice", "wonder land"))).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .tag_ttl("0s")
            .up("username", "alice")
            .up("password", &q("wonder land")),
    )
    .await;
    for _ in 0..3 {
        let r = m.get_manifest(NAME, "v1").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap(), img.manifest);
    }
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap(), img.blob(&d.digest));
    }
    let authed: Vec<Seen> = f
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/v2/fake/app/"))
        .filter(|s| s.auth.as_deref() == Some("Bearer tok-0123456789abcdef"))
        .collect();
    assert!(
        authed.len() >= 3 + img.all_blobs().len(),
        "expected authorized upstream requests, saw {:?}",
        f.seen()
    );
    assert_eq!(
        f.tokens(),
        1,
        "one token (expires_in 300) must serve every request of the same scope: {:?}",
        f.seen()
    );
    let challenges = f
        .seen()
        .iter()
        .filter(|s| s.path != "/token" && s.auth.is_none())
        .count();
    assert!(
        challenges <= 2,
        "the mirror keeps getting challenged: {:?}",
        f.seen()
    );
    assert!(
        m.metric("ocimirror_upstream_requests_total", &["op=\"token\""])
            .await
            >= 1.0
    );

    // Wrong credentials: no content.
    let bad = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .up("username", "alice")
            .up("password", "wrong"),
    )
    .await;
    let r = bad.get_manifest(NAME, "v1").send().await.unwrap();
    assert_ne!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirect_does_not_forward_authorization() {
    let (f, img) = fake_with_image(Some(("bob", "builder"))).await;
    f.redirect_blobs(true);
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .up("username", "bob")
            .up("password", "builder"),
    )
    .await;
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", d.digest);
        assert_eq!(r.bytes().await.unwrap(), img.blob(&d.digest));
    }
    let cdn = f.st.seen_cdn.lock().unwrap().clone();
    assert!(
        cdn.iter().filter(|s| s.method == "GET").count() >= img.all_blobs().len(),
        "blob GETs followed the redirect: {cdn:?}"
    );
    assert!(
        cdn.iter().all(|s| s.auth.is_none()),
        "Authorization was forwarded to the redirect target: {cdn:?}"
    );
    assert!(
        f.seen()
            .iter()
            .any(|s| s.path.contains("/blobs/") && s.auth.is_some()),
        "the registry leg was authorized"
    );
}

// ---------------------------------------------------------------------------------------------
// Slow blobs: streaming, coalescing, disconnects
// ---------------------------------------------------------------------------------------------

/// A fake with one image whose single layer is ~4 MiB, served at 128 KiB per 50 ms (~1.6 s).
async fn slow_fake() -> (Fake, Image, Descriptor) {
    let f = Fake::start(None).await;
    let img = f.add_image(
        NAME,
        "slow",
        &build_image(Kind::Oci, 600, &[4 << 20], "amd64", "linux"),
    );
    f.set_slow(128 << 10, Duration::from_millis(50));
    let layer = img.layers[0].clone();
    (f, img, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_does_not_cancel_fill() {
    let (f, img, layer) = slow_fake().await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let data = img.blob(&layer.digest).clone();

    let r = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut s = r.bytes_stream();
    let mut got = Vec::new();
    while got.len() < 256 << 10 {
        got.extend_from_slice(&s.next().await.expect("body").unwrap());
    }
    assert_eq!(
        f.st.blob_bodies_done.load(Ordering::SeqCst),
        0,
        "the client must get bytes while the upstream is still sending (streaming fill)"
    );
    assert_eq!(&got[..], &data[..got.len()]);
    drop(s);

    let path = blob_data_path(&m.storage_root(), &layer.digest);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "fill was cancelled by the client's disconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), data);
    assert_eq!(f.count("GET", &format!("/blobs/{}", layer.digest)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_gets_coalesce_into_one_upstream_fetch() {
    let (f, _img, layer) = slow_fake().await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let fills0 = m.metric("ocimirror_fills_started_total", &[]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let req = m.get_blob(NAME, &layer.digest);
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "client {i}");
            stream_hash(r).await
        }));
    }
    // A late joiner and a Range request while the fill is in flight.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(f.st.blob_bodies_done.load(Ordering::SeqCst), 0);
    let late = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    let ranged = m
        .get_blob(NAME, &layer.digest)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status().as_u16(), 206);
    assert_eq!(
        header(ranged.headers(), "content-range"),
        format!("bytes 0-99/{}", layer.size)
    );
    assert_eq!(ranged.bytes().await.unwrap().len(), 100);
    assert_eq!(
        stream_hash(late).await,
        Ok((layer.size, layer.digest.clone()))
    );
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            t.await.unwrap(),
            Ok((layer.size, layer.digest.clone())),
            "client {i}"
        );
    }
    assert_eq!(
        f.count("GET", &format!("/blobs/{}", layer.digest)),
        1,
        "concurrent cold GETs must share one upstream fetch"
    );
    assert_eq!(
        m.metric("ocimirror_fills_started_total", &[]).await - fills0,
        1.0
    );
    assert!(m.metric("ocimirror_fill_joins_total", &[]).await >= 1.0);
}

// ---------------------------------------------------------------------------------------------
// Harness sanity: the fake behaves as intended for ordinary clients (no mirror involved).
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_fake_upstream_behaves() {
    // skopeo does the bearer-token dance with the fake and follows the blob redirect.
    let (f, img) = fake_with_image(Some(("alice", "pw"))).await;
    f.redirect_blobs(true);
    let hp = format!("127.0.0.1:{}", f.st.port);
    pull_and_check_oci(&hp, &img, Some("alice:pw")).await;
    assert!(f.tokens() >= 1);
    assert!(!f.st.seen_cdn.lock().unwrap().is_empty());
    assert!(
        skopeo_inspect_raw(&format!("{hp}/{NAME}:v1"), Some("alice:nope"))
            .await
            .is_err()
    );

    let (g, img) = fake_with_image(None).await;
    let c = client();
    let layer = img.biggest_layer();
    let url = format!("{}/v2/{NAME}/blobs/{}", g.url(), layer.digest);
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(
        header(r.headers(), "content-length"),
        layer.size.to_string()
    );

    g.set_fault(Fault::DropMidBlob);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        header(r.headers(), "content-length"),
        layer.size.to_string()
    );
    assert!(
        stream_hash(r).await.is_err(),
        "drop mid-blob is a body error"
    );

    g.set_fault(Fault::WrongBytes);
    let r = c.get(&url).send().await.unwrap();
    let (n, d) = stream_hash(r).await.unwrap();
    assert_eq!(n, layer.size);
    assert_ne!(d, layer.digest);

    g.set_fault(Fault::StallMidBlob);
    let r = c.get(&url).send().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), stream_hash(r))
            .await
            .is_err(),
        "stall mid-blob never ends"
    );

    g.set_fault(Fault::TooMany);
    let r = c.get(&url).send().await.unwrap();
    let h = expect_oci_error(r, 429, &["TOOMANYREQUESTS"]).await;
    assert_eq!(header(&h, "retry-after"), "7");

    g.set_fault(Fault::None);
    g.set_slow(128 << 10, Duration::from_millis(20));
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(stream_hash(r).await, Ok((layer.size, layer.digest.clone())));
    assert_eq!(g.st.blob_bodies_done.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// Issue #7: more upstream faults
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_content_length_short_is_an_error_and_not_stored() {
    broken_fill_case(Fault::ShortLength).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_content_length_long_is_an_error_and_not_stored() {
    broken_fill_case(Fault::LongLength).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_chunked_body_ending_early_is_an_error_and_not_stored() {
    broken_fill_case(Fault::TruncatedChunked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_redirect_loop_is_an_error_and_not_stored() {
    broken_fill_case(Fault::RedirectLoop).await;
}

/// A blob without `Content-Length` (chunked) is fine: served and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_blob_without_content_length_is_served_and_stored() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    f.set_fault(Fault::NoLength);
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(stream_hash(r).await, Ok((d.size, d.digest.clone())));
        wait_committed(&m, &d.digest).await;
    }
}

/// Wait (up to 20 s) until `digest`'s data is in storage, and check its bytes.
async fn wait_committed(m: &Mirror, digest: &str) {
    let data = blob_data_path(&m.storage_root(), digest);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !data.exists() {
        assert!(Instant::now() < deadline, "{digest} never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sha256_digest(&std::fs::read(&data).unwrap()),
        digest,
        "committed blob has the wrong bytes"
    );
}

/// An upstream sending 1 KiB a second (slower than no client would notice, faster than the
/// read timeout): the client gets bytes as they come and the whole blob, and it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_at_one_kib_per_second_is_streamed_and_stored() {
    let f = Fake::start(None).await;
    let img = f.add_image(
        NAME,
        "crawl",
        &build_image(Kind::Oci, 610, &[6 << 10], "amd64", "linux"),
    );
    let layer = img.layers[0].clone();
    f.set_slow(1024, Duration::from_secs(1));
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let r = m.get_blob(NAME, &layer.digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut s = r.bytes_stream();
    let mut got = Vec::new();
    got.extend_from_slice(&s.next().await.expect("first bytes").unwrap());
    assert_eq!(
        f.st.blob_bodies_done.load(Ordering::SeqCst),
        0,
        "first bytes reach the client while the upstream is still sending"
    );
    while let Some(b) = s.next().await {
        got.extend_from_slice(&b.expect("slow but steady upstream: no error"));
    }
    assert_eq!(sha256_digest(&got), layer.digest);
    wait_committed(&m, &layer.digest).await;
}

/// The upstream is down when the mirror starts (connection refused): uncached content is 503,
/// the mirror keeps running, and serves once the upstream comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_start_then_up() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let m = Mirror::start(MirrorOpts::upstream(&url).short_timeouts()).await;
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    expect_oci_error(r, 503, &["UNAVAILABLE"]).await;
    let f = Fake::start_on(None, port).await;
    let img = f.add_image(NAME, "v1", &build_oci_image(620));
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(stream_hash(r).await, Ok((d.size, d.digest.clone())));
    }
}

/// Token endpoint answering 503, or hanging: uncached content is 503 `UNAVAILABLE` (not a 401
/// the client could do nothing about), within the timeouts; nothing is stored; once it is back,
/// pulls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_or_hanging_is_503_then_recovers() {
    let (f, img) = fake_with_image(Some(("alice", "pw"))).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .up("username", "alice")
            .up("password", "pw"),
    )
    .await;
    for fault in [Fault::TokenDown, Fault::TokenHang] {
        f.set_fault(fault);
        for r in [
            m.get_manifest(NAME, "v1"),
            m.get_blob(NAME, &img.layers[0].digest),
        ] {
            let resp = r.timeout(Duration::from_secs(30)).send().await;
            let resp = resp.unwrap_or_else(|e| panic!("{fault:?}: no answer: {e}"));
            let st = resp.status().as_u16();
            assert!(
                st == 503 || st == 502,
                "{fault:?}: uncached content with the token endpoint down answered {st}"
            );
        }
        nothing_stored_for(&m, &img.layers[0].digest);
    }
    f.set_fault(Fault::None);
    let r = m.get_manifest(NAME, "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    let r = m
        .get_blob(NAME, &img.layers[0].digest)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stream_hash(r).await,
        Ok((img.layers[0].size, img.layers[0].digest.clone()))
    );
}

/// 40 concurrent clients while the upstream answers 429 to everything: each gets 429 with a
/// `Retry-After` (or 503), the mirror does not multiply the storm (at most two upstream requests
/// per client request), nothing is stored, and pulls work again once the upstream does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_storm_is_relayed_not_amplified_and_not_stored() {
    let (f, img) = fake_with_image(None).await;
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    f.set_fault(Fault::TooMany);
    let before = f.seen().len();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let req = match i % 3 {
            0 => m.get_manifest(NAME, "v1"),
            1 => m.get_manifest(NAME, &img.digest),
            _ => m.get_blob(NAME, &img.layers[i % img.layers.len()].digest),
        };
        tasks.push(tokio::spawn(async move {
            let r = req.timeout(Duration::from_secs(30)).send().await.unwrap();
            let st = r.status().as_u16();
            let ra = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (st, ra)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (st, ra) = t.await.unwrap();
        assert!(st == 429 || st == 503, "client {i}: {st}");
        if st == 429 {
            assert!(ra.is_some(), "client {i}: 429 without Retry-After");
        }
    }
    let upstream = f.seen().len() - before;
    assert!(
        upstream <= 80,
        "40 client requests made {upstream} upstream requests during a 429 storm"
    );
    for d in img.all_blobs() {
        nothing_stored_for(&m, &d.digest);
    }
    f.set_fault(Fault::None);
    // The mirror may hold off for the upstream's Retry-After (7 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = m.get_manifest(NAME, "v1").send().await.unwrap();
        if r.status().as_u16() == 200 {
            assert_eq!(r.bytes().await.unwrap(), img.manifest);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after the storm",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A client that goes away at each point of a fill — right after sending its request, after
/// the response head, after the first bytes, half-way, one byte before the end — never cancels
/// the fill or leaves a partial blob: each blob ends up in storage whole, and is served right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnecting_at_every_point_of_a_fill() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fake::start(None).await;
    let img = f.add_image(
        NAME,
        "cuts",
        &build_image(Kind::Oci, 630, &[1 << 20; 5], "amd64", "linux"),
    );
    f.set_slow(64 << 10, Duration::from_millis(20));
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    // The manifest first, so the blobs are linked to the repository.
    let r = m.get_manifest(NAME, "cuts").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let hp = m.hostport();
    for (i, layer) in img.layers.iter().enumerate() {
        let size = layer.size as usize;
        // Bytes of the response (head included) read before hanging up; None: none at all.
        let mut s = tokio::net::TcpStream::connect(&hp).await.unwrap();
        let req = format!(
            "GET /v2/{NAME}/blobs/{} HTTP/1.1\r\nHost: {hp}\r\n\r\n",
            layer.digest
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let body_bytes = match i {
            0 => None,
            1 => Some(0),
            2 => Some(1),
            3 => Some(size / 2),
            _ => Some(size - 1),
        };
        if let Some(want) = body_bytes {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 << 10];
            loop {
                let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                if let Some(h) = head_end
                    && buf.len() - (h + 4) >= want
                {
                    break;
                }
                let room = match head_end {
                    Some(h) => (h + 4 + want - buf.len()).min(chunk.len()),
                    None => 1,
                };
                let n = s.read(&mut chunk[..room]).await.unwrap();
                assert!(n > 0, "cut {i}: response ended early");
                buf.extend_from_slice(&chunk[..n]);
            }
            assert!(buf.starts_with(b"HTTP/1.1 200"), "cut {i}");
        } else {
            // Give the request time to reach the handler before hanging up.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(s);
        // Every cut after the response began means the fill is under way: it must commit.
        if body_bytes.is_some() {
            wait_committed(&m, &layer.digest).await;
        }
    }
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(
            stream_hash(r).await,
            Ok((d.size, d.digest.clone())),
            "{}",
            d.digest
        );
        wait_committed(&m, &d.digest).await;
    }
    for l in &img.layers[1..] {
        assert_eq!(
            f.count("GET", &format!("/blobs/{}", l.digest)),
            1,
            "a client's disconnect cancelled the fill of {}",
            l.digest
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The mirror killed
// ---------------------------------------------------------------------------------------------

/// Set a file's modification time `hours` into the past (`touch -d`).
fn age_file(path: &std::path::Path, hours: u32) {
    let st = std::process::Command::new("touch")
        .arg("-d")
        .arg(format!("{hours} hours ago"))
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// SIGKILL while fills are streaming: nothing partial is ever readable (no blob data for the
/// interrupted digests, only temp files). After a restart the blobs are fetched again whole and
/// committed; temp files older than 6 h are removed at start-up, younger ones (a writer of
/// another process sharing the root may own them) are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_fills_then_restart_serves_whole_blobs_and_cleans_temp_files() {
    let f = Fake::start(None).await;
    let img = f.add_image(
        NAME,
        "kill",
        &build_image(Kind::Oci, 640, &[4 << 20, 3 << 20], "amd64", "linux"),
    );
    f.set_slow(128 << 10, Duration::from_millis(50));
    let mut m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    let r = m.get_manifest(NAME, "kill").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut streams = Vec::new();
    for l in &img.layers {
        let r = m.get_blob(NAME, &l.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut s = r.bytes_stream();
        let mut n = 0;
        // Past the first 1 MiB storage batch, so the temp files have bytes in them.
        while n < (1 << 20) + (256 << 10) {
            n += s.next().await.expect("body").unwrap().len();
        }
        streams.push(s);
    }
    let tmp_dir = m.storage_root().join("_ocimirror_tmp");
    m.kill();
    for mut s in streams {
        // The killed mirror's responses end in an error, never cleanly.
        let mut clean = true;
        while let Some(b) = s.next().await {
            if b.is_err() {
                clean = false;
                break;
            }
        }
        assert!(!clean, "a response of a killed fill ended cleanly");
    }
    for l in &img.layers {
        assert!(
            !blob_data_path(&m.storage_root(), &l.digest).exists(),
            "a partial blob was committed"
        );
    }
    let abandoned = files_under(&tmp_dir);
    assert_eq!(
        abandoned.len(),
        img.layers.len(),
        "one temp file per interrupted fill: {abandoned:?}"
    );
    for p in &abandoned {
        age_file(p, 7);
    }
    let young = tmp_dir.join("young-writer");
    std::fs::write(&young, b"partial").unwrap();

    m.restart(None).await;
    let left = files_under(&tmp_dir);
    assert_eq!(
        left,
        vec![young.clone()],
        "start-up removes temp files older than 6 h, and only those"
    );
    for d in img.all_blobs() {
        let r = m.get_blob(NAME, &d.digest).send().await.unwrap();
        assert_eq!(stream_hash(r).await, Ok((d.size, d.digest.clone())));
        wait_committed(&m, &d.digest).await;
    }
}
