//! How the fake answers: a request is parsed into its route, recorded, counted in flight, and
//! answered from the content with the quirks of every matching rule applied.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;

use super::super::sha256_digest;
use super::auth::{authorized, challenge, token};
use super::{BodyEnd, Length, Quirks, Redirect, Route, Seen, State};

/// A request as parsed: its route, repository name and reference (tag or digest), when any.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub(super) route: Route,
    pub(super) name: String,
    pub(super) reference: String,
}

pub(super) fn parse_path(path: &str) -> Target {
    let t = |route, name: &str, reference: &str| Target {
        route,
        name: name.to_string(),
        reference: reference.to_string(),
    };
    if path == "/v2/" || path == "/v2" {
        return t(Route::Ping, "", "");
    }
    if path == "/token" {
        return t(Route::Token, "", "");
    }
    if let Some(d) = path.strip_prefix("/_storage/") {
        return t(Route::Storage, "", d);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return t(Route::Other, "", "");
    };
    if let Some(i) = rest.rfind("/manifests/") {
        return t(Route::Manifest, &rest[..i], &rest[i + 11..]);
    }
    if let Some(i) = rest.rfind("/blobs/") {
        return t(Route::Blob, &rest[..i], &rest[i + 7..]);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return t(Route::Tags, name, "");
    }
    if let Some(i) = rest.rfind("/referrers/") {
        return t(Route::Referrers, &rest[..i], &rest[i + 11..]);
    }
    t(Route::Other, "", "")
}

/// Counts a request in flight for its route until dropped.
struct Flight {
    st: Arc<State>,
    route: Route,
}

impl Flight {
    fn new(st: &Arc<State>, route: Route) -> Flight {
        let mut f = st.flights.lock().unwrap();
        let e = f.entry(route).or_default();
        e.now += 1;
        e.max = e.max.max(e.now);
        Flight {
            st: st.clone(),
            route,
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(e) = self.st.flights.lock().unwrap().get_mut(&self.route) {
            e.now -= 1;
        }
    }
}

/// The quirks of every rule matching this request, merged (and counted against `times`).
pub(super) fn quirks_for(st: &State, route: Route, method: &str, path: &str) -> Quirks {
    let mut q = Quirks::default();
    let mut rules = st.rules.lock().unwrap();
    for r in rules.iter_mut() {
        if r.left != Some(0) && r.when.matches(route, method, path) {
            q.merge(&r.quirks);
            if let Some(n) = &mut r.left {
                *n -= 1;
            }
        }
    }
    q
}

fn record(to: &Mutex<Vec<Seen>>, route: Route, req: &Request) -> Seen {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let s = Seen {
        route,
        method: req.method().as_str().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(String::from),
        auth: h("authorization"),
        range: h("range"),
    };
    to.lock().unwrap().push(s.clone());
    s
}

pub(super) fn oci_error(status: u16, code: &str) -> Response {
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

pub(super) async fn registry(st: Arc<State>, req: Request) -> Response {
    let t = parse_path(req.uri().path());
    let seen = record(&st.seen, t.route, &req);
    let flight = Flight::new(&st, t.route);
    if t.route == Route::Token {
        let q = quirks_for(&st, t.route, &seen.method, &seen.path);
        // A token answer has no body to hold part of: `hold_after` holds all of it.
        if q.hold_after.is_some() {
            let _ = st.released.subscribe().wait_for(|open| *open).await;
        }
        return match hold_or_reply(&q).await {
            Some(r) => with_headers(r, &q),
            None => with_headers(token(&st, req).await, &q),
        };
    }
    if t.route != Route::Storage && !authorized(&st, &t, seen.auth.as_deref()) {
        return challenge(&st, &t);
    }
    let q = quirks_for(&st, t.route, &seen.method, &seen.path);
    if let Some(r) = hold_or_reply(&q).await {
        return with_headers(r, &q);
    }
    let r = answer(&st, &t, &seen, &q, flight);
    with_headers(r, &q)
}

pub(super) async fn cdn(st: Arc<State>, req: Request) -> Response {
    let seen = record(&st.seen_cdn, Route::Cdn, &req);
    let flight = Flight::new(&st, Route::Cdn);
    let q = quirks_for(&st, Route::Cdn, &seen.method, &seen.path);
    if let Some(r) = hold_or_reply(&q).await {
        return with_headers(r, &q);
    }
    let r = match seen.path.strip_prefix("/cdn/") {
        Some(d) => {
            let t = Target {
                route: Route::Blob,
                name: String::new(),
                reference: d.to_string(),
            };
            let q = Quirks {
                redirect: None,
                ..q.clone()
            };
            answer(&st, &t, &seen, &q, flight)
        }
        None => oci_error(404, "NOT_FOUND"),
    };
    with_headers(r, &q)
}

/// Delays, hangs and replies: the quirks that come before any content.
async fn hold_or_reply(q: &Quirks) -> Option<Response> {
    if let Some(d) = q.delay {
        tokio::time::sleep(d).await;
    }
    if q.hang {
        std::future::pending::<()>().await;
    }
    q.reply
        .as_ref()
        .map(|(status, code)| oci_error(*status, code))
}

fn with_headers(mut r: Response, q: &Quirks) -> Response {
    for (k, v) in &q.headers {
        let name: axum::http::HeaderName = k.parse().unwrap();
        match v {
            Some(v) => {
                r.headers_mut().insert(name, v.parse().unwrap());
            }
            None => {
                r.headers_mut().remove(name);
            }
        }
    }
    r
}

/// The content a request asks for, with the body quirks applied.
fn answer(st: &Arc<State>, t: &Target, seen: &Seen, q: &Quirks, flight: Flight) -> Response {
    let head = seen.method == "HEAD";
    let mut digest = None;
    let (content_type, data, not_found) = match t.route {
        Route::Ping => {
            return Response::builder()
                .status(200)
                .header("docker-distribution-api-version", "registry/2.0")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
        }
        Route::Manifest => {
            let key = (t.name.clone(), t.reference.clone());
            match st.manifests.lock().unwrap().get(&key).cloned() {
                Some((ct, data, d)) => {
                    digest = Some(d);
                    (Some(ct), Some(data), "MANIFEST_UNKNOWN")
                }
                None => (None, None, "MANIFEST_UNKNOWN"),
            }
        }
        Route::Blob | Route::Storage => {
            let data = st.blobs.lock().unwrap().get(&t.reference).cloned();
            (
                Some("application/octet-stream".into()),
                data,
                "BLOB_UNKNOWN",
            )
        }
        Route::Referrers => {
            let key = (t.name.clone(), t.reference.clone());
            let data = st.referrers.lock().unwrap().get(&key).cloned();
            let ct = "application/vnd.oci.image.index.v1+json";
            (Some(ct.into()), data, "NOT_FOUND")
        }
        Route::Tags => {
            let mut tags: Vec<String> = st
                .manifests
                .lock()
                .unwrap()
                .keys()
                .filter(|(n, r)| *n == t.name && !r.starts_with("sha256:"))
                .map(|(_, r)| r.clone())
                .collect();
            tags.sort();
            let body = json!({"name": t.name, "tags": tags}).to_string();
            (Some("application/json".into()), Some(body.into()), "")
        }
        Route::Token | Route::Other | Route::Cdn => (None, None, "NOT_FOUND"),
    };
    let Some(data) = data else {
        return oci_error(404, not_found);
    };
    if let Some(to) = q.redirect {
        let (status, location) = match to {
            Redirect::Cdn(status) => (
                status,
                format!(
                    "http://127.0.0.1:{}/cdn/{}?sig=abc",
                    st.cdn_port, t.reference
                ),
            ),
            Redirect::Loop => (307, format!("http://127.0.0.1:{}{}", st.port, seen.path)),
            Redirect::Relative(status) => (status, format!("/_storage/{}?sig=abc", t.reference)),
        };
        return Response::builder()
            .status(status)
            .header("location", location)
            .body(Body::empty())
            .unwrap();
    }
    let mut b = Response::builder()
        .status(200)
        .header("content-type", content_type.unwrap_or_default())
        .header("docker-distribution-api-version", "registry/2.0");
    if matches!(t.route, Route::Manifest | Route::Blob) {
        let d = digest.unwrap_or_else(|| sha256_digest(&data));
        b = b.header("docker-content-digest", d);
    }
    if head {
        return b
            .header("content-length", data.len())
            .body(Body::empty())
            .unwrap();
    }
    let data = if q.corrupt {
        data.iter().map(|x| x ^ 0x5a).collect::<Vec<u8>>().into()
    } else {
        data
    };
    let (announced, data) = match q.length {
        None => (Some(data.len()), data),
        Some(Length::Short(n)) => {
            let short = data.len().saturating_sub(n);
            (Some(short), data.slice(..short))
        }
        Some(Length::Long(n)) => (Some(data.len() + n), data),
        Some(Length::Chunked) => (None, data),
    };
    if let Some(n) = announced {
        b = b.header("content-length", n);
    }
    b.body(body(st.clone(), data, q, flight)).unwrap()
}

/// A body paced by the receiver, shaped by the quirks: chunked and paused, delayed, cut.
fn body(st: Arc<State>, data: Bytes, q: &Quirks, flight: Flight) -> Body {
    let (chunk, pause) = q.chunks.unwrap_or((64 << 10, Duration::ZERO));
    let cut = q.cut;
    let body_delay = q.body_delay;
    let hold = q.hold_after;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        let mut flight = Some(flight);
        if let Some(d) = body_delay {
            tokio::time::sleep(d).await;
        }
        let limit = match cut {
            None => data.len(),
            Some((Some(n), _)) => n.min(data.len()),
            Some((None, _)) => data.len() / 2,
        };
        let mut off = 0;
        while off < limit {
            if hold == Some(off) {
                let _ = st.released.subscribe().wait_for(|open| *open).await;
            }
            let mut end = (off + chunk).min(limit);
            if let Some(h) = hold.filter(|&h| h > off) {
                end = end.min(h);
            }
            if end == data.len() {
                drop(flight.take());
            }
            if tx.send(Ok(data.slice(off..end))).await.is_err() {
                return;
            }
            off = end;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        match cut.map(|(_, end)| end) {
            Some(BodyEnd::Drop) => {
                let _ = tx
                    .send(Err(std::io::Error::other("fake: connection dropped")))
                    .await;
            }
            Some(BodyEnd::Stall) => tx.closed().await,
            Some(BodyEnd::Clean) => {}
            None => {
                st.bodies_done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Body::from_stream(stream)
}
