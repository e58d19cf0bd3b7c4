//! What the status page shows: the upstreams (their recent outcomes and rate-limit state) and the
//! last fills, kept in memory by the parts as they work, plus the totals the metrics catalogue
//! keeps ([`crate::metrics::status_totals`]). Served as HTML at `/` and as JSON at `/status.json` (`http::status_page`).
//!
//! Recording is cheap (one short lock, no allocation on the hot path beyond a fill's record) and
//! process-wide, so the parts need not be handed anything. Nothing here holds a repository name
//! or a credential: fills are known by digest, upstreams by their configured name and URL host.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::util::human_bytes;

/// An upstream's rate-limit state as the page shows it: limit, remaining, cooldown left. A
/// closure, so that this module depends on nothing it reports on.
pub type RateState = Arc<dyn Fn() -> (Option<u64>, Option<u64>, Option<Duration>) + Send + Sync>;

/// Fills remembered for the page.
pub const RECENT_FILLS: usize = 20;
/// Upstream outcomes a health judgement looks at.
const RECENT_OUTCOMES: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    RateLimited,
    Failed,
}

#[derive(Clone, Debug, Serialize)]
pub struct FillRecord {
    /// `sha256:` and the first 12 hex digits.
    pub digest: String,
    pub bytes: u64,
    pub duration_ms: u64,
    /// `done`, `refused` or `broken`.
    pub outcome: &'static str,
    /// Seconds since the Unix epoch when it ended.
    pub ended: u64,
}

struct UpstreamEntry {
    host: String,
    limits: Option<RateState>,
    outcomes: VecDeque<Outcome>,
}

#[derive(Default)]
struct Inner {
    fills: Mutex<VecDeque<FillRecord>>,
    upstreams: Mutex<BTreeMap<String, UpstreamEntry>>,
    /// The storage breaker's circuits (`read`, `write`) and their states.
    storage: Mutex<BTreeMap<&'static str, &'static str>>,
}

fn inner() -> &'static Inner {
    static INNER: OnceLock<Inner> = OnceLock::new();
    INNER.get_or_init(Inner::default)
}

/// `sha256:0123456789ab` from a full digest.
pub fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => d.chars().take(19).collect(),
    }
}

/// An upstream client exists: its name, its URL (only the host and port are kept) and its
/// rate-limit state.
pub fn register_upstream(name: &str, url: &url::Url, limits: RateState) {
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => String::new(),
    };
    let mut ups = inner().upstreams.lock().expect("lock");
    ups.insert(
        name.to_owned(),
        UpstreamEntry {
            host,
            limits: Some(limits),
            outcomes: VecDeque::new(),
        },
    );
}

/// One upstream request ended with `status` (an HTTP status, `timeout` or `error`; the mirror's
/// own refusals, such as `cooldown`, are not the upstream's health and are ignored).
pub fn upstream_outcome(name: &str, status: &str) {
    let outcome = match status {
        "timeout" | "error" => Outcome::Failed,
        "429" => Outcome::RateLimited,
        s => match s.parse::<u16>() {
            Ok(n) if n >= 500 => Outcome::Failed,
            Ok(_) => Outcome::Ok,
            Err(_) => return,
        },
    };
    let mut ups = inner().upstreams.lock().expect("lock");
    let Some(e) = ups.get_mut(name) else {
        return;
    };
    if e.outcomes.len() == RECENT_OUTCOMES {
        e.outcomes.pop_front();
    }
    e.outcomes.push_back(outcome);
}

/// A storage breaker circuit (`read`, `write`) is now `state` (`closed`, `half-open`, `open`).
pub fn storage_circuit(circuit: &'static str, state: &'static str) {
    inner().storage.lock().expect("lock").insert(circuit, state);
}

/// `ok` when no storage circuit is open (or there is no breaker), else what is open, e.g.
/// `read circuit open`: for `/readyz`'s detail and the page.
pub fn storage_health() -> String {
    let circuits = inner().storage.lock().expect("lock");
    let open: Vec<String> = circuits
        .iter()
        .filter(|(_, s)| **s != "closed")
        .map(|(c, s)| format!("{c} circuit {s}"))
        .collect();
    if open.is_empty() {
        "ok".into()
    } else {
        open.join(", ")
    }
}

/// A fill ended.
pub fn fill_ended(digest: &str, bytes: u64, took: Duration, outcome: &'static str) {
    let rec = FillRecord {
        digest: short_digest(digest),
        bytes,
        duration_ms: took.as_millis() as u64,
        outcome,
        ended: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let mut fills = inner().fills.lock().expect("lock");
    if fills.len() == RECENT_FILLS {
        fills.pop_front();
    }
    fills.push_back(rec);
}

/// `ok` (the last request succeeded and most recent ones did), `degraded` (some recent failures or
/// rate limiting), `down` (the last three failed), `unknown` (no request yet).
pub fn health(outcomes: &VecDeque<Outcome>) -> &'static str {
    if outcomes.is_empty() {
        return "unknown";
    }
    if outcomes.len() >= 3 && outcomes.iter().rev().take(3).all(|o| *o == Outcome::Failed) {
        return "down";
    }
    if outcomes.iter().all(|o| *o == Outcome::Ok) {
        "ok"
    } else {
        "degraded"
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub host: String,
    pub health: &'static str,
    pub recent_requests: usize,
    pub recent_failures: usize,
    pub ratelimit_remaining: Option<u64>,
    pub ratelimit_limit: Option<u64>,
    /// Seconds left in the manifest cooldown after a 429, when one is running.
    pub cooldown_seconds: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    pub upstreams: Vec<UpstreamStatus>,
    /// [`crate::metrics::STORAGE_BYTES`]: set by expiry passes; `None` until one has run.
    pub cache_bytes: Option<u64>,
    pub blob_hits: u64,
    pub blob_misses: u64,
    /// hits / (hits + misses); `None` before any blob request.
    pub hit_ratio: Option<f64>,
    pub requests_served: u64,
    pub bytes_served: u64,
    pub fills_in_flight: u64,
    pub stale_served: u64,
    /// `ok`, or the storage breaker's circuits that are not closed.
    pub storage: String,
    /// Manifests that passed / failed a `verify` rule as they were served (warn mode included).
    pub verify_passed: u64,
    pub verify_failed: u64,
    /// Newest first. Empty (and `fills_hidden`) when the page is restricted.
    pub recent_fills: Vec<FillRecord>,
    pub fills_hidden: bool,
}

/// Everything the page shows, the counters from the metrics catalogue's totals (so the page and
/// `/metrics` never disagree); `show_fills` is false when the mirror requires authentication,
/// and then upstream hosts are left out too.
pub fn snapshot(show_fills: bool) -> Snapshot {
    let totals = crate::metrics::status_totals();
    let upstreams = inner()
        .upstreams
        .lock()
        .expect("lock")
        .iter()
        .map(|(name, e)| {
            let (limit, remaining, cooling) =
                e.limits.as_ref().map(|l| l()).unwrap_or((None, None, None));
            UpstreamStatus {
                name: name.clone(),
                host: if show_fills {
                    e.host.clone()
                } else {
                    String::new()
                },
                health: health(&e.outcomes),
                recent_requests: e.outcomes.len(),
                recent_failures: e.outcomes.iter().filter(|o| **o != Outcome::Ok).count(),
                ratelimit_remaining: remaining,
                ratelimit_limit: limit,
                cooldown_seconds: cooling.map(|d| d.as_secs().max(1)),
            }
        })
        .collect();
    let (hits, misses) = (totals.blob_hits as f64, totals.blob_misses as f64);
    let recent_fills = if show_fills {
        inner()
            .fills
            .lock()
            .expect("lock")
            .iter()
            .rev()
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        upstreams,
        cache_bytes: totals.storage_bytes,
        blob_hits: hits as u64,
        blob_misses: misses as u64,
        hit_ratio: (hits + misses > 0.0).then(|| hits / (hits + misses)),
        requests_served: totals.requests,
        bytes_served: totals.response_bytes,
        fills_in_flight: totals.fills_in_flight,
        stale_served: totals.stale_served,
        storage: storage_health(),
        verify_passed: totals.verify_passed,
        verify_failed: totals.verify_failed,
        recent_fills,
        fills_hidden: !show_fills,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page: self-contained (inline CSS, no scripts or external assets), reloading itself every
/// 10 seconds.
pub fn render_html(s: &Snapshot) -> String {
    let mut ups = String::new();
    for u in &s.upstreams {
        let remaining = match (u.ratelimit_remaining, u.ratelimit_limit) {
            (Some(r), Some(l)) => format!("{r} / {l}"),
            (Some(r), None) => r.to_string(),
            _ => "not reported".into(),
        };
        let cooldown = match u.cooldown_seconds {
            Some(s) => format!("<span class=\"bad\">cooling down, {s} s left</span>"),
            None => "none".into(),
        };
        ups += &format!(
            "<tr><td>{}</td><td>{}</td><td><span class=\"pill {}\">{}</span></td><td>{} of {}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&u.name),
            esc(&u.host),
            u.health,
            u.health,
            u.recent_requests - u.recent_failures,
            u.recent_requests,
            remaining,
            cooldown
        );
    }
    let fills = if s.fills_hidden {
        "<p class=\"muted\">Hidden: this mirror requires authentication.</p>".to_owned()
    } else if s.recent_fills.is_empty() {
        "<p class=\"muted\">No blob fetched from an upstream yet.</p>".to_owned()
    } else {
        let mut rows = String::new();
        for f in &s.recent_fills {
            rows += &format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{} ms</td><td><span class=\"pill {}\">{}</span></td></tr>\n",
                esc(&f.digest),
                human_bytes(f.bytes),
                f.duration_ms,
                if f.outcome == "done" { "ok" } else { "down" },
                f.outcome
            );
        }
        format!(
            "<table><thead><tr><th>digest</th><th>size</th><th>took</th><th>outcome</th></tr></thead><tbody>\n{rows}</tbody></table>"
        )
    };
    let ratio = match s.hit_ratio {
        Some(r) => format!("{:.1}%", r * 100.0),
        None => "no blob requests yet".into(),
    };
    let cache = match s.cache_bytes {
        Some(b) => human_bytes(b),
        None => "<span class=\"note\">unknown until an expiry pass</span>".into(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="10">
<title>ocimirror status</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; background: #f4f6f8; color: #1d2630; }}
header {{ background: #1f4e79; color: #fff; padding: 14px 28px; }}
header h1 {{ margin: 0; font-size: 22px; }} header span {{ opacity: .8; font-size: 13px; }}
main {{ padding: 18px 28px; }}
.cards {{ display: flex; gap: 14px; flex-wrap: wrap; margin-bottom: 18px; }}
.card {{ background: #fff; border-radius: 8px; padding: 12px 18px; min-width: 170px;
  box-shadow: 0 1px 3px rgba(0,0,0,.12); }}
.card .v {{ font-size: 24px; font-weight: 600; color: #1f4e79; }}
.card .k {{ font-size: 12px; color: #5b6770; text-transform: uppercase; letter-spacing: .04em; }}
h2 {{ font-size: 16px; margin: 18px 0 8px; }}
table {{ border-collapse: collapse; background: #fff; width: 100%;
  box-shadow: 0 1px 3px rgba(0,0,0,.12); border-radius: 8px; overflow: hidden; }}
th, td {{ text-align: left; padding: 7px 12px; border-bottom: 1px solid #e6e9ec; font-size: 14px; }}
th {{ background: #e9eef3; font-weight: 600; }}
.pill {{ padding: 2px 9px; border-radius: 10px; font-size: 12px; color: #fff; background: #7a8791; }}
.pill.ok {{ background: #2e8540; }} .pill.degraded {{ background: #d08a00; }}
.pill.down {{ background: #c0392b; }} .bad {{ color: #c0392b; }} .muted {{ color: #5b6770; }}
.note {{ font-size: 15px; font-weight: 500; }}
</style></head>
<body><header><h1>ocimirror</h1><span>version {version} &middot; pull-through mirror status</span></header>
<main>
<div class="cards">
<div class="card"><div class="k">blob hit ratio</div><div class="v" id="hit-ratio">{ratio}</div><div class="k">{hits} hits, {misses} misses</div></div>
<div class="card"><div class="k">requests served</div><div class="v">{requests}</div><div class="k">{bytes} sent</div></div>
<div class="card"><div class="k">cache size</div><div class="v">{cache}</div></div>
<div class="card"><div class="k">fills in flight</div><div class="v">{inflight}</div><div class="k">{stale} stale serves</div></div>
<div class="card"><div class="k">storage</div><div class="v" id="storage">{storage}</div></div>
<div class="card"><div class="k">signatures verified</div><div class="v">{verified}</div><div class="k">{unverified} failed</div></div>
</div>
<h2>Upstreams</h2>
<table><thead><tr><th>name</th><th>host</th><th>health</th><th>recent requests ok</th><th>rate limit remaining</th><th>cooldown</th></tr></thead>
<tbody>
{ups}</tbody></table>
<h2>Recent fills</h2>
{fills}
<p class="muted">Also as JSON: <a href="status.json">status.json</a>; metrics: <a href="metrics">/metrics</a>.</p>
</main></body></html>
"#,
        version = esc(s.version),
        hits = s.blob_hits,
        misses = s.blob_misses,
        requests = s.requests_served,
        bytes = human_bytes(s.bytes_served),
        inflight = s.fills_in_flight,
        stale = s.stale_served,
        storage = esc(&s.storage),
        verified = s.verify_passed,
        unverified = s.verify_failed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_from_recent_outcomes() {
        use Outcome::*;
        let q = |v: &[Outcome]| v.iter().copied().collect::<VecDeque<_>>();
        assert_eq!(health(&q(&[])), "unknown");
        assert_eq!(health(&q(&[Ok, Ok])), "ok");
        assert_eq!(health(&q(&[Ok, Failed, Ok])), "degraded");
        assert_eq!(health(&q(&[RateLimited])), "degraded");
        assert_eq!(health(&q(&[Ok, Failed, Failed, Failed])), "down");
    }

    #[test]
    fn short_digests() {
        assert_eq!(
            short_digest("sha256:0123456789abcdef0123456789abcdef"),
            "sha256:0123456789ab"
        );
    }

    #[test]
    fn the_page_escapes_and_hides_fills_when_asked() {
        let mut s = snapshot(false);
        s.upstreams.push(UpstreamStatus {
            name: "<x>".into(),
            host: "h".into(),
            health: "ok",
            recent_requests: 1,
            recent_failures: 0,
            ratelimit_remaining: None,
            ratelimit_limit: None,
            cooldown_seconds: None,
        });
        let html = render_html(&s);
        assert!(html.contains("&lt;x&gt;") && !html.contains("<x>"));
        assert!(html.contains("Hidden"));
        assert!(html.contains("unknown until an expiry pass"));
    }
}
