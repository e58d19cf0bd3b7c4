//! Access is decided on the repository the mirror serves (issue 18): with Docker Hub's
//! `library/` mapping on, `small` and `library/small` are one repository, so a rule naming
//! either form holds for both, at the token endpoint and at the `/v2` gate; with it off they are
//! two. Each case below was a bypass (or a refusal of what a rule allows) when the ACL was
//! evaluated on the name as the client wrote it.

mod common;

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
    m.get_accepting(path)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A small image (seed `seed`) pushed to `reg` as `name:v1`.
async fn push_small(reg: &Registry, name: &str, seed: u64) -> Image {
    let img = build_image(Kind::Oci, seed, &[2 << 10], "amd64", "linux");
    reg.pusher().push_image(name, "v1", &img).await
}

/// A mirror of `upstream` with `library_prefix` set to `prefix` and `auth` (YAML) added.
async fn mirror(upstream: &str, prefix: &str, auth: &str) -> Mirror {
    Mirror::start(
        MirrorOpts::upstream(upstream)
            .up("library_prefix", prefix)
            .extra(auth),
    )
    .await
}

const DENY_OFFICIAL: &str = "    - match: {account: \"\", name: \"library/*\"}\n      actions: []\n    - match: {account: \"\"}\n      actions: [pull]\n";

/// The case: a rule on `library/*` holds for the short name too, at the token endpoint
/// and at the gate, and through every other spelling of the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_library_names_holds_for_the_short_name() {
    let keys = TokenKeys::generate();
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = push_small(&reg, "library/small", 9100).await;
    let m = mirror(&reg.url(), "always", &auth_yaml(&keys, DENY_OFFICIAL)).await;
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
    let img = push_small(&reg, "library/small", 9101).await;
    let rules = "    - match: {account: \"\", name: \"library/*\"}\n      actions: [pull]\n";
    let m = mirror(&reg.url(), "always", &auth_yaml(&keys, rules)).await;
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
    let m = mirror(&closed_url(), "always", &auth_yaml(&keys, rules)).await;
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
    let short = push_small(&reg, "small", 9102).await;
    push_small(&reg, "library/small", 9103).await;
    let m = mirror(&reg.url(), "never", &auth_yaml(&keys, DENY_OFFICIAL)).await;
    let base = m.url();
    assert!(may_pull(&base, "small").await);
    assert!(!may_pull(&base, "library/small").await);
    let (token, _) = granted(&base, "small").await;
    let r = m
        .get_accepting("/v2/small/manifests/v1")
        .bearer_auth(&token)
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
    let hub = "upstreams:\n  - name: hub\n    url: https://registry-1.docker.io\n";
    let m = mirror(
        &closed_url(),
        "auto",
        &(hub.to_owned() + &auth_yaml(&keys, rules)),
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
    let img = push_small(&reg, "library/small", 9104).await;
    push_small(&reg, "library/other", 9105).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .up("library_prefix", "always")
            .up("allow", "[\"small\"]"),
    )
    .await;
    for path in ["/v2/small/manifests/v1", "/v2/library/small/manifests/v1"] {
        let r = m.get_accepting(path).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(
            r.headers()["docker-content-digest"].to_str().unwrap(),
            img.digest
        );
    }
    let r = m
        .get_accepting("/v2/other/manifests/v1")
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
    let rules = "    - match: {name: \"docker.io/library/*\"}\n      actions: []\n    - match: {name: \"ghcr.io/**\"}\n      actions: [pull]\n    - match: {name: \"library/*\"}\n      actions: [pull]\n";
    let (ok, err) = config_check_yaml(&format!(
        "upstream:\n  url: https://registry-1.docker.io\nupstreams:\n  - name: ghcr.io\n    url: https://ghcr.io\n    allow: [\"ghcr.io/owner/*\", \"owner/*\"]\n{}",
        auth_yaml(&keys, rules)
    ));
    assert!(ok, "{err}");
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
