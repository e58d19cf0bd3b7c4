//! Secrets are never logged or returned: a mirror holding every kind of secret (upstream
//! password, Redis password in its URL, S3 secret key, bcrypt users issuing tokens) is driven
//! through pulls, failed logins and errors, at `RUST_LOG=debug`; then its whole log, every
//! response header and body it sent (but the token responses themselves), `/metrics` and
//! `ocimirror config check` are searched for the passwords, their Basic encodings and every
//! token it issued.

mod common;

use std::process::Command;

use common::*;
use data_encoding::BASE64;
use serde_json::Value;

fn bin() -> std::path::PathBuf {
    common::ocimirror_bin()
}
const UPSTREAM_PW: &str = "Upstream-pw-7f3a91";
const WRONG_UPSTREAM_PW: &str = "Wrong-upstream-pw-2b77c0";
const REDIS_PW: &str = "Redis-pw-5d02e8";
const ADMIN_PW: &str = "Admin-pw-c4e19b";
const WRONG_ADMIN_PW: &str = "Wrong-admin-pw-90ad13";

/// Everything a client saw from one response: status line, headers, body.
async fn record(seen: &mut String, r: reqwest::Response) -> (u16, Vec<u8>) {
    let status = r.status().as_u16();
    seen.push_str(&format!("{status}\n"));
    for (k, v) in r.headers() {
        seen.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    let body = r.bytes().await.unwrap().to_vec();
    seen.push_str(&String::from_utf8_lossy(&body));
    seen.push('\n');
    (status, body)
}

/// Send `req` and record what came back.
async fn send(seen: &mut String, req: reqwest::RequestBuilder) -> (u16, Vec<u8>) {
    record(seen, req.send().await.unwrap()).await
}

/// An OAuth2 form POSTed to the token endpoint at `base`.
fn oauth(c: &reqwest::Client, base: &str, form: String) -> reqwest::RequestBuilder {
    c.post(format!("{base}/auth"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
}

/// A token response, parsed (token responses carry tokens by design and are not recorded).
async fn json(req: reqwest::RequestBuilder) -> Value {
    serde_json::from_slice(&req.send().await.unwrap().bytes().await.unwrap()).unwrap()
}

fn basic(user: &str, pw: &str) -> String {
    BASE64.encode(format!("{user}:{pw}").as_bytes())
}

/// Panics if any of `secrets` occurs in `text` (named `what`).
/// The string `name` of a JSON answer, which must have it.
fn text_field(v: &Value, name: &str) -> String {
    v[name].as_str().expect(name).to_string()
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} contains the secret {s:?}:\n{}",
            text.lines()
                .filter(|l| l.contains(s.as_str()))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_responses_metrics_or_config_check() {
    let Some(redis) = RedisServer::start_with_password(REDIS_PW).await else {
        return;
    };
    let reg = Registry::start(RegistryOpts {
        auth: Some(("puller".into(), UPSTREAM_PW.into())),
        ..Default::default()
    })
    .await;
    let img = reg.pusher().push_oci_image("priv/app", "v1", 610).await;
    let s3 = S3Server::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let (key, cert) = ocimirror_keygen(dir.path());
    let auth = format!(
        "auth:\n  key: {}\n  certificate: {}\n  users:\n    admin:\n      password: {}\n  acl:\n    - match: {{account: \"admin\"}}\n      actions: [\"*\"]\n",
        q(&key),
        q(&cert),
        q(&ocimirror_hash_password(ADMIN_PW))
    );
    let opts = |pw: &str| {
        MirrorOpts::upstream(&reg.url())
            .login("puller", pw)
            .tag_ttl("0s")
            .short_timeouts()
            .storage_yaml(&s3.storage_yaml("mirror"))
            .extra(&redis.cache_yaml())
            .extra(&auth)
            .env("RUST_LOG", "debug")
    };
    let mut m = Mirror::start(opts(UPSTREAM_PW)).await;
    let c = client();
    let base = m.url();
    let mut seen = String::new();
    let mut tokens: Vec<String> = Vec::new();

    // An anonymous request: the challenge.
    let (st, _) = send(&mut seen, m.get_manifest(&img.name, "v1")).await;
    assert_eq!(st, 401);

    // Logins that fail (GET with Basic, OAuth2 POST with a password): 4, under the throttle's 5.
    for _ in 0..2 {
        let (st, _) = send(
            &mut seen,
            c.get(format!(
                "{base}/auth?service=ocimirror&scope=repository:priv/app:pull"
            ))
            .basic_auth("admin", Some(WRONG_ADMIN_PW)),
        )
        .await;
        assert!(st == 401 || st == 429, "{st}");
        let form = format!(
            "grant_type=password&service=ocimirror&client_id=t&username=admin&password={WRONG_ADMIN_PW}&scope=repository:priv/app:pull"
        );
        let (st, _) = send(&mut seen, oauth(&c, &base, form)).await;
        assert!(st == 401 || st == 429, "{st}");
    }
    // A wrong bearer token (a password where a token belongs).
    let (st, _) = send(
        &mut seen,
        m.get_manifest(&img.name, "v1").bearer_auth(ADMIN_PW),
    )
    .await;
    assert_eq!(st, 401);

    // Good logins: an access token (GET) and access + refresh tokens (POST, offline). These
    // responses carry tokens by design and are not searched.
    let v = json(
        c.get(format!(
            "{base}/auth?service=ocimirror&scope=repository:priv/app:pull&offline_token=true"
        ))
        .basic_auth("admin", Some(ADMIN_PW)),
    )
    .await;
    let token = text_field(&v, "token");
    tokens.push(token.clone());
    if let Some(rt) = v["refresh_token"].as_str() {
        tokens.push(rt.to_string());
    }
    let form = format!(
        "grant_type=password&service=ocimirror&client_id=t&username=admin&password={ADMIN_PW}&scope=repository:priv/app:pull&access_type=offline"
    );
    let v = json(oauth(&c, &base, form)).await;
    tokens.push(text_field(&v, "access_token"));
    let refresh = text_field(&v, "refresh_token");
    tokens.push(refresh.clone());
    // The refresh token used where it does not belong, and for a new access token.
    let (st, _) = send(
        &mut seen,
        m.get_manifest(&img.name, "v1").bearer_auth(&refresh),
    )
    .await;
    assert_eq!(st, 401);
    let form = format!(
        "grant_type=refresh_token&service=ocimirror&client_id=t&refresh_token={refresh}&scope=repository:priv/app:pull"
    );
    let v = json(oauth(&c, &base, form)).await;
    tokens.push(text_field(&v, "access_token"));

    // Pulls with the token: manifest, every blob; an unknown tag and blob (upstream 404s).
    let (st, body) = send(
        &mut seen,
        m.get_manifest(&img.name, "v1").bearer_auth(&token),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body, img.manifest);
    for d in img.all_blobs() {
        let (st, body) = send(
            &mut seen,
            m.get_blob(&img.name, &d.digest).bearer_auth(&token),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(sha256_digest(&body), d.digest);
    }
    let (st, _) = send(
        &mut seen,
        m.get_manifest(&img.name, "nope").bearer_auth(&token),
    )
    .await;
    assert_eq!(st, 404);
    // Beyond the token's scope.
    let (st, _) = send(
        &mut seen,
        m.get_manifest("other/app", "v1").bearer_auth(&token),
    )
    .await;
    assert!(st == 401 || st == 403, "{st}");

    let metrics = m.metrics().await;
    let config = std::fs::read_to_string(m.config_path()).unwrap();
    assert!(config.contains(UPSTREAM_PW) && config.contains(REDIS_PW));
    let check = Command::new(bin())
        .args(["config", "check"])
        .arg(m.config_path())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{check_out}");

    // The same mirror with a wrong upstream password: the pull fails, and says nothing secret.
    m.restart(Some(opts(WRONG_UPSTREAM_PW))).await;
    let v = json(
        c.get(format!(
            "{}/auth?service=ocimirror&scope=repository:priv/other:pull",
            m.url()
        ))
        .basic_auth("admin", Some(ADMIN_PW)),
    )
    .await;
    let token2 = text_field(&v, "token");
    tokens.push(token2.clone());
    let (st, _) = send(
        &mut seen,
        m.get_manifest("priv/other", "v1").bearer_auth(&token2),
    )
    .await;
    assert_ne!(st, 200);
    let metrics2 = m.metrics().await;
    let log = format!(
        "{}\n{}",
        std::fs::read_to_string(m.data_dir().join("../mirror-0.log")).unwrap(),
        m.log_text()
    );
    assert!(
        log.contains("priv/app"),
        "the log is too quiet to prove anything"
    );

    let mut secrets: Vec<String> = [
        UPSTREAM_PW,
        WRONG_UPSTREAM_PW,
        REDIS_PW,
        S3_SECRET_KEY,
        ADMIN_PW,
        WRONG_ADMIN_PW,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (u, p) in [
        ("puller", UPSTREAM_PW),
        ("puller", WRONG_UPSTREAM_PW),
        ("admin", ADMIN_PW),
        ("admin", WRONG_ADMIN_PW),
    ] {
        secrets.push(basic(u, p));
    }
    for t in &tokens {
        // The whole token, and its signature alone.
        secrets.push(t.clone());
        secrets.push(t.rsplit('.').next().unwrap().to_string());
    }
    assert_clean("the mirror's log", &log, &secrets);
    assert_clean("the responses", &seen, &secrets);
    assert_clean("/metrics", &format!("{metrics}{metrics2}"), &secrets);
    assert_clean("config check", &check_out, &secrets);
}
