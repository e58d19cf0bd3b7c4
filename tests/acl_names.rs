//! Access is decided on the repository the mirror serves (issue 18): with Docker Hub's
//! `library/` mapping on, `small` and `library/small` are one repository, so a rule naming
//! either form holds for both, at the token endpoint and at the `/v2` gate; with it off they are
//! two. Each case below was a bypass (or a refusal of what a rule allows) when the ACL was
//! evaluated on the name as the client wrote it.

mod common;

use std::process::{Command, Stdio};

use common::*;
use data_encoding::BASE64URL_NOPAD;
use serde_json::Value;

const SERVICE: &str = "ocimirror";

/// An `auth:` section with only the anonymous user and `rules` (YAML list items, indented by 4).
fn auth_yaml(keys: &TokenKeys, rules: &str) -> String {
    format!(
        "auth:\n  key: {}\n  certificate: {}\n  users:\n    \"\": {{}}\n  acl:\n{rules}",
        q(&keys.key.display().to_string()),
        q(&keys.cert.display().to_string()),
    )
}

/// The `access` claim of an anonymous token for `repository:<name>:pull`: what was granted.
async fn granted(base: &str, name: &str) -> (String, Vec<Value>) {
    let scope = format!("repository:{name}:pull");
    let url = url::Url::parse_with_params(
        &format!("{base}/auth"),
        &[("service", SERVICE), ("scope", scope.as_str())],
    )
    .unwrap();
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "token for {scope}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    let claims: Value = serde_json::from_slice(
        &BASE64URL_NOPAD
            .decode(token.split('.').nth(1).unwrap().as_bytes())
            .unwrap(),
    )
    .unwrap();
    let access = match &claims["access"] {
        Value::Array(a) => a.clone(),
        _ => Vec::new(),
    };
    (token, access)
}

async fn may_pull(base: &str, name: &str) -> bool {
    let (_, access) = granted(base, name).await;
    match access.as_slice() {
        [] => false,
        // The claim names the repository as the client asked for it.
        [one] => {
            assert_eq!(one["name"], name, "access claim renamed the repository");
            true
        }
        other => panic!("{other:?}"),
    }
}

async fn status_with(m: &Mirror, path: &str, token: &str) -> u16 {
    m.get(path)
        .bearer_auth(token)
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const DENY_OFFICIAL: &str = "    - match: {account: \"\", name: \"library/*\"}\n      actions: []\n    - match: {account: \"\"}\n      actions: [pull]\n";

/// The case: a rule on `library/*` holds for the short name too, at the token endpoint
/// and at the gate, and through every other spelling of the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_library_names_holds_for_the_short_name() {
    let keys = TokenKeys::generate();
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg
        .pusher()
        .push_image(
            "library/small",
            "v1",
            &build_image(Kind::Oci, 9100, &[2 << 10], "amd64", "linux"),
        )
        .await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .up("library_prefix", "always")
            .extra(&auth_yaml(&keys, DENY_OFFICIAL)),
    )
    .await;
    let base = m.url();
    assert!(!may_pull(&base, "library/small").await);
    assert!(
        !may_pull(&base, "small").await,
        "the short name stepped around library/*"
    );
    assert!(may_pull(&base, "myorg/app").await);
    let (token, _) = granted(&base, "small").await;
    for path in [
        "/v2/small/manifests/v1".to_owned(),
        "/v2/library/small/manifests/v1".to_owned(),
        format!("/v2/small/manifests/{}", img.digest),
        format!("/v2/small/blobs/{}", img.config.digest),
        "/v2/small/tags/list".to_owned(),
        format!("/v2/small/referrers/{}", img.digest),
        // The default upstream named by containerd's `ns`.
        "/v2/small/manifests/v1?ns=docker.io".to_owned(),
        format!("/v2/small/manifests/v1?ns={}", reg.hostport()),
        // Other spellings of the path.
        "/v2/small/manifests/v1/".to_owned(),
        "/v2/library%2Fsmall/manifests/v1".to_owned(),
        "/v2/library%2fsmall/manifests/v1".to_owned(),
        "/v2//small/manifests/v1".to_owned(),
        "/v2/./small/manifests/v1".to_owned(),
    ] {
        let s = status_with(&m, &path, &token).await;
        assert!(s == 403 || s == 404 || s == 400, "{path}: {s}");
    }
    assert_eq!(reg.count_requests("GET", "/v2/library/small/").await, 0);
}

/// The mirror image: a rule allowing only `library/*` allows the short name, and a token for
/// either name opens the repository under both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_allowing_library_names_allows_the_short_name() {
    let keys = TokenKeys::generate();
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg
        .pusher()
        .push_image(
            "library/small",
            "v1",
            &build_image(Kind::Oci, 9101, &[2 << 10], "amd64", "linux"),
        )
        .await;
    let rules = "    - match: {account: \"\", name: \"library/*\"}\n      actions: [pull]\n";
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .up("library_prefix", "always")
            .extra(&auth_yaml(&keys, rules)),
    )
    .await;
    let base = m.url();
    assert!(may_pull(&base, "small").await);
    assert!(may_pull(&base, "library/small").await);
    assert!(!may_pull(&base, "myorg/app").await);
    for name in ["small", "library/small"] {
        let (token, _) = granted(&base, name).await;
        for path in ["/v2/small/manifests/v1", "/v2/library/small/manifests/v1"] {
            assert_eq!(status_with(&m, path, &token).await, 200, "{name} → {path}");
        }
    }
    let (token, _) = granted(&base, "small").await;
    let path = format!("/v2/small/blobs/{}", img.config.digest);
    assert_eq!(status_with(&m, &path, &token).await, 200);
}

/// A rule naming the short form (`small`) covers `library/small`: both names are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_form_rule_covers_the_library_name() {
    let keys = TokenKeys::generate();
    let rules = "    - match: {account: \"\", name: \"small\"}\n      actions: []\n    - match: {account: \"\"}\n      actions: [pull]\n";
    let m = Mirror::start(
        MirrorOpts::upstream(&closed_url())
            .up("library_prefix", "always")
            .extra(&auth_yaml(&keys, rules)),
    )
    .await;
    let base = m.url();
    assert!(!may_pull(&base, "small").await);
    assert!(
        !may_pull(&base, "library/small").await,
        "library/ stepped around a short-form rule"
    );
    assert!(may_pull(&base, "library/other").await);
}

/// `never`: no mapping, so `small` and `library/small` are distinct repositories with distinct
/// rules, and distinct content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_mapping_the_names_and_their_rules_are_distinct() {
    let keys = TokenKeys::generate();
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let short = p
        .push_image(
            "small",
            "v1",
            &build_image(Kind::Oci, 9102, &[2 << 10], "amd64", "linux"),
        )
        .await;
    p.push_image(
        "library/small",
        "v1",
        &build_image(Kind::Oci, 9103, &[2 << 10], "amd64", "linux"),
    )
    .await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .up("library_prefix", "never")
            .extra(&auth_yaml(&keys, DENY_OFFICIAL)),
    )
    .await;
    let base = m.url();
    assert!(may_pull(&base, "small").await);
    assert!(!may_pull(&base, "library/small").await);
    let (token, _) = granted(&base, "small").await;
    let r = m
        .get("/v2/small/manifests/v1")
        .bearer_auth(&token)
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        short.digest
    );
    assert_eq!(
        status_with(&m, "/v2/library/small/manifests/v1", &token).await,
        403
    );
}

/// `auto` on a named upstream at Docker Hub's address maps its names too (`hub/alpine` is
/// `hub/library/alpine`), while the default upstream (not Docker Hub) keeps its names apart.
/// Decided by the token endpoint alone: no upstream is contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_maps_the_names_of_a_docker_hub_upstream() {
    let keys = TokenKeys::generate();
    let rules = "    - match: {account: \"\", name: \"hub/library/*\"}\n      actions: []\n    - match: {account: \"\", name: \"hub/busybox\"}\n      actions: []\n    - match: {account: \"\"}\n      actions: [pull]\n";
    let m = Mirror::start(
        MirrorOpts::upstream(&closed_url())
            .up("library_prefix", "auto")
            .extra(&format!(
                "upstreams:\n  - name: hub\n    url: https://registry-1.docker.io\n{}",
                auth_yaml(&keys, rules)
            )),
    )
    .await;
    let base = m.url();
    for name in [
        "hub/alpine",
        "hub/library/alpine",
        "hub/busybox",
        "hub/library/busybox",
    ] {
        assert!(!may_pull(&base, name).await, "{name}");
    }
    for name in ["hub/myorg/app", "alpine", "library/alpine"] {
        assert!(may_pull(&base, name).await, "{name}");
    }
}

/// `upstream.allow` speaks the same language: a short-form pattern covers the `library/` name
/// the upstream is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_form_allow_pattern_covers_the_library_name() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let img = p
        .push_image(
            "library/small",
            "v1",
            &build_image(Kind::Oci, 9104, &[2 << 10], "amd64", "linux"),
        )
        .await;
    p.push_image(
        "library/other",
        "v1",
        &build_image(Kind::Oci, 9105, &[2 << 10], "amd64", "linux"),
    )
    .await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .up("library_prefix", "always")
            .up("allow", "[\"small\"]"),
    )
    .await;
    for path in ["/v2/small/manifests/v1", "/v2/library/small/manifests/v1"] {
        let r = m
            .get(path)
            .header("accept", ACCEPT_MANIFESTS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(
            r.headers()["docker-content-digest"].to_str().unwrap(),
            img.digest
        );
    }
    let r = m
        .get("/v2/other/manifests/v1")
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    expect_oci_error(r, 403, &["DENIED"]).await;
}

/// `config check` warns about rules naming a form the mirror never serves, and still accepts
/// the file.
#[test]
fn config_check_warns_about_rules_that_can_never_match() {
    let keys = TokenKeys::generate();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    let rules = "    - match: {name: \"docker.io/library/*\"}\n      actions: []\n    - match: {name: \"ghcr.io/**\"}\n      actions: [pull]\n    - match: {name: \"library/*\"}\n      actions: [pull]\n";
    std::fs::write(
        &cfg,
        format!(
            "upstream:\n  url: https://registry-1.docker.io\nupstreams:\n  - name: ghcr.io\n    url: https://ghcr.io\n    allow: [\"ghcr.io/owner/*\", \"owner/*\"]\n{}",
            auth_yaml(&keys, rules)
        ),
    )
    .unwrap();
    let out = Command::new(ocimirror_bin())
        .args(["config", "check"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].contains("acl[0].match.name \"docker.io/library/*\" never matches"),
        "{err}"
    );
    assert!(
        warnings[1].contains("upstreams[0].allow \"ghcr.io/owner/*\" never matches"),
        "{err}"
    );
}
