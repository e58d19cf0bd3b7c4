//! Hostile HTTP at the front door, black box: oversized request heads, an oversized token form,
//! and CR/LF smuggled (percent-encoded) into values that could reach response headers (`ns`, a
//! tag, `last`, the token endpoint's `service` and `scope`). The server answers cleanly and keeps
//! serving; no response carries an injected header.

mod common;

use std::time::Duration;

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
