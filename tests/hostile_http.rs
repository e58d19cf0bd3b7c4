//! Hostile HTTP at the front door, black box: oversized request heads, an oversized token form,
//! CR/LF smuggled (percent-encoded) into values that could reach response headers (`ns`, a
//! tag, `last`, the token endpoint's `service` and `scope`), forged `X-Forwarded-For`
//! addresses and forged `X-Forwarded-Host`. The server answers cleanly and keeps serving; no
//! response carries an injected header; a client cannot choose the address its per-client
//! bounds are counted by, nor the realm its challenges send logins to.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Send `head` (a whole request head, `\r\n\r\n` included) and read what comes back until the
/// server closes or 10 s pass: the status code (None if the connection closed without a
/// response) and the raw response head.
async fn send_head(hostport: &str, head: &[u8]) -> (Option<u16>, String) {
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    // The server may answer and close before it has read everything: ignore write errors.
    let _ = s.write_all(head).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok());
    (status, head)
}

async fn still_serving(m: &Mirror) {
    let r = m.get("/v2/").send().await.unwrap();
    // 401 where tokens are required: an answer all the same.
    assert!(
        matches!(r.status().as_u16(), 200 | 401),
        "the server stopped serving: {}",
        r.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused_cleanly_and_the_server_keeps_serving() {
    let m = Mirror::start(MirrorOpts::default()).await;
    let hp = m.hostport();

    // 100 KiB of headers, as 1000 headers of 100 bytes: over hyper's count limit.
    let mut many = format!("GET /v2/ HTTP/1.1\r\nHost: {hp}\r\n");
    for i in 0..1000 {
        many.push_str(&format!("X-Pad-{i:04}: {}\r\n", "a".repeat(100)));
    }
    many.push_str("\r\n");
    assert!(many.len() > 100 << 10);
    let one_header = |name: &str, fill: &str, len: usize| {
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: {hp}\r\n{name}: {}\r\n\r\n",
            fill.repeat(len)
        )
    };
    for (what, head, answers) in [
        ("1000 headers", many, &[Some(431), Some(400)][..]),
        // Within the server's head buffer: answered (200 or refused); never a hang or a crash.
        (
            "one 100 KiB header",
            one_header("X-Big", "b", 100 << 10),
            &[Some(200), Some(431), Some(400)],
        ),
        // 1 MiB of head: over any buffer; refused or the connection closed, never served.
        (
            "one 1 MiB header",
            one_header("X-Huge", "c", 1 << 20),
            &[None, Some(431), Some(400)],
        ),
    ] {
        let (status, answer) = send_head(&hp, head.as_bytes()).await;
        eprintln!("{what}, {} bytes: {status:?}", head.len());
        assert!(answers.contains(&status), "{what}: {status:?} {answer}");
        still_serving(&m).await;
    }
    assert!(m.pid().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_in_values_never_becomes_a_response_header_and_big_token_forms_are_refused() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("inj/app", "v1", 620).await;
    let dir = tempfile::TempDir::new().unwrap();
    let (key, cert) = ocimirror_keygen(dir.path());
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .extra(&format!(
                "upstreams:\n  - name: b.example\n    url: {}\n",
                q(&reg.url())
            ))
            .extra(&format!(
                "auth:\n  key: {}\n  certificate: {}\n  users:\n    \"\": {{}}\n  acl:\n    - match: {{account: \"\"}}\n      actions: [\"pull\"]\n",
                q(&key),
                q(&cert)
            )),
    )
    .await;
    let hp = m.hostport();
    // An anonymous token for the pulls below (anonymous may pull everything).
    let token = anonymous_token(&m).await;
    // Two tags, so that a one-tag page has a next page (a Link header).
    reg.pusher()
        .push_manifest("inj/app", "v2", &img.media_type, &img.manifest)
        .await;

    let inj = "%0d%0aX-Injected:%20yes";
    let paths = [
        format!("/v2/inj/app/manifests/v1?ns=b.example{inj}"),
        format!("/v2/inj/app/manifests/v1?ns={inj}"),
        format!("/v2/inj/app/manifests/v1{inj}"),
        format!("/v2/inj/app/tags/list?n=1&last=v0{inj}"),
        "/v2/inj/app/tags/list?n=1".to_string(),
        format!("/v2/inj{inj}/app/manifests/v1"),
        format!("/auth?service=ocimirror{inj}&scope=repository:inj/app:pull"),
        format!("/auth?service=ocimirror&scope=repository:inj/app{inj}:pull"),
        format!("/auth?service=ocimirror&scope=repository:inj/app:pull{inj}"),
        format!("/auth?service=ocimirror&account=x{inj}&scope=repository:inj/app:pull"),
    ];
    let mut saw_link = false;
    for with_token in [false, true] {
        for path in &paths {
            let auth = if with_token {
                format!("Authorization: Bearer {token}\r\n")
            } else {
                String::new()
            };
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {hp}\r\nAccept: {ACCEPT_MANIFESTS}\r\n{auth}Connection: close\r\n\r\n"
            );
            let (status, head) = send_head(&hp, req.as_bytes()).await;
            eprintln!("{path} (token {with_token}): {status:?}");
            assert!(status.is_some(), "{path}: no response");
            for line in head.lines().skip(1) {
                let name = line.split(':').next().unwrap_or("").trim();
                assert!(
                    !name.eq_ignore_ascii_case("x-injected"),
                    "{path}: injected header in\n{head}"
                );
                assert!(!line.contains('\r'), "{path}: CR in a header line\n{head}");
                if name.eq_ignore_ascii_case("link") {
                    saw_link = true;
                }
            }
        }
    }
    assert!(
        saw_link,
        "no Link header seen: the pagination path was not exercised"
    );
    still_serving(&m).await;

    // A token form over the 64 KiB limit: 413 with an OCI error, and the endpoint still works.
    let form = format!(
        "grant_type=password&service=ocimirror&client_id=t&username=u&password={}",
        "p".repeat(70 << 10)
    );
    let r = client()
        .post(format!("{}/auth", m.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    expect_oci_error(r, 413, &["UNSUPPORTED"]).await;
    // 8 MiB: refused the same way (or the connection closed), never buffered into memory whole.
    let r = client()
        .post(format!("{}/auth", m.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 8 << 20])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    anonymous_token(&m).await;
}

/// An anonymous token to pull `inj/app` from `m`'s token endpoint, which must answer 200.
async fn anonymous_token(m: &Mirror) -> String {
    let r = m
        .get("/auth?service=ocimirror&scope=repository:inj/app:pull")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// The address a trusted proxy connects from: another loopback address, so that the test's
/// direct requests (from 127.0.0.1) come from an untrusted peer.
const PROXY: [u8; 4] = [127, 0, 0, 2];

/// A client connecting from [`PROXY`], as the trusted proxy does.
fn proxy_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from(PROXY))
        .build()
        .unwrap()
}

/// `n` requests to `/v2/` from `c`, the `i`-th with `X-Forwarded-For: xff(i)`: how many were
/// allowed, how many refused with 429, and the whole seconds they took (started ones count).
async fn burst(
    m: &Mirror,
    c: &reqwest::Client,
    n: usize,
    xff: impl Fn(usize) -> String,
) -> (usize, usize, u64) {
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..n {
        let r = c
            .get(format!("{}/v2/", m.url()))
            .header("x-forwarded-for", xff(i))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("request {i}: {s}"),
        }
    }
    (ok, limited, started.elapsed().as_secs() + 1)
}

/// A rate limit behind `X-Forwarded-For` with one trusted proxy. A client connecting directly
/// and forging a new address on every request (alone, or followed by the proxy's own address)
/// is still one client and is limited; so is a client behind the proxy that forges entries left
/// of the one the proxy appended. Requests the proxy forwards for distinct clients are each
/// counted by the forwarded address, not as the proxy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_addresses_do_not_escape_the_rate_limit() {
    let m = Mirror::start(MirrorOpts::upstream(&closed_url()).extra(
        "limits:\n  requests_per_second: 1\n  burst: 3\n  real_ip_header: X-Forwarded-For\n  trusted_proxies: [127.0.0.2]\n",
    ))
    .await;
    let direct = client();
    let proxy = proxy_client();
    const N: usize = 12;
    // At 1/s with a burst of 3, one client gets at most 3 and one more per second started.
    let one_client = |(ok, limited, secs): (usize, usize, u64), what: &str| {
        assert!(
            ok as u64 <= 3 + secs && limited >= 1,
            "{what}: {ok} allowed, {limited} refused in {secs} s: counted as more than one client"
        );
    };

    let rotating = burst(&m, &direct, N, |i| format!("192.0.2.{}", i + 1)).await;
    one_client(rotating, "direct, rotating forged addresses");
    let via_proxy_forged =
        burst(&m, &direct, N, |i| format!("198.18.0.{}, 127.0.0.2", i + 1)).await;
    one_client(
        via_proxy_forged,
        "direct, naming the trusted proxy as the last hop",
    );
    assert!(m.metric("ocimirror_client_rate_limited_total", &[]).await >= 2.0);

    // Through the proxy, each forwarded client has its own bucket: none of them is limited
    // though the proxy itself sent them all.
    let distinct = burst(&m, &proxy, N, |i| format!("198.51.100.{}", i + 1)).await;
    assert_eq!(
        distinct,
        (N, 0, distinct.2),
        "each forwarded client is its own"
    );
    // One client behind the proxy forging entries left of the proxy's: limited all the same.
    let spoofed_left = burst(&m, &proxy, N, |i| {
        format!("203.0.113.{}, 10.0.0.{}, 198.51.100.200", i + 1, i + 1)
    })
    .await;
    one_client(spoofed_left, "behind the proxy, forged leftmost entries");
    // The access log names the forwarded client, not the proxy.
    let log = m.log_text();
    assert!(
        log.contains("client=198.51.100.7") && log.contains("client=127.0.0.1"),
        "access log without the client addresses:\n{}",
        log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    assert!(
        !log.contains("client=192.0.2."),
        "a forged address was logged"
    );
}

/// The realm of a 401's challenge names where the client reached the mirror. `X-Forwarded-Host`
/// and `X-Forwarded-Proto` say so only from a trusted proxy: from any other peer they are ignored
/// and the request's `Host` is used, so a client cannot send others' logins to its own server
/// through a cached or relayed challenge. A forwarded host that is not one hostname with a port
/// (quotes, a list, an encoded line break) is ignored even from the proxy; `auth.realm` wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_host_reaches_the_realm_only_from_a_trusted_proxy() {
    let dir = tempfile::TempDir::new().unwrap();
    let (key, cert) = ocimirror_keygen(dir.path());
    let opts = |realm: &str| {
        MirrorOpts::upstream(&closed_url()).extra(&format!(
            "auth:\n  key: {}\n  certificate: {}\n  real_ip_header: X-Forwarded-For\n  trusted_proxies: [127.0.0.2]\n{realm}  users:\n    \"\": {{}}\n",
            q(&key),
            q(&cert)
        ))
    };
    let mut m = Mirror::start(opts("")).await;
    let direct = client();
    let proxy = proxy_client();
    let challenge = |c: &reqwest::Client, url: String, forwarded: &[(&str, &str)]| {
        let mut req = c.get(format!("{url}/v2/"));
        for (name, value) in forwarded {
            req = req.header(*name, *value);
        }
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401);
            header(r.headers(), "www-authenticate").to_owned()
        }
    };
    let bearer = |realm: &str| format!("Bearer realm=\"{realm}\",service=\"ocimirror\"");
    let own = format!("http://{}/auth", m.hostport());

    // A client connecting directly: its forwarded host and scheme are ignored.
    let evil = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
    ];
    let got = challenge(&direct, m.url(), &evil).await;
    assert!(!got.contains("evil.example"), "{got}");
    assert_eq!(got, bearer(&own));

    // The trusted proxy: the host and scheme the client used to reach it.
    let forwarded = [
        ("x-forwarded-host", "mirror.example.com:8443"),
        ("x-forwarded-proto", "https"),
    ];
    let got = challenge(&proxy, m.url(), &forwarded).await;
    assert_eq!(got, bearer("https://mirror.example.com:8443/auth"));

    // Even from the proxy, a value that is not one host is ignored, never echoed.
    for injected in [
        "evil.example\",realm=\"http://evil.example/auth",
        "evil.example, mirror.example.com",
        "evil.example%0d%0aX-Injected:%20yes",
        "evil.example\tx",
        "evil.example/auth?",
    ] {
        let got = challenge(&proxy, m.url(), &[("x-forwarded-host", injected)]).await;
        assert_eq!(got, bearer(&own), "{injected:?}");
    }

    // A configured realm wins over whatever the proxy says.
    m.restart(Some(opts("  realm: https://auth.example.net/auth\n")))
        .await;
    let got = challenge(&proxy, m.url(), &forwarded).await;
    assert_eq!(got, bearer("https://auth.example.net/auth"));
}

/// An HTTP/2 request names the mirror in `:authority` and usually sends no `Host`; an
/// absolute-form HTTP/1 request names it in its target, which wins over its `Host` (RFC 9112
/// 3.2.2). Either way the realm is the address the client reached, not a stand-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_realm_names_the_authority_of_http2_and_absolute_form_requests() {
    let dir = tempfile::TempDir::new().unwrap();
    let (key, cert) = ocimirror_keygen(dir.path());
    let m = Mirror::start(MirrorOpts::upstream(&closed_url()).extra(&format!(
        "auth:\n  key: {}\n  certificate: {}\n  users:\n    \"\": {{}}\n",
        q(&key),
        q(&cert)
    )))
    .await;
    let own = format!(
        "Bearer realm=\"http://{}/auth\",service=\"ocimirror\"",
        m.hostport()
    );

    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(format!("{}/v2/", m.url())).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 401);
    assert_eq!(header(r.headers(), "www-authenticate"), own);

    let (status, head) = send_head(
        &m.hostport(),
        format!(
            "GET {}/v2/ HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n",
            m.url()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, Some(401), "{head}");
    let challenge = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("www-authenticate")
            .then_some(value.trim())
    });
    assert_eq!(challenge, Some(own.as_str()), "{head}");
}

/// `real_ip_header` without `trusted_proxies` is refused by `config check`, naming the key and
/// saying what to add; with them it passes.
#[test]
fn a_real_ip_header_without_trusted_proxies_is_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    for (section, extra) in [("limits", ""), ("auth", "  allow_anonymous: true\n")] {
        let f = dir.path().join(format!("{section}.yaml"));
        std::fs::write(
            &f,
            format!("{section}:\n{extra}  real_ip_header: X-Forwarded-For\n"),
        )
        .unwrap();
        let (ok, out) = config_check(&f);
        assert!(!ok, "{section}: accepted:\n{out}");
        assert!(
            out.contains(&format!("{section}.real_ip_header")) && out.contains("trusted_proxies"),
            "{section}: {out}"
        );
    }
    let f = dir.path().join("ok.yaml");
    std::fs::write(
        &f,
        "limits:\n  real_ip_header: X-Forwarded-For\n  trusted_proxies: [10.0.0.0/8, \"fd00::/8\"]\n",
    )
    .unwrap();
    let (ok, out) = config_check(&f);
    assert!(ok, "{out}");
}
