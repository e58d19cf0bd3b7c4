//! Real registries' quirks, reproduced by the shared fake upstream (`common::upstream`), with
//! skopeo pulling through the mirror: SIGHUP without anything to reload, rotated upstream
//! passwords (ECR's Basic, a token registry's bearer flow), refused anonymous tokens (ghcr.io),
//! challenges listing Basic before Bearer, signed schema 1 manifests (quay.io's old images); and
//! the quirks that already worked, kept as regressions: redirect forms, token shapes, HEAD
//! without digest or length, chunked bodies, `Retry-After` as a date, deep names.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::json;

/// Rewrite `file` with `text`, keeping its modification time: only a refusal of the password
/// in force can then make the mirror read it again (the watcher sees no change).
fn rewrite_unnoticed(file: &Path, text: &str) {
    let mtime = std::fs::metadata(file).unwrap().modified().unwrap();
    std::fs::write(file, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

fn password_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("upstream-password");
    std::fs::write(&p, text).unwrap();
    p
}

/// A mirror of `f` that logs in as `user` with the password in `file`, revalidating every tag.
fn password_file_opts(f: &FakeUpstream, user: &str, file: &Path) -> MirrorOpts {
    MirrorOpts::upstream(&f.url())
        .short_timeouts()
        .tag_ttl("0s")
        .up("username", user)
        .up("password_file", &q(&file.display().to_string()))
}

// ---------------------------------------------------------------------------------------------
// 1. SIGHUP
// ---------------------------------------------------------------------------------------------

/// A mirror without `auth` or `tls` lives through SIGHUPs (systemd's `reload`), says so, and
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_auth_or_tls_reloads_and_never_exits() {
    let f = FakeUpstream::start().await;
    let img = f.add_image("team/app", "v1", &build_oci_image(2301));
    let m = Mirror::start(MirrorOpts::upstream(&f.url())).await;
    let pid = m.pid().unwrap().to_string();
    for n in 1..=2 {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(st.success());
        m.wait_log("the SIGHUP", |l| l.matches("SIGHUP").count() >= n)
            .await;
    }
    let r = m.get("/readyz").send().await.unwrap();
    assert_eq!(r.status(), 200, "alive after SIGHUP");
    pull_and_check_oci(&m.hostport(), &img, None).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Rotated passwords
// ---------------------------------------------------------------------------------------------

/// A token registry (Artifact Registry, ACR): a wrong password in the file is a clear 403 and a
/// log line; the right one written is picked up by the watcher; a rotation at the upstream
/// (old tokens revoked) is picked up at the first refusal, even unnoticed by the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_password_file_is_read_again_and_old_tokens_dropped() {
    let f = FakeUpstream::start_behind(Auth::bearer("robot", "pw-1")).await;
    let img = f.add_image("team/app", "v1", &build_oci_image(2302));
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "wrong\n");
    let m = Mirror::start(password_file_opts(&f, "robot", &pw)).await;
    let r = m.get_manifest("team/app", "v1").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap().to_lowercase();
    assert!(
        body.contains("denied") && body.contains("credentials"),
        "{body}"
    );
    m.wait_log("the refusal", |l| {
        l.contains("refused the configured credentials")
    })
    .await;

    std::fs::write(&pw, "pw-1\n").unwrap();
    m.manifest_once_served("team/app", "v1", Some(403), "the new password")
        .await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let tokens = f.tokens();

    // Rotation: the upstream now wants pw-2 and revokes what it handed out.
    f.set_auth(Auth::bearer("robot", "pw-2"));
    rewrite_unnoticed(&pw, "pw-2\n");
    let r = m.get_manifest("team/app", "v1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(f.tokens() > tokens, "a new token was fetched");
    let token = f.token();
    let last = f
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.route == Route::Manifest);
    assert_eq!(
        last.and_then(|s| s.auth),
        Some(format!("Bearer {token}")),
        "the manifest was asked for with the new token"
    );
    assert!(
        m.metric("ocimirror_upstream_password_reloads_total", &[])
            .await
            >= 2.0
    );
    pull_and_check_oci(&m.hostport(), &img, None).await;
}

/// ECR: Basic auth at the registry with a 12-hour token as the password, rotated by rewriting
/// the file. A refusal re-reads it; an unchanged password stays refused, clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecr_style_basic_password_rotation() {
    let f = FakeUpstream::start_behind(Auth::basic("AWS", "ecr-token-1")).await;
    let img = f.add_image("team/app", "v1", &build_oci_image(2303));
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "ecr-token-1\n");
    let m = Mirror::start(password_file_opts(&f, "AWS", &pw)).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;

    // The token expires upstream; nothing new in the file yet: a clear refusal, not a 503.
    f.set_auth(Auth::basic("AWS", "ecr-token-2"));
    let other = f.add_image("team/other", "v1", &build_oci_image(2304));
    let r = m.get_manifest("team/other", "v1").send().await.unwrap();
    expect_oci_error(r, 403, &["DENIED"]).await;
    m.wait_log("the refusal", |l| {
        l.contains("refused the configured credentials")
    })
    .await;

    // The sidecar writes the new token; the next refusal reads it.
    rewrite_unnoticed(&pw, "ecr-token-2\n");
    pull_and_check_oci(&m.hostport(), &other, None).await;
    assert!(
        f.seen()
            .iter()
            .filter(|s| s.route == Route::Manifest)
            .all(|s| s.auth.as_deref().is_none_or(|a| a.starts_with("Basic "))),
        "Basic all along"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Refused anonymous tokens
// ---------------------------------------------------------------------------------------------

/// ghcr.io answers 401 at its token endpoint when an anonymous client asks for a private or
/// misspelt repository: the mirror says 404 NAME_UNKNOWN with the upstream's answer, not 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_anonymous_token_is_name_unknown_not_an_outage() {
    let f = FakeUpstream::start_behind(Auth::public(&["team/public"])).await;
    let img = f.add_image("team/public", "v1", &build_oci_image(2305));
    f.add_image("team/private", "v1", &build_oci_image(2306));
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;

    for reference in ["v1", &img.digest] {
        let r = m
            .get_manifest("team/private", reference)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let body = r.bytes().await.unwrap();
        assert_eq!(error_codes(&body), ["NAME_UNKNOWN"]);
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("anonymous") && text.contains("401"),
            "the message names the upstream's answer: {text}"
        );
    }
    let err = skopeo_inspect_raw(&format!("{}/team/private:v1", m.hostport()), None)
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("name unknown"), "{err}");
    assert!(!err.contains("503"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 4. Several challenges
// ---------------------------------------------------------------------------------------------

/// `WWW-Authenticate: Basic realm=…, Bearer realm=…` (one header or two): the mirror answers
/// the Bearer challenge and never sends Basic to the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_listing_basic_before_bearer_settle_on_bearer() {
    let bearer = r#"Bearer realm="{realm}",service="fake",scope="{scope}""#;
    for (i, challenges) in [
        vec![format!(r#"Basic realm="fake registry", {bearer}"#)],
        vec![
            r#"Basic realm="fake registry""#.to_string(),
            bearer.to_string(),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let f = FakeUpstream::start_behind(Auth {
            challenges,
            ..Auth::bearer("alice", "pw")
        })
        .await;
        let img = f.add_image("team/app", "v1", &build_oci_image(2307 + i as u64));
        let m = Mirror::start(
            MirrorOpts::upstream(&f.url())
                .short_timeouts()
                .login("alice", "pw"),
        )
        .await;
        pull_and_check_oci(&m.hostport(), &img, None).await;
        assert!(f.tokens() >= 1, "case {i}: a token was fetched");
        assert!(
            f.seen()
                .iter()
                .filter(|s| s.route != Route::Token)
                .all(|s| s.auth.as_deref().is_none_or(|a| a.starts_with("Bearer "))),
            "case {i}: Basic sent to the registry: {:?}",
            f.seen()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Signed schema 1
// ---------------------------------------------------------------------------------------------

const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A signed schema 1 manifest as Docker's libtrust writes it (ES256 over the payload, a JWK in
/// the header): (signed bytes, canonical digest = digest of the payload).
fn signed_schema1(name: &str, tag: &str, layers: &[&Descriptor]) -> (Vec<u8>, String) {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    // Layer IDs chained from the top layer (first) to the base, as clients check.
    let ids: Vec<String> = (0..layers.len())
        .map(|i| sha256_hex(format!("{name}:{tag}:{i}").as_bytes()))
        .collect();
    let history: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut v1 = json!({"id": id, "architecture": "amd64", "os": "linux"});
            if let Some(parent) = ids.get(i + 1) {
                v1["parent"] = json!(parent);
            }
            json!({"v1Compatibility": v1.to_string()})
        })
        .collect();
    let payload = serde_json::to_string_pretty(&json!({
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": layers.iter().map(|d| json!({"blobSum": d.digest})).collect::<Vec<_>>(),
        "history": history,
    }))
    .unwrap()
        + "\n";
    // libtrust signs the document up to its last closing brace's line, then appends the rest.
    let cut = payload.trim_end().rfind('\n').unwrap();
    let tail = &payload[cut..];
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = key.public_key().as_ref().to_vec();
    let (x, y) = (&point[1..33], &point[33..65]);
    let protected = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"formatLength":{cut},"formatTail":"{}","time":"2016-01-01T00:00:00Z"}}"#,
        URL_SAFE_NO_PAD.encode(tail)
    ));
    let signing_input = format!("{protected}.{}", URL_SAFE_NO_PAD.encode(&payload));
    let sig = key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .unwrap();
    let signatures = serde_json::to_string_pretty(&json!([{
        "header": {"jwk": {"crv": "P-256", "kty": "EC", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}, "alg": "ES256"},
        "signature": URL_SAFE_NO_PAD.encode(sig.as_ref()),
        "protected": protected,
    }]))
    .unwrap();
    let signed = format!(
        "{},\n   \"signatures\": {}{}",
        &payload[..cut],
        signatures.replace('\n', "\n   "),
        tail
    );
    (signed.into_bytes(), sha256_digest(payload.as_bytes()))
}

/// quay.io still serves old images as signed schema 1, announcing the digest of the payload
/// without its signatures: the mirror verifies that digest, serves the signed bytes by tag and
/// by digest, and skopeo pulls them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_schema1_is_verified_by_its_payload_and_served_byte_for_byte() {
    let f = FakeUpstream::start().await;
    let img = build_docker_image(2309);
    let layers: Vec<&Descriptor> = img.layers.iter().collect();
    let (signed, canonical) = signed_schema1("quay/old", "v1", &layers);
    assert_ne!(sha256_digest(&signed), canonical);
    for l in &img.layers {
        f.add_blob(img.blob(&l.digest).clone());
    }
    f.add_manifest_as("quay/old", "v1", SCHEMA1_SIGNED, &signed, &canonical);
    let m = Mirror::start(MirrorOpts::upstream(&f.url()).short_timeouts()).await;
    for reference in ["v1", canonical.as_str()] {
        let r = m.get_manifest("quay/old", reference).send().await.unwrap();
        assert_eq!(r.status(), 200, "{reference}");
        assert_eq!(header(r.headers(), "docker-content-digest"), canonical);
        assert_eq!(header(r.headers(), "content-type"), SCHEMA1_SIGNED);
        assert_eq!(
            r.bytes().await.unwrap(),
            signed,
            "{reference}: byte for byte"
        );
    }
    let raw = skopeo_inspect_raw(&format!("{}/quay/old:v1", m.hostport()), None)
        .await
        .unwrap();
    assert_eq!(raw, signed);
    let out = tempfile::tempdir().unwrap();
    skopeo_copy(
        &format!("{}/quay/old@{canonical}", m.hostport()),
        &format!("dir:{}", out.path().display()),
        false,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(out.path().join("manifest.json")).unwrap(),
        signed
    );

    // A payload changed after signing matches nothing: refused, and the operator told why.
    let tampered = String::from_utf8(signed.clone())
        .unwrap()
        .replace("\"v1\"", "\"v2\"");
    f.add_manifest_as(
        "quay/old",
        "bad",
        SCHEMA1_SIGNED,
        tampered.as_bytes(),
        &canonical,
    );
    let r = m.get_manifest("quay/old", "bad").send().await.unwrap();
    assert_eq!(r.status(), 502);
    m.wait_log("the refusal's reason", |l| {
        l.contains("WARN") && l.contains("refused as invalid") && l.contains("does not match")
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Regressions: what already worked
// ---------------------------------------------------------------------------------------------

/// Blob redirects in every form (302, 307, 308 to another host with a signed query; a relative
/// one to the same host): followed, and the upstream's credentials never reach another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_forms_keep_credentials_on_their_host() {
    for (i, to) in [
        Redirect::Cdn(302),
        Redirect::Cdn(307),
        Redirect::Cdn(308),
        Redirect::Relative(307),
    ]
    .into_iter()
    .enumerate()
    {
        let f = FakeUpstream::start_behind(Auth::bearer("bob", "builder")).await;
        let img = f.add_image("org/team/sub/app", "v1", &build_oci_image(2310 + i as u64));
        f.on(Route::Blob).get().redirect(to);
        let m = Mirror::start(
            MirrorOpts::upstream(&f.url())
                .short_timeouts()
                .login("bob", "builder"),
        )
        .await;
        pull_and_check_oci(&m.hostport(), &img, None).await;
        let (cdn, storage) = (
            f.count_route(Route::Cdn, "GET"),
            f.count_route(Route::Storage, "GET"),
        );
        assert!(cdn + storage >= img.all_blobs().len(), "{to:?}: followed");
        assert!(
            f.seen_cdn().iter().all(|s| s.auth.is_none()),
            "{to:?}: credentials sent to another host"
        );
        assert!(
            f.seen_cdn()
                .iter()
                .chain(f.seen().iter().filter(|s| s.route == Route::Storage))
                .all(|s| s.query.as_deref() == Some("sig=abc")),
            "{to:?}: the signed query kept"
        );
    }
}

/// Every token-response shape: `token` only, `access_token` only, with `issued_at`, and
/// lifetimes from 1 s (a new token once it is over) to none said (60 s by the spec).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_response_shapes() {
    for (i, shape) in [
        r#"{"token":"{token}"}"#,
        r#"{"access_token":"{token}","expires_in":3600}"#,
        r#"{"token":"{token}","expires_in":1,"issued_at":"2024-01-01T00:00:00Z"}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let f = FakeUpstream::start_behind(Auth {
            token_json: Some(shape.to_string()),
            ..Auth::bearer("alice", "pw")
        })
        .await;
        let img = f.add_image("team/app", "v1", &build_oci_image(2320 + i as u64));
        let m = Mirror::start(
            MirrorOpts::upstream(&f.url())
                .short_timeouts()
                .tag_ttl("0s")
                .login("alice", "pw"),
        )
        .await;
        pull_and_check_oci(&m.hostport(), &img, None).await;
        if shape.contains("\"expires_in\":1,") {
            let before = f.tokens();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let r = m.get_manifest("team/app", "v1").send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(f.tokens() > before, "an expired token is renewed");
        }
    }
}

/// A manifest HEAD without `Docker-Content-Digest` or `Content-Length`, chunked blob bodies, a
/// 429 whose `Retry-After` is an HTTP date: all still pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_without_digest_or_length_chunked_bodies_and_retry_after_dates() {
    let f = FakeUpstream::start().await;
    let img = f.add_image("team/app", "v1", &build_oci_image(2330));
    f.on(Route::Manifest)
        .head()
        .without_header("docker-content-digest")
        .without_header("content-length");
    f.on(Route::Blob).get().length(Length::Chunked);
    let m = Mirror::start(
        MirrorOpts::upstream(&f.url())
            .short_timeouts()
            .tag_ttl("0s"),
    )
    .await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;

    let other = f.add_image("team/other", "v1", &build_oci_image(2331));
    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    let limited = f
        .on_repo()
        .reply(429, "TOOMANYREQUESTS")
        .header("retry-after", &at);
    let r = m.get_manifest("team/other", "v1").send().await.unwrap();
    let h = expect_oci_error(r, 429, &["TOOMANYREQUESTS"]).await;
    assert!(h.get("retry-after").is_some());
    limited.remove();
    m.manifest_once_served("team/other", "v1", None, "after the date")
        .await;
    pull_and_check_oci(&m.hostport(), &other, None).await;
}
