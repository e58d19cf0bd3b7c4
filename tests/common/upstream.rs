//! [`FakeUpstream`]: the one in-process registry the tests script, for what a real registry
//! cannot do on demand (429s, hangs, bodies dropped, stalled or corrupted mid-way, wrong
//! lengths, redirects, odd headers and challenges). Every other test talks to a real
//! Distribution.
//!
//! It serves the content it is given (manifests by tag and digest, blobs, tag lists, referrers)
//! the way Distribution does, optionally behind the bearer-token flow, and records every request.
//! Misbehaviour is scripted with rules: `f.on(Route::Blob).get().cut(BodyEnd::Drop)` makes every
//! later blob GET break half-way; `f.clear()` heals it. All rules matching a request apply, in
//! the order they were added (a later one overrides what an earlier one set). A new quirk is a
//! field of [`Quirks`], a builder method on [`Rule`], and the lines of `upstream/serve.rs` that
//! act on it (`upstream/auth.rs` holds the challenge and the token endpoint).
//!
//! A second listener stands for another host (a CDN): blob redirects point there, and what it
//! receives is recorded apart ([`FakeUpstream::seen_cdn`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use bytes::Bytes;

use super::{Image, sha256_digest};

mod auth;
mod serve;

/// What a request asks for, by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `/v2/` (version check).
    Ping,
    /// The token endpoint, `/token`.
    Token,
    Manifest,
    Blob,
    Tags,
    Referrers,
    /// Anything else (answered 404).
    Other,
    /// A request to the second listener (the "CDN" host redirects point to).
    Cdn,
    /// `/_storage/<digest>` on the registry's own host, where relative redirects point (a
    /// signed URL: no auth asked).
    Storage,
}

impl Route {
    /// The routes of a repository's content: what the registry itself answers for a name.
    pub const REPO: [Route; 5] = [
        Route::Manifest,
        Route::Blob,
        Route::Tags,
        Route::Referrers,
        Route::Other,
    ];
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub route: Route,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub auth: Option<String>,
    pub range: Option<String>,
}

/// How a body ends when it is cut (see [`Rule::cut`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// The connection breaks (a body error).
    Drop,
    /// Nothing more is sent; the connection stays open.
    Stall,
    /// The body ends cleanly, short (meant with [`Length::Chunked`]).
    Clean,
}

/// What a response says its length is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// `Content-Length` this many bytes short, and only that many bytes: a clean, short answer.
    Short(usize),
    /// `Content-Length` this many bytes over; the whole body is sent, then the connection closes.
    Long(usize),
    /// No `Content-Length` (chunked).
    Chunked,
}

/// Where a redirect points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// To the CDN listener (another host), with a signed-URL style query, with this status.
    Cdn(u16),
    /// 307 to the very same URL, forever.
    Loop,
    /// A relative `Location` (`/_storage/<digest>?sig=…`, same host), with this status.
    Relative(u16),
}

/// Who may read, and how they prove it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// The bearer-token flow: the credentials the token endpoint accepts (Basic header or an
    /// OAuth2 password-grant POST).
    pub bearer: Option<(String, String)>,
    /// Repositories anyone may read: the token endpoint hands out anonymous tokens for them, and
    /// refuses an anonymous token for any other with 401 (as ghcr.io does for a private or
    /// misspelt name).
    pub public: Vec<String>,
    /// Basic auth at the registry itself (as ECR does): the credentials it accepts.
    pub basic: Option<(String, String)>,
    /// `WWW-Authenticate` values sent instead of the default challenge, one header each;
    /// `{realm}` becomes the token endpoint's URL and `{scope}` the repository scope.
    pub challenges: Vec<String>,
    /// The token endpoint's answer, `{token}` standing for the token (default: `token`,
    /// `access_token` and `expires_in: 300`).
    pub token_json: Option<String>,
}

impl Auth {
    pub fn bearer(user: &str, password: &str) -> Auth {
        Auth {
            bearer: Some((user.to_string(), password.to_string())),
            ..Auth::default()
        }
    }

    pub fn basic(user: &str, password: &str) -> Auth {
        Auth {
            basic: Some((user.to_string(), password.to_string())),
            ..Auth::default()
        }
    }

    /// Anonymous pulls of `public` only, through the token flow.
    pub fn public(public: &[&str]) -> Auth {
        Auth {
            public: public.iter().map(|s| s.to_string()).collect(),
            ..Auth::default()
        }
    }

    fn bearer_flow(&self) -> bool {
        self.bearer.is_some() || !self.public.is_empty()
    }
}

/// Every quirk a rule can set. Fields left at their default change nothing.
#[derive(Clone, Debug, Default)]
pub struct Quirks {
    /// Answer this status with an OCI error of this code instead of the content.
    pub reply: Option<(u16, String)>,
    /// Wait this long before the response head.
    pub delay: Option<Duration>,
    /// Never answer.
    pub hang: bool,
    pub redirect: Option<Redirect>,
    /// Headers set on the answer (replacing one of the same name); `None` removes it.
    pub headers: Vec<(String, Option<String>)>,
    /// Right length, wrong bytes.
    pub corrupt: bool,
    pub length: Option<Length>,
    /// Stop the body after this many bytes (`None`: half of it), ending it so.
    pub cut: Option<(Option<usize>, BodyEnd)>,
    /// Send the body in chunks of this size with this pause after each.
    pub chunks: Option<(usize, Duration)>,
    /// Send the head at once and the first body byte this much later.
    pub body_delay: Option<Duration>,
    /// Send this many bytes of the body, then wait for [`FakeUpstream::release`].
    pub hold_after: Option<usize>,
}

impl Quirks {
    /// `later` on top of `self`.
    fn merge(&mut self, later: &Quirks) {
        let Quirks {
            reply,
            delay,
            hang,
            redirect,
            headers,
            corrupt,
            length,
            cut,
            chunks,
            body_delay,
            hold_after,
        } = later.clone();
        self.reply = reply.or(self.reply.take());
        self.delay = delay.or(self.delay);
        self.hang |= hang;
        self.redirect = redirect.or(self.redirect);
        for (k, v) in headers {
            self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&k));
            self.headers.push((k, v));
        }
        self.corrupt |= corrupt;
        self.length = length.or(self.length);
        self.cut = cut.or(self.cut);
        self.chunks = chunks.or(self.chunks);
        self.body_delay = body_delay.or(self.body_delay);
        self.hold_after = hold_after.or(self.hold_after);
    }
}

/// Which requests a rule applies to.
#[derive(Clone, Debug, Default)]
struct When {
    routes: Vec<Route>,
    method: Option<String>,
    path_contains: Option<String>,
}

impl When {
    fn matches(&self, route: Route, method: &str, path: &str) -> bool {
        self.routes.contains(&route)
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|s| path.contains(s))
    }
}

#[derive(Debug)]
struct RuleSpec {
    id: usize,
    when: When,
    quirks: Quirks,
    /// How many more requests it applies to (`None`: all).
    left: Option<usize>,
}

/// In-flight request counts of one route: now and the most ever.
#[derive(Default)]
struct Flights {
    now: usize,
    max: usize,
}

struct State {
    port: u16,
    cdn_port: u16,
    auth: Mutex<Auth>,
    token: Mutex<String>,
    manifests: Mutex<HashMap<(String, String), Served>>,
    blobs: Mutex<HashMap<String, Bytes>>,
    referrers: Mutex<HashMap<(String, String), Bytes>>,
    rules: Mutex<Vec<RuleSpec>>,
    next_rule: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    seen_cdn: Mutex<Vec<Seen>>,
    token_requests: AtomicUsize,
    bodies_done: AtomicUsize,
    flights: Mutex<HashMap<Route, Flights>>,
    /// Opened by [`FakeUpstream::release`]: bodies held by `hold_after` go on.
    released: tokio::sync::watch::Sender<bool>,
}

/// A manifest as served: media type, bytes, and the digest announced for them.
type Served = (String, Bytes, String);

/// Options of a fake upstream.
#[derive(Clone, Debug, Default)]
pub struct FakeOpts {
    /// Listen on this port (0: any free one).
    pub port: u16,
    pub auth: Auth,
}

/// The scriptable fake upstream registry (see the module documentation). Its listeners live as
/// long as the test's runtime.
#[derive(Clone)]
pub struct FakeUpstream {
    st: Arc<State>,
}

impl FakeUpstream {
    /// An open registry on any free port.
    pub async fn start() -> FakeUpstream {
        Self::start_with(FakeOpts::default()).await
    }

    /// A registry on any free port, behind `auth`.
    pub async fn start_behind(auth: Auth) -> FakeUpstream {
        Self::start_with(FakeOpts {
            auth,
            ..FakeOpts::default()
        })
        .await
    }

    pub async fn start_with(opts: FakeOpts) -> FakeUpstream {
        let l1 = tokio::net::TcpListener::bind(("127.0.0.1", opts.port))
            .await
            .unwrap();
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let st = Arc::new(State {
            port: l1.local_addr().unwrap().port(),
            cdn_port: l2.local_addr().unwrap().port(),
            auth: Mutex::new(opts.auth),
            token: Mutex::new("tok-0123456789abcdef".to_string()),
            manifests: Mutex::default(),
            blobs: Mutex::default(),
            referrers: Mutex::default(),
            rules: Mutex::default(),
            next_rule: AtomicUsize::new(0),
            seen: Mutex::default(),
            seen_cdn: Mutex::default(),
            token_requests: AtomicUsize::new(0),
            bodies_done: AtomicUsize::new(0),
            flights: Mutex::default(),
            released: tokio::sync::watch::Sender::new(false),
        });
        let s1 = st.clone();
        let registry = Router::new().fallback(move |req: Request| {
            let st = s1.clone();
            async move { serve::registry(st, req).await }
        });
        let s2 = st.clone();
        let cdn = Router::new().fallback(move |req: Request| {
            let st = s2.clone();
            async move { serve::cdn(st, req).await }
        });
        tokio::spawn(async move { axum::serve(l1, registry).await.unwrap() });
        tokio::spawn(async move { axum::serve(l2, cdn).await.unwrap() });
        FakeUpstream { st }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.st.port)
    }

    pub fn hostport(&self) -> String {
        format!("127.0.0.1:{}", self.st.port)
    }

    pub fn cdn_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.st.cdn_port)
    }

    // ----- content -----------------------------------------------------------------------------

    /// Serve `bytes` as `name:reference`; a tag is also served by the bytes' digest, as a real
    /// registry would (a mirror may resolve a tag with HEAD, then GET by digest).
    pub fn add_manifest(&self, name: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        self.add_manifest_as(name, reference, media_type, bytes, &sha256_digest(bytes));
    }

    /// Serve `bytes` as `name:reference` and `name@digest`, announcing `digest` (which for a
    /// signed schema 1 manifest is not the digest of its bytes).
    pub fn add_manifest_as(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        digest: &str,
    ) {
        let mut m = self.st.manifests.lock().unwrap();
        let v = (
            media_type.to_string(),
            Bytes::copy_from_slice(bytes),
            digest.to_string(),
        );
        m.insert((name.to_string(), digest.to_string()), v.clone());
        m.insert((name.to_string(), reference.to_string()), v);
    }

    pub fn add_blob(&self, data: Bytes) -> String {
        let digest = sha256_digest(&data);
        self.st.blobs.lock().unwrap().insert(digest.clone(), data);
        digest
    }

    /// Serve `img` as `name:tag` (and by digest); returns it named so.
    pub fn add_image(&self, name: &str, tag: &str, img: &Image) -> Image {
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

    /// Answer the referrers API for `subject` under `name` with this index (without it, the API
    /// answers 404, as on a registry that lacks it).
    pub fn add_referrers(&self, name: &str, subject: &str, index: &[u8]) {
        self.st.referrers.lock().unwrap().insert(
            (name.to_string(), subject.to_string()),
            Bytes::copy_from_slice(index),
        );
    }

    /// From now on, `auth`. New credentials (a rotated password) also revoke every token
    /// handed out so far.
    pub fn set_auth(&self, auth: Auth) {
        let mut current = self.st.auth.lock().unwrap();
        if (&current.bearer, &current.basic) != (&auth.bearer, &auth.basic) {
            let n = self.st.next_rule.fetch_add(1, Ordering::SeqCst);
            *self.st.token.lock().unwrap() = format!("tok-rotated-{n}");
        }
        *current = auth;
    }

    /// The bearer token the token endpoint hands out.
    pub fn token(&self) -> String {
        self.st.token.lock().unwrap().clone()
    }

    // ----- script ------------------------------------------------------------------------------

    /// A new rule for requests to `route` (refine it with [`Rule`]'s methods).
    pub fn on(&self, route: Route) -> Rule<'_> {
        self.on_routes(&[route])
    }

    /// A new rule for every route of a repository's content ([`Route::REPO`]).
    pub fn on_repo(&self) -> Rule<'_> {
        self.on_routes(&Route::REPO)
    }

    pub fn on_routes(&self, routes: &[Route]) -> Rule<'_> {
        let id = self.st.next_rule.fetch_add(1, Ordering::SeqCst);
        self.st.rules.lock().unwrap().push(RuleSpec {
            id,
            when: When {
                routes: routes.to_vec(),
                ..When::default()
            },
            quirks: Quirks::default(),
            left: None,
        });
        Rule { f: self, id }
    }

    /// Let every body held by a `hold_after` rule go on (now and from now on).
    pub fn release(&self) {
        self.st.released.send_replace(true);
    }

    /// Remove every rule: the fake behaves again.
    pub fn clear(&self) {
        self.st.rules.lock().unwrap().clear();
    }

    // ----- what it saw -------------------------------------------------------------------------

    /// Every request the registry listener received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.st.seen.lock().unwrap().clone()
    }

    /// Every request the CDN listener received, in order.
    pub fn seen_cdn(&self) -> Vec<Seen> {
        self.st.seen_cdn.lock().unwrap().clone()
    }

    /// Requests the registry listener received with `method` (empty = any) and a path
    /// containing `sub`.
    pub fn count(&self, method: &str, sub: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| (method.is_empty() || s.method == method) && s.path.contains(sub))
            .count()
    }

    /// Requests to `route` with `method` (empty = any).
    pub fn count_route(&self, route: Route, method: &str) -> usize {
        let seen = match route {
            Route::Cdn => self.seen_cdn(),
            _ => self.seen(),
        };
        seen.iter()
            .filter(|s| s.route == route && (method.is_empty() || s.method == method))
            .count()
    }

    /// Requests to the token endpoint.
    pub fn tokens(&self) -> usize {
        self.st.token_requests.load(Ordering::SeqCst)
    }

    /// Bodies handed over whole to the server (all but the last byte may still be on the way).
    pub fn bodies_done(&self) -> usize {
        self.st.bodies_done.load(Ordering::SeqCst)
    }

    /// The most requests to `route` ever in flight at once (a request leaves when the last
    /// bytes of its body are handed over, before the client can have them).
    pub fn max_in_flight(&self, route: Route) -> usize {
        self.st
            .flights
            .lock()
            .unwrap()
            .get(&route)
            .map_or(0, |f| f.max)
    }

    /// Wait (up to 20 s) until `cond` holds of the fake; panics naming `what` otherwise.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&FakeUpstream) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "fake upstream: {what} did not happen within 20 s; saw {:?}",
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A rule being scripted: each method refines it in place and hands it back.
pub struct Rule<'a> {
    f: &'a FakeUpstream,
    id: usize,
}

impl Rule<'_> {
    fn edit(self, e: impl FnOnce(&mut RuleSpec)) -> Self {
        {
            let mut rules = self.f.st.rules.lock().unwrap();
            let r = rules
                .iter_mut()
                .find(|r| r.id == self.id)
                .expect("rule still there");
            e(r);
        }
        self
    }

    // Which requests.

    pub fn method(self, m: &str) -> Self {
        let m = m.to_string();
        self.edit(|r| r.when.method = Some(m))
    }
    pub fn get(self) -> Self {
        self.method("GET")
    }
    pub fn head(self) -> Self {
        self.method("HEAD")
    }
    pub fn path_contains(self, s: &str) -> Self {
        let s = s.to_string();
        self.edit(|r| r.when.path_contains = Some(s))
    }
    /// Only the next `n` matching requests.
    pub fn times(self, n: usize) -> Self {
        self.edit(|r| r.left = Some(n))
    }

    // What happens.

    /// Answer `status` with an OCI error body of `code`.
    pub fn reply(self, status: u16, code: &str) -> Self {
        let code = code.to_string();
        self.edit(|r| r.quirks.reply = Some((status, code)))
    }
    pub fn header(self, name: &str, value: &str) -> Self {
        let (n, v) = (name.to_string(), value.to_string());
        self.edit(|r| r.quirks.headers.push((n, Some(v))))
    }
    pub fn without_header(self, name: &str) -> Self {
        let n = name.to_string();
        self.edit(|r| r.quirks.headers.push((n, None)))
    }
    pub fn delay(self, d: Duration) -> Self {
        self.edit(|r| r.quirks.delay = Some(d))
    }
    pub fn hang(self) -> Self {
        self.edit(|r| r.quirks.hang = true)
    }
    pub fn redirect(self, to: Redirect) -> Self {
        self.edit(|r| r.quirks.redirect = Some(to))
    }
    pub fn corrupt(self) -> Self {
        self.edit(|r| r.quirks.corrupt = true)
    }
    pub fn length(self, l: Length) -> Self {
        self.edit(|r| r.quirks.length = Some(l))
    }
    /// Stop the body half-way, ending it so.
    pub fn cut(self, end: BodyEnd) -> Self {
        self.edit(|r| r.quirks.cut = Some((None, end)))
    }
    /// Stop the body after `bytes`, ending it so.
    pub fn cut_after(self, bytes: usize, end: BodyEnd) -> Self {
        self.edit(|r| r.quirks.cut = Some((Some(bytes), end)))
    }
    /// Send the body `chunk` bytes at a time with `pause` after each.
    pub fn chunks(self, chunk: usize, pause: Duration) -> Self {
        self.edit(|r| r.quirks.chunks = Some((chunk.max(1), pause)))
    }
    /// About `bytes_per_second`, in ten chunks a second.
    pub fn throttle(self, bytes_per_second: usize) -> Self {
        self.chunks(bytes_per_second / 10, Duration::from_millis(100))
    }
    pub fn body_delay(self, d: Duration) -> Self {
        self.edit(|r| r.quirks.body_delay = Some(d))
    }
    /// Send `bytes` of the body, then nothing more until [`FakeUpstream::release`]: a fill
    /// that is certainly still in flight while the test looks. A token answer is held whole.
    pub fn hold_after(self, bytes: usize) -> Self {
        self.edit(|r| r.quirks.hold_after = Some(bytes))
    }
    /// Take the rule away.
    pub fn remove(self) {
        self.f.st.rules.lock().unwrap().retain(|r| r.id != self.id);
    }
}
