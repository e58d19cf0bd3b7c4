//! Test harness for ocimirror's black-box integration tests, one room per part:
//!
//! - `images`: media types, hashing, deterministic content and images built from a seed.
//! - `registry`: a real Distribution (`docker-registry serve`) on loopback with its request
//!   log, and [`Pusher`] (the OCI push API).
//! - `mirror`: the ocimirror binary under test ([`Mirror`], [`MirrorOpts`]) and its other
//!   commands.
//! - `upstream`: [`FakeUpstream`], the one scriptable in-process registry for what a real one
//!   cannot do on demand (429s, hangs, dropped or corrupt bodies, odd headers), with counted
//!   requests.
//! - `skopeo`, `http`, `stored`: the client, HTTP assertions, what landed in storage.
//! - `containerd`: a containerd daemon of the test's own, driven with `ctr`, and images it can
//!   unpack.
//! - `s3`, `redis`, `weed`, `proxy`: shared-state services for fleets and a cuttable TCP proxy.
//! - `cloud`: fake-gcs-server and Azurite as Google Cloud Storage and Azure Blob Storage.
//! - `forward`: in-process HTTP forwarders ([`LocalServer`]) for what a real part cannot do on
//!   demand (pace, hold or corrupt bodies, delay a store's commits).
//! - `backend`: one seam over every store ([`Backend`], [`Store`]), and [`on_backends!`] for one
//!   test body run on each.
//! - `outage`: a storage outage seen through the mirror's breaker counters.
//!
//! Everything is re-exported here, so tests `use common::*`. Nothing reaches beyond 127.0.0.1.
#![allow(dead_code)]

mod backend;
mod cloud;
mod containerd;
mod forward;
mod http;
mod images;
mod mirror;
mod outage;
mod proxy;
mod redis;
mod registry;
mod s3;
mod skopeo;
mod stored;
mod upstream;
mod weed;

// Each test file uses part of the harness: what it leaves unused is no warning.
#[allow(unused_imports)]
pub use self::{
    backend::*, cloud::*, containerd::*, forward::*, http::*, images::*, mirror::*, outage::*,
    proxy::*, redis::*, registry::*, s3::*, skopeo::*, stored::*, upstream::*, weed::*,
};

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

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

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn hostport_of(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    Some(rest.split('/').next().unwrap_or(rest))
}

async fn wait_http_ok(url: &str, ok: &[u16], child: &mut Child, log: &Path, what: &str) {
    // Readiness only: an HTTPS part's certificate is the test's own, checked by what the test
    // runs against it.
    let c = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(url.starts_with("https://"))
        .build()
        .unwrap();
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

pub use ocimirror::util::tool_or_skip;

/// YAML double-quoted scalar.
pub fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
