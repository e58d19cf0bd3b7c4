//! Observability: the metrics move as a pull says they should and never name a repository or a
//! digest; the Grafana dashboard uses only metrics the mirror exports; the status page at `/`
//! (and `/status.json`) shows the upstreams, the hit ratio and the last fills, rendered by a real
//! headless Chromium.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const REPO: &str = "team/secret-app";

/// Pull `img` (tag, then every blob) through the mirror; returns the blob bytes received.
async fn pull(m: &Mirror, img: &Image) -> u64 {
    let r = m.get_manifest(REPO, "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), img.manifest.as_slice());
    let mut total = 0;
    for d in img.all_blobs() {
        let r = m.get_blob(REPO, &d.digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let (n, digest) = stream_hash(r).await.expect("whole blob");
        assert_eq!((n, digest.as_str()), (d.size, d.digest.as_str()));
        total += n;
    }
    total
}

async fn setup() -> (Registry, Image) {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image(REPO, "v1", 51).await;
    (reg, img)
}

/// Label blocks of every sample: none may carry a repository name or any part of a digest.
fn assert_no_private_labels(text: &str, img: &Image) {
    let mut secrets: Vec<String> = vec![REPO.into(), "secret-app".into(), "sha256".into()];
    secrets.push(hex_of(&img.digest)[..12].to_owned());
    for d in img.all_blobs() {
        secrets.push(hex_of(&d.digest)[..12].to_owned());
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let (Some(a), Some(b)) = (line.find('{'), line.rfind('}')) {
            let labels = &line[a..b];
            for s in &secrets {
                assert!(!labels.contains(s.as_str()), "{s} in a label: {line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_pull() {
    let (reg, img) = setup().await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let blob_bytes: u64 = img.all_blobs().iter().map(|d| d.size).sum();
    let manifest_bytes = img.manifest.len() as f64;
    let n_blobs = img.all_blobs().len() as f64;

    assert_eq!(pull(&m, &img).await, blob_bytes);
    let t = m.metrics().await;
    let sent = |t: &str, ep: &str| {
        metric_sum(
            t,
            "ocimirror_http_response_bytes_total",
            &[&format!("endpoint=\"{ep}\"")],
        )
    };
    // Bytes served: exactly the bodies the client received.
    assert_eq!(sent(&t, "blob"), blob_bytes as f64);
    assert_eq!(sent(&t, "manifest"), manifest_bytes);
    // Bytes fetched, by upstream: each blob and the manifest once.
    assert_eq!(
        metric_sum(
            &t,
            "ocimirror_upstream_bytes_total",
            &["upstream=\"default\""]
        ),
        blob_bytes as f64 + manifest_bytes
    );
    assert_eq!(
        metric_sum(&t, "ocimirror_cache_misses_total", &["kind=\"blob\""]),
        n_blobs
    );
    assert_eq!(
        metric_sum(&t, "ocimirror_cache_hits_total", &["kind=\"blob\""]),
        0.0
    );
    assert_eq!(
        metric_sum(&t, "ocimirror_fills_started_total", &[]),
        n_blobs
    );
    assert!(
        metric_sum(
            &t,
            "ocimirror_upstream_requests_total",
            &["upstream=\"default\"", "op=\"blob_get\"", "status=\"200\""]
        ) >= n_blobs
    );
    assert_eq!(
        metric_sum(
            &t,
            "ocimirror_http_requests_total",
            &["endpoint=\"blob\"", "status=\"200\""]
        ),
        n_blobs
    );
    assert_eq!(metric_sum(&t, "ocimirror_storage_errors_total", &[]), 0.0);

    // Again: all hits, nothing more from the upstream, twice the bytes served.
    wait_for_fills(&m).await;
    assert_eq!(pull(&m, &img).await, blob_bytes);
    let t2 = m.metrics().await;
    assert_eq!(sent(&t2, "blob"), 2.0 * blob_bytes as f64);
    assert_eq!(
        metric_sum(&t2, "ocimirror_cache_hits_total", &["kind=\"blob\""]),
        n_blobs
    );
    assert_eq!(
        metric_sum(&t2, "ocimirror_upstream_bytes_total", &[]),
        blob_bytes as f64 + manifest_bytes
    );
    // A range counts the bytes of the range only.
    let layer = img.biggest_layer();
    let r = m
        .get_blob(REPO, &layer.digest)
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.unwrap().len(), 100);
    let t3 = m.metrics().await;
    assert_eq!(sent(&t3, "blob"), 2.0 * blob_bytes as f64 + 100.0);
    assert_no_private_labels(&t3, &img);
}

async fn wait_for_fills(m: &Mirror) {
    for _ in 0..200 {
        if m.metric("ocimirror_fills_in_flight", &[]).await == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fills did not finish");
}

/// Storage that fails (a file where the blob directory should be) is counted by operation, and
/// the pull still succeeds from the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_errors_are_counted_by_operation() {
    let (reg, img) = setup().await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let v2 = m.storage_root().join("docker/registry/v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("blobs"), b"not a directory").unwrap();
    let r = m.get_manifest(REPO, "v1").send().await.unwrap();
    let status = r.status().as_u16();
    let t = m.metrics().await;
    assert!(
        metric_sum(&t, "ocimirror_storage_errors_total", &[]) >= 1.0,
        "status {status}; metrics:\n{t}"
    );
    assert_no_private_labels(&t, &img);
}

/// Every `ocimirror_*` name in `text` (metric names of samples and `# TYPE` lines).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.strip_prefix("# TYPE ").unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.starts_with("ocimirror_") {
            names.insert(name);
        }
    }
    names
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The dashboard cannot drift: every metric name in any of its strings (queries, variables) is
/// one a running mirror exports. Live mirrors are made to export the event-driven metrics too: a
/// pull, an expiry pass, a stale serve with the upstream stopped, a storage failure. Those only a
/// real Docker Hub (rate-limit headers) or a failing Redis produce must at least be registered by
/// name in the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_uses_only_exported_metrics() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/ocimirror-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut all = Vec::new();
    strings(&dash, &mut all);
    let re = regex::Regex::new(r"ocimirror_[a-z0-9_]+").unwrap();
    let used: BTreeSet<String> = all
        .iter()
        .flat_map(|s| re.find_iter(s).map(|m| m.as_str().to_owned()))
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    let exprs = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .count();
    assert!(exprs >= 12);

    let (mut reg, img) = setup().await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("0s")
            .short_timeouts()
            .extra("expiry:\n  max_age: 30d\n  interval: 1s\n  min_idle: 1s\n"),
    )
    .await;
    pull(&m, &img).await;
    wait_for_fills(&m).await;
    // A second request joins nothing but counts a hit.
    pull(&m, &img).await;
    for _ in 0..100 {
        if m.metric("ocimirror_expiry_passes_total", &[]).await >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reg.stop();
    let r = m.get_manifest(REPO, "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "stale");
    let broken = Mirror::start(MirrorOpts::upstream(&closed_url())).await;
    let v2 = broken.storage_root().join("docker/registry/v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("repositories"), b"x").unwrap();
    let _ = broken.get_manifest(REPO, "v1").send().await.unwrap();

    let (text, broken_text) = (m.metrics().await, broken.metrics().await);
    assert_matches_catalogue(&text);
    assert_matches_catalogue(&broken_text);
    let mut live = exported_names(&text);
    live.extend(exported_names(&broken_text));
    for base in live.clone() {
        for suffix in ["_bucket", "_sum", "_count"] {
            live.insert(format!("{base}{suffix}"));
        }
    }
    let src = source_metric_names();
    let mut only_in_source = Vec::new();
    for name in &used {
        if live.contains(name) {
            continue;
        }
        assert!(
            src.contains(name),
            "the dashboard uses {name}, which the mirror does not export; exported: {live:?}"
        );
        only_in_source.push(name.clone());
    }
    // Each with the reason these runs cannot produce it; any other must be seen live.
    let event_only = [
        "ocimirror_cache_errors_total",           // a failing Redis
        "ocimirror_upstream_cooldowns_total",     // a 429 from the upstream
        "ocimirror_upstream_ratelimit_limit",     // Docker Hub's quota headers
        "ocimirror_upstream_ratelimit_remaining", // Docker Hub's quota headers
        "ocimirror_fill_joins_total",             // concurrent requests for one blob
        "ocimirror_fills_failed_total",           // a blob body that breaks mid-stream
    ];
    for name in &only_in_source {
        assert!(
            event_only.contains(&name.as_str()),
            "{name} must be exported by a plain pull, an expiry pass, a stale serve or a storage failure"
        );
    }
}

/// The families of the metrics catalogue (`src/metrics.rs`), which every emitter names.
fn source_metric_names() -> BTreeSet<String> {
    ocimirror::metrics::FAMILIES
        .iter()
        .map(|f| f.name.to_owned())
        .collect()
}

/// Every `ocimirror_*` family is declared once, in the catalogue: no `counter!`, `gauge!` or
/// `histogram!` in the source names one by a string of its own.
#[test]
fn emitters_name_families_only_through_the_catalogue() {
    let re = regex::Regex::new(r#"(?:counter|gauge|histogram)!\(\s*"ocimirror_"#).unwrap();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    let mut literal = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                if re.is_match(&text) {
                    literal.push(p.display().to_string());
                }
            }
        }
    }
    assert!(
        literal.is_empty(),
        "metric names outside the catalogue in {literal:?}"
    );
}

/// What a live mirror exports is what the catalogue declares: every family it exports is in the
/// catalogue with its help text, and every series carries only the catalogue's labels for it.
fn assert_matches_catalogue(text: &str) {
    use ocimirror::metrics::family;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ocimirror_") {
            let name = format!("ocimirror_{}", rest.split(' ').next().unwrap());
            let f = family(&name).unwrap_or_else(|| panic!("{name} is not in the catalogue"));
            assert!(line.ends_with(f.help), "{line}");
            continue;
        }
        if line.starts_with('#') || !line.starts_with("ocimirror_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| family(b).is_some()))
            .unwrap_or(&name);
        let f = family(base).unwrap_or_else(|| panic!("{base} is not in the catalogue: {line}"));
        assert!(
            text.contains(&format!("# HELP {base} ")),
            "{base} exported without its help text"
        );
        if let (Some(a), Some(b)) = (line.find('{'), line.rfind('}')) {
            for pair in line[a + 1..b].split("\",") {
                let label = pair.split('=').next().unwrap().trim_start_matches(',');
                if label.is_empty() || label == "le" {
                    continue;
                }
                assert!(
                    f.labels.contains(&label),
                    "{base} has label {label}, not among {:?}: {line}",
                    f.labels
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_and_switch() {
    let (reg, img) = setup().await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull(&m, &img).await;
    wait_for_fills(&m).await;
    let r = m.get("/status.json").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("secret-app"), "{text}");
    let s: Value = serde_json::from_str(&text).unwrap();
    let up = &s["upstreams"][0];
    assert_eq!(up["name"], "default");
    assert_eq!(up["host"], reg.hostport());
    assert_eq!(up["health"], "ok");
    assert_eq!(s["blob_misses"], img.all_blobs().len() as u64);
    assert_eq!(s["hit_ratio"], 0.0);
    assert!(s["cache_bytes"].is_null(), "no expiry pass has run");
    let fills = s["recent_fills"].as_array().unwrap();
    assert_eq!(fills.len(), img.all_blobs().len());
    let layer = img.biggest_layer();
    let short = format!("sha256:{}", &hex_of(&layer.digest)[..12]);
    let f = fills
        .iter()
        .find(|f| f["digest"] == short.as_str())
        .unwrap();
    assert_eq!(f["bytes"], layer.size);
    assert_eq!(f["outcome"], "done");

    let off =
        Mirror::start(MirrorOpts::upstream(&reg.url()).extra("server:\n  status_page: false\n"))
            .await;
    assert_eq!(off.get("/").send().await.unwrap().status().as_u16(), 404);
    assert_eq!(
        off.get("/status.json")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser"].into_iter().find_map(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| c.to_owned())
    })
}

fn run_chromium(bin: &str, profile: &Path, extra: &[&str], url: &str) -> std::process::Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .env("HOME", profile);
    let out = cmd.output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let bin = chromium();
    if !tool_or_skip(bin.is_some(), "chromium", "apt-get install chromium") {
        return;
    }
    let bin = bin.unwrap();
    let (reg, img) = setup().await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull(&m, &img).await;
    wait_for_fills(&m).await;
    // One more blob request, a hit: the ratio is 1 of n+1.
    let layer = img.biggest_layer();
    let r = m.get_blob(REPO, &layer.digest).send().await.unwrap();
    r.bytes().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/", m.url());
    let out = run_chromium(&bin, &dir.path().join("p1"), &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<td>default</td>"), "{dom}");
    assert!(dom.contains(&reg.hostport()), "{dom}");
    let short = format!("sha256:{}", &hex_of(&layer.digest)[..12]);
    assert!(dom.contains(&short), "{dom}");
    let n = img.all_blobs().len() as f64;
    let ratio = format!("{:.1}%", 100.0 / (n + 1.0));
    assert!(
        dom.contains(&format!("id=\"hit-ratio\">{ratio}<")),
        "{ratio} in {dom}"
    );
    assert!(!dom.contains("secret-app"));

    let png = dir.path().join("status.png");
    run_chromium(
        &bin,
        &dir.path().join("p2"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,900",
        ],
        &url,
    );
    if let Ok(keep) = std::env::var("OCIMIRROR_KEEP_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1200, 900));
    let channels = info.color_type.samples();
    let colours: BTreeSet<&[u8]> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|px| &px[..3.min(channels)])
        .collect();
    assert!(
        colours.len() >= 8,
        "the screenshot looks blank: {} colours",
        colours.len()
    );
}
