//! The token service and access control, black box: ocimirror's `/auth` endpoint and `/v2` gate
//! driven by skopeo and raw HTTP, its tokens checked by a real Distribution 2.8 registry, tokens
//! minted here the way docker_auth does checked by ocimirror, the upstream allow-list, policy
//! reload, roles, login throttling and the shipped example config.
//!
//! Keys come from `ocimirror keygen` (or the openssl CLI), password hashes from
//! `ocimirror hash-password`; JWTs crafted here use jsonwebtoken directly, never ocimirror's code.
//! Each test starts its own processes, so tests run in parallel.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use serde_json::{Value, json};
use tempfile::TempDir;

fn bin() -> std::path::PathBuf {
    common::ocimirror_bin()
}
const ADMIN_PW: &str = "s3cret-Admin-pw";
const SERVICE: &str = "ocimirror";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Run the ocimirror binary with `args` (no OCIMIRROR_* variables but `env`).
fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("OCIMIRROR_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ocimirror")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// `echo -n pw | ocimirror hash-password --cost 4`, checked to be a cost-4 bcrypt hash.
fn hash_password(pw: &str) -> String {
    let h = ocimirror_hash_password(pw);
    assert!(
        h.starts_with("$2") && h.contains("$04$"),
        "not a cost-4 bcrypt hash: {h:?}"
    );
    h
}

/// Keys plus the admin's password hash: what every token-issuing mirror here is configured with.
struct AuthSetup {
    keys: TokenKeys,
    admin_hash: String,
}

impl AuthSetup {
    fn new() -> Self {
        AuthSetup {
            keys: TokenKeys::generate(),
            admin_hash: hash_password(ADMIN_PW),
        }
    }

    /// An `auth:` section: our key, users `""` (anonymous) and `admin`, and the ACL "admin may
    /// do everything, anonymous may pull `myorg/**`" followed by `extra_rules` (raw YAML list
    /// items indented by 4). `more` is raw YAML added under `auth:` (indented by 2).
    fn yaml(&self, more: &str, extra_rules: &str) -> String {
        format!(
            "auth:\n  key: {}\n  certificate: {}\n{more}  users:\n    \"\": {{}}\n    admin:\n      password: {}\n  acl:\n    - match: {{account: \"admin\"}}\n      actions: [\"*\"]\n    - match: {{account: \"\", name: \"myorg/**\"}}\n      actions: [\"pull\"]\n{extra_rules}",
            q(&self.keys.key.display().to_string()),
            q(&self.keys.cert.display().to_string()),
            q(&self.admin_hash),
        )
    }
}

fn small_image(seed: u64) -> Image {
    build_image(Kind::Oci, seed, &[2 << 10, 40 << 10], "amd64", "linux")
}

/// A Distribution registry holding `<name>:v1` for each name (small distinct images).
async fn seeded_upstream(names: &[&str]) -> (Registry, Vec<Image>) {
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let mut imgs = Vec::new();
    for (i, n) in names.iter().enumerate() {
        imgs.push(p.push_image(n, "v1", &small_image(7000 + i as u64)).await);
    }
    (reg, imgs)
}

/// The paths of `img`'s content under `name`: its manifest by tag and by digest, a layer.
fn content_paths(name: &str, img: &Image) -> [String; 3] {
    [
        format!("/v2/{name}/manifests/{}", img.tag),
        format!("/v2/{name}/manifests/{}", img.digest),
        format!("/v2/{name}/blobs/{}", img.layers[0].digest),
    ]
}

/// Reads (GET/HEAD) the upstream received under `/v2/<name>/`; the seeding pushes do not count.
async fn upstream_count(reg: &Registry, name: &str) -> usize {
    let prefix = format!("/v2/{name}/");
    reg.requests()
        .await
        .iter()
        .filter(|(m, u)| (m == "GET" || m == "HEAD") && u.starts_with(&prefix))
        .count()
}

/// skopeo-copy `name:v1` into a throwaway layout; only the outcome matters.
async fn try_pull(hostport: &str, name: &str, creds: Option<&str>) -> Result<(), String> {
    let out = TempDir::new().unwrap();
    skopeo_copy(
        &format!("{hostport}/{name}:v1"),
        &format!("oci:{}:t", out.path().display()),
        false,
        creds,
    )
    .await
}

/// skopeo copy with a ready-made bearer token (`--src-registry-token`), checked like
/// [`pull_and_check_oci`].
async fn pull_with_token_and_check(hostport: &str, img: &Image, token: &str) {
    let out = TempDir::new().unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--src-tls-verify=false",
                "--preserve-digests",
                "--src-registry-token",
                token,
            ])
            .arg(format!("docker://{hostport}/{}:{}", img.name, img.tag))
            .arg(format!("oci:{}:t", out.path().display()))
            .output(),
    )
    .await
    .expect("skopeo timed out")
    .unwrap();
    assert!(
        res.status.success(),
        "skopeo copy with a registry token: {}",
        text(&res.stderr)
    );
    let layout = read_oci_layout(out.path());
    assert_eq!(layout.top, vec![img.digest.clone()]);
    assert_image_in(&layout, img);
}

fn token_url(base: &str, params: &[(&str, &str)]) -> String {
    url::Url::parse_with_params(&format!("{base}/auth"), params)
        .unwrap()
        .to_string()
}

/// GET the token endpoint of the process at `base`.
async fn token_get(
    base: &str,
    params: &[(&str, &str)],
    creds: Option<(&str, &str)>,
) -> reqwest::Response {
    let r = client().get(token_url(base, params));
    let r = match creds {
        Some((u, p)) => r.basic_auth(u, Some(p)),
        None => r,
    };
    r.send().await.unwrap()
}

/// An OAuth2 token form: the `grant`'s fields, the service, `extra` fields, then `scope`.
fn token_form<'a>(
    grant: &[(&'a str, &'a str)],
    extra: &[(&'a str, &'a str)],
    scope: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut form = grant.to_vec();
    form.push(("service", SERVICE));
    form.extend_from_slice(extra);
    form.push(("scope", scope));
    form
}

/// A token for `scope` (service `ocimirror`); asserts the endpoint says 200.
async fn token_ok(base: &str, scope: &str, creds: Option<(&str, &str)>) -> String {
    let r = token_get(base, &[("service", SERVICE), ("scope", scope)], creds).await;
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "token for {scope}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["token"].as_str().expect("token field").to_string()
}

/// POST the OAuth2 form to the token endpoint.
async fn token_post(base: &str, form: &[(&str, &str)]) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    client()
        .post(format!("{base}/auth"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn json_of(r: reqwest::Response, status: u16) -> Value {
    let got = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(got, status, "body: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn b64(v: &Value) -> String {
    BASE64URL_NOPAD.encode(&serde_json::to_vec(v).unwrap())
}

fn unb64(part: &str) -> Value {
    serde_json::from_slice(&BASE64URL_NOPAD.decode(part.as_bytes()).unwrap()).unwrap()
}

/// (header, claims) of a JWT, unverified.
fn decode_jwt(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS compact token: {token}");
    (unb64(parts[0]), unb64(parts[1]))
}

/// The `access` claim; null counts as empty.
fn access_of(claims: &Value) -> Vec<Value> {
    match &claims["access"] {
        Value::Null => Vec::new(),
        Value::Array(a) => a.clone(),
        other => panic!("access claim is neither null nor an array: {other}"),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Does an anonymous token for `repository:<name>:pull` grant the pull?
async fn anonymous_may_pull(base: &str, name: &str) -> bool {
    let t = token_ok(base, &format!("repository:{name}:pull"), None).await;
    let (_, c) = decode_jwt(&t);
    let want = json!({"type": "repository", "name": name, "actions": ["pull"]});
    match access_of(&c).as_slice() {
        [] => false,
        [one] if *one == want => true,
        other => panic!("unexpected access claim for {name}: {other:?}"),
    }
}

fn bearer_get(url: &str, token: &str) -> reqwest::RequestBuilder {
    client()
        .get(url)
        .bearer_auth(token)
        .header("accept", ACCEPT_MANIFESTS)
}

/// 401 for a token the gate cannot accept: `error="invalid_token"` in a challenge naming the
/// scope, UNAUTHORIZED in the body.
async fn expect_invalid_token(resp: reqwest::Response, scope: &str, what: &str) {
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.bytes().await.unwrap();
    assert_eq!(status, 401, "{what}: body {:?}", text(&body));
    let challenge = challenge.unwrap_or_else(|| panic!("{what}: 401 without a challenge"));
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains("error=\"invalid_token\"")
            && challenge.contains(&format!("scope=\"{scope}\"")),
        "{what}: challenge {challenge}"
    );
    assert_eq!(error_codes(&body), vec!["UNAUTHORIZED"], "{what}");
}

/// The DER SubjectPublicKeyInfo of a PEM certificate or private key, from the openssl CLI.
fn spki_der(pem: &Path, is_cert: bool) -> Vec<u8> {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("spki.der");
    let st = if is_cert {
        let pubpem = dir.path().join("pub.pem");
        let st = Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(pem)
            .arg("-out")
            .arg(&pubpem)
            .status()
            .unwrap();
        assert!(st.success());
        Command::new("openssl")
            .args(["pkey", "-pubin", "-outform", "DER", "-in"])
            .arg(&pubpem)
            .arg("-out")
            .arg(&out)
            .status()
            .unwrap()
    } else {
        Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(pem)
            .arg("-out")
            .arg(&out)
            .status()
            .unwrap()
    };
    assert!(st.success(), "openssl pkey");
    std::fs::read(out).unwrap()
}

/// libtrust key ID, computed here independently of ocimirror: SHA-256 of the DER SPKI, first 30
/// bytes, base32 without padding, 12 groups of 4 joined by ':'.
fn libtrust_kid(spki: &[u8]) -> String {
    let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
    let b32 = BASE32_NOPAD.encode(&h.as_ref()[..30]);
    assert_eq!(b32.len(), 48);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

/// The base64 body of a single-certificate PEM file: what a JWS `x5c` entry holds.
fn pem_body(pem: &Path) -> String {
    std::fs::read_to_string(pem)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
}

/// An RS256 JWT signed here with jsonwebtoken (not ocimirror's code).
fn mint_rs256(key_pem: &Path, kid: Option<&str>, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.typ = Some("JWT".into());
    h.kid = kid.map(str::to_owned);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(key_pem).unwrap())
        .expect("RSA PEM key");
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. skopeo end to end
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_follow_the_acl_for_anonymous_and_admin() {
    let auth = AuthSetup::new();
    let (reg, imgs) = seeded_upstream(&["myorg/app", "myorg/team/app", "other/app"]).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).extra(&auth.yaml("", ""))).await;
    let hp = m.hostport();

    // Anonymous pulls under myorg/**, at any depth.
    pull_and_check_oci(&hp, &imgs[0], None).await;
    pull_and_check_oci(&hp, &imgs[1], None).await;

    // Anonymous other/app: skopeo is refused, and nothing was asked of the upstream.
    let err = try_pull(&hp, "other/app", None).await.unwrap_err();
    assert!(err.to_lowercase().contains("denied"), "{err}");
    assert_eq!(upstream_count(&reg, "other/app").await, 0);

    // Raw: the anonymous token for other/app grants nothing, and the gate says 403 DENIED.
    let tok = token_ok(&m.url(), "repository:other/app:pull", None).await;
    let (_, claims) = decode_jwt(&tok);
    assert_eq!(claims["sub"], "", "anonymous subject");
    assert!(
        access_of(&claims).is_empty(),
        "access: {}",
        claims["access"]
    );
    let r = bearer_get(&format!("{}/v2/other/app/manifests/v1", m.url()), &tok)
        .send()
        .await
        .unwrap();
    expect_oci_error(r, 403, &["DENIED"]).await;
    let r = bearer_get(
        &format!("{}/v2/other/app/blobs/{}", m.url(), imgs[2].config.digest),
        &tok,
    )
    .send()
    .await
    .unwrap();
    expect_oci_error(r, 403, &["DENIED"]).await;
    // A myorg token does not open other/app either.
    let myorg = token_ok(&m.url(), "repository:myorg/app:pull", None).await;
    let r = bearer_get(&format!("{}/v2/other/app/manifests/v1", m.url()), &myorg)
        .send()
        .await
        .unwrap();
    expect_oci_error(r, 403, &["DENIED"]).await;
    assert_eq!(upstream_count(&reg, "other/app").await, 0);

    // The admin may pull it.
    let creds = format!("admin:{ADMIN_PW}");
    pull_and_check_oci(&hp, &imgs[2], Some(&creds)).await;
    let tok = token_ok(
        &m.url(),
        "repository:other/app:pull",
        Some(("admin", ADMIN_PW)),
    )
    .await;
    let (_, claims) = decode_jwt(&tok);
    assert_eq!(claims["sub"], "admin");
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "other/app", "actions": ["pull"]}])
    );

    // A wrong password or an unknown user: 401 from the token endpoint, and skopeo fails.
    for (u, p) in [("admin", "wrong"), ("nobody", ADMIN_PW), ("admin", "")] {
        let r = token_get(
            &m.url(),
            &[("service", SERVICE), ("scope", "repository:myorg/app:pull")],
            Some((u, p)),
        )
        .await;
        let h = expect_oci_error(r, 401, &["UNAUTHORIZED"]).await;
        assert!(
            header(&h, "www-authenticate").starts_with("Basic "),
            "{u}:{p}"
        );
    }
    let err = try_pull(&hp, "myorg/app", Some("admin:wrong"))
        .await
        .unwrap_err();
    assert!(
        err.contains("401") || err.to_lowercase().contains("auth"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The raw protocol
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_and_token_responses_follow_the_token_spec() {
    let auth = AuthSetup::new();
    let (reg, imgs) = seeded_upstream(&["myorg/team/app"]).await;
    let img = &imgs[0];
    let m =
        Mirror::start(MirrorOpts::upstream(&reg.url()).extra(&auth.yaml("  token_ttl: 2s\n", "")))
            .await;
    let base = m.url();
    let realm = format!("{base}/auth");

    // Every protected endpoint challenges with the exact scope it needs.
    let scope = "repository:myorg/team/app:pull";
    let mut paths = content_paths("myorg/team/app", img).to_vec();
    paths.push("/v2/myorg/team/app/tags/list".to_string());
    for path in paths {
        let r = m.get_accepting(&path).send().await.unwrap();
        let h = expect_oci_error(r, 401, &["UNAUTHORIZED"]).await;
        assert_eq!(
            header(&h, "www-authenticate"),
            format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\",scope=\"{scope}\""),
            "{path}"
        );
        assert_eq!(
            header(&h, "docker-distribution-api-version"),
            "registry/2.0"
        );
    }
    // The base endpoint: a challenge without a scope.
    let r = m.get("/v2/").send().await.unwrap();
    let h = expect_oci_error(r, 401, &["UNAUTHORIZED"]).await;
    assert_eq!(
        header(&h, "www-authenticate"),
        format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"")
    );
    assert_eq!(upstream_count(&reg, "myorg/team/app").await, 0);

    // The token answer.
    let r = token_get(&base, &[("service", SERVICE), ("scope", scope)], None).await;
    assert_eq!(header(r.headers(), "cache-control"), "no-store");
    let body = json_of(r, 200).await;
    let token = body["token"].as_str().expect("token").to_string();
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], 2, "token_ttl: 2s");
    let issued = humantime::parse_rfc3339(body["issued_at"].as_str().expect("issued_at"))
        .expect("issued_at is RFC 3339");
    let age = SystemTime::now()
        .duration_since(issued)
        .unwrap_or(Duration::ZERO);
    assert!(age < Duration::from_secs(60), "issued_at {issued:?}");
    assert!(body.get("refresh_token").is_none(), "{body}");

    let (hdr, claims) = decode_jwt(&token);
    assert_eq!(hdr["alg"], "RS256");
    assert_eq!(hdr["typ"], "JWT");
    // kid: the libtrust ID of the certificate's key, computed independently; x5c: the cert.
    let kid = libtrust_kid(&spki_der(&auth.keys.cert, true));
    assert_eq!(hdr["kid"], kid.as_str());
    assert_eq!(hdr["x5c"][0], pem_body(&auth.keys.cert).as_str());
    assert_eq!(claims["iss"], "ocimirror");
    assert_eq!(claims["aud"], SERVICE, "aud must be a plain string");
    assert_eq!(claims["sub"], "");
    let iat = claims["iat"].as_i64().expect("integer iat");
    assert_eq!(claims["exp"].as_i64().expect("integer exp") - iat, 2);
    assert_eq!(claims["nbf"].as_i64().expect("integer nbf"), iat);
    assert!((iat - now_secs()).abs() < 60);
    assert!(!claims["jti"].as_str().unwrap_or("").is_empty());
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "myorg/team/app", "actions": ["pull"]}])
    );

    // The token works (the verifier's 60 s leeway covers the 2 s lifetime).
    let r = bearer_get(&format!("{base}/v2/myorg/team/app/manifests/v1"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    let r = bearer_get(&format!("{base}/v2/"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "/v2/ with a valid token");

    // granted = requested ∩ allowed; several scopes in one request.
    for (scopes, creds, granted) in [
        (
            &["repository:myorg/team/app:pull,push"][..],
            None,
            json!([{"type": "repository", "name": "myorg/team/app", "actions": ["pull"]}]),
        ),
        (
            &["repository:myorg/a:pull", "repository:other/b:pull"],
            None,
            json!([{"type": "repository", "name": "myorg/a", "actions": ["pull"]}]),
        ),
        (
            &["repository:myorg/a:pull", "repository:other/b:pull,push"],
            Some(("admin", ADMIN_PW)),
            json!([
                {"type": "repository", "name": "myorg/a", "actions": ["pull"]},
                {"type": "repository", "name": "other/b", "actions": ["pull", "push"]},
            ]),
        ),
    ] {
        let mut params = vec![("service", SERVICE)];
        params.extend(scopes.iter().map(|s| ("scope", *s)));
        let body = json_of(token_get(&base, &params, creds).await, 200).await;
        let (_, c) = decode_jwt(body["token"].as_str().expect("token field"));
        assert_eq!(c["access"], granted, "{scopes:?}");
    }

    // Malformed scopes and a foreign service: 400.
    let bad_scopes = [
        "bad",
        "repository:myorg/app",
        "repository::pull",
        "repository:myorg/app:",
        "repository:myorg/app:pu ll",
    ]
    .map(|scope| [("service", SERVICE), ("scope", scope)]);
    let bad_services = ["registry.docker.io", "", "OCIMIRROR"]
        .map(|svc| [("service", svc), ("scope", "repository:myorg/app:pull")]);
    for params in bad_scopes.iter().chain(&bad_services) {
        let r = token_get(&base, params, None).await;
        let got = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        assert_eq!(got, 400, "{params:?}: {}", text(&body));
        error_codes(&body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_expired_tokens_are_invalid() {
    let auth = AuthSetup::new();
    let (reg, imgs) = seeded_upstream(&["myorg/app", "other/app"]).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).extra(&auth.yaml("", ""))).await;
    let base = m.url();
    let other = format!("{base}/v2/other/app/manifests/v1");
    let scope = "repository:other/app:pull";

    let real = token_ok(&base, "repository:myorg/app:pull", None).await;
    let r = bearer_get(&format!("{base}/v2/myorg/app/manifests/v1"), &real)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the genuine token works");
    let parts: Vec<&str> = real.split('.').collect();
    let (hdr, claims) = decode_jwt(&real);
    let mut grab = claims.clone();
    grab["access"] = json!([{"type": "repository", "name": "other/app", "actions": ["pull"]}]);

    let mut forged: Vec<(&str, String)> = Vec::new();
    // The payload edited to grant other/app, signature kept.
    forged.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], b64(&grab), parts[2]),
    ));
    // alg none, with and without a signature.
    let mut none_hdr = hdr.clone();
    none_hdr["alg"] = json!("none");
    forged.push((
        "alg none, empty signature",
        format!("{}.{}.", b64(&none_hdr), b64(&grab)),
    ));
    forged.push((
        "alg none, old signature",
        format!("{}.{}.{}", b64(&none_hdr), b64(&grab), parts[2]),
    ));
    forged.push((
        "alg none, bare header",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&grab)
        ),
    ));
    // HS256 with the (public) certificate as the HMAC secret.
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = hdr["kid"].as_str().map(str::to_owned);
    forged.push((
        "HS256 keyed with the certificate",
        jsonwebtoken::encode(
            &hs,
            &grab,
            &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(&auth.keys.cert).unwrap()),
        )
        .unwrap(),
    ));
    // Garbage and truncation.
    forged.push(("garbage", "not-a-token".into()));
    forged.push(("two parts", format!("{}.{}", parts[0], parts[1])));
    // Signed with the right key but expired long ago (beyond the 60 s leeway).
    let now = now_secs();
    let kid = hdr["kid"].as_str().unwrap();
    let mut expired = grab.clone();
    expired["iat"] = json!(now - 900);
    expired["nbf"] = json!(now - 900);
    expired["exp"] = json!(now - 600);
    forged.push(("expired", mint_rs256(&auth.keys.key, Some(kid), &expired)));
    // Not valid for another ten minutes.
    let mut early = grab.clone();
    early["iat"] = json!(now + 600);
    early["nbf"] = json!(now + 600);
    early["exp"] = json!(now + 900);
    forged.push((
        "not yet valid",
        mint_rs256(&auth.keys.key, Some(kid), &early),
    ));
    // Right key, wrong audience or issuer.
    let mut aud = grab.clone();
    aud["aud"] = json!("registry.docker.io");
    forged.push((
        "wrong audience",
        mint_rs256(&auth.keys.key, Some(kid), &aud),
    ));
    let mut iss = grab.clone();
    iss["iss"] = json!("somebody else");
    forged.push(("wrong issuer", mint_rs256(&auth.keys.key, Some(kid), &iss)));

    for (what, t) in &forged {
        let r = bearer_get(&other, t).send().await.unwrap();
        expect_invalid_token(r, scope, what).await;
    }
    assert_eq!(
        upstream_count(&reg, "other/app").await,
        0,
        "no forged token reached the upstream"
    );
    assert!(
        m.metric("ocimirror_auth_token_rejected_total", &[]).await >= forged.len() as f64,
        "rejections are counted"
    );

    // Control: the same construction, current and unexpired, is accepted: only the defects
    // above made the difference.
    let mut fresh = grab.clone();
    fresh["iat"] = json!(now);
    fresh["nbf"] = json!(now);
    fresh["exp"] = json!(now + 300);
    let t = mint_rs256(&auth.keys.key, Some(kid), &fresh);
    let r = bearer_get(&other, &t).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "a well-signed current token");
    assert_eq!(r.bytes().await.unwrap(), imgs[1].manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_renew_access_but_never_open_v2() {
    let auth = AuthSetup::new();
    let (reg, imgs) = seeded_upstream(&["other/app"]).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).extra(&auth.yaml("", ""))).await;
    let base = m.url();
    let other = format!("{base}/v2/other/app/manifests/v1");
    let scope = "repository:other/app:pull";

    let admin = [
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", ADMIN_PW),
    ];
    // Password grant, offline: an access token and a refresh token.
    let offline = [("client_id", "auth-tests"), ("access_type", "offline")];
    let r = token_post(&base, &token_form(&admin, &offline, scope)).await;
    let body = json_of(r, 200).await;
    let access = body["access_token"].as_str().expect("access_token");
    let refresh = body["refresh_token"]
        .as_str()
        .expect("refresh_token with access_type=offline")
        .to_string();
    assert_eq!(body["scope"], scope);
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    let r = bearer_get(&other, access).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let (_, rc) = decode_jwt(&refresh);
    assert_eq!(rc["sub"], "admin");
    assert_ne!(
        rc["aud"], SERVICE,
        "a refresh token is for another audience"
    );
    assert!(access_of(&rc).is_empty());

    // A refresh token is no access token.
    let r = bearer_get(&other, &refresh).send().await.unwrap();
    expect_invalid_token(r, scope, "refresh token as bearer").await;
    let r = bearer_get(&format!("{base}/v2/"), &refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "refresh token on /v2/");

    // Redeem it: a new access token for the same account, which works.
    let redeem = [("grant_type", "refresh_token"), ("refresh_token", &refresh)];
    let r = token_post(
        &base,
        &token_form(&redeem, &[("client_id", "auth-tests")], scope),
    )
    .await;
    let body = json_of(r, 200).await;
    let renewed = body["access_token"].as_str().expect("access_token");
    assert_ne!(renewed, access);
    let (_, c) = decode_jwt(renewed);
    assert_eq!(c["sub"], "admin");
    assert_eq!(c["aud"], SERVICE);
    let r = bearer_get(&other, renewed).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), imgs[0].manifest);

    // An access token or garbage is no refresh token; bad forms are 400.
    for bad in [access, "garbage"] {
        let redeem = [("grant_type", "refresh_token"), ("refresh_token", bad)];
        let r = token_post(&base, &token_form(&redeem, &[], scope)).await;
        expect_oci_error(r, 401, &["UNAUTHORIZED"]).await;
    }
    let wrong = [
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", "wrong"),
    ];
    let r = token_post(&base, &token_form(&wrong, &[], scope)).await;
    expect_oci_error(r, 401, &["UNAUTHORIZED"]).await;
    for form in [
        vec![("grant_type", "client_credentials"), ("service", SERVICE)],
        vec![("service", SERVICE), ("scope", scope)],
        vec![("grant_type", "password"), ("username", "admin")],
        vec![("grant_type", "refresh_token"), ("service", SERVICE)],
    ] {
        let r = token_post(&base, &form).await;
        assert_eq!(r.status().as_u16(), 400, "form {form:?}");
    }

    // No refresh token without asking, nor for the anonymous user; GET offline_token=true with
    // Basic gets one.
    let r = token_post(&base, &token_form(&admin, &[], scope)).await;
    assert!(json_of(r, 200).await.get("refresh_token").is_none());
    let r = token_get(
        &base,
        &[
            ("service", SERVICE),
            ("scope", "repository:myorg/app:pull"),
            ("offline_token", "true"),
        ],
        None,
    )
    .await;
    assert!(json_of(r, 200).await.get("refresh_token").is_none());
    let r = token_get(
        &base,
        &[
            ("service", SERVICE),
            ("scope", scope),
            ("offline_token", "true"),
        ],
        Some(("admin", ADMIN_PW)),
    )
    .await;
    let body = json_of(r, 200).await;
    assert!(body["refresh_token"].is_string(), "{body}");
}

// ---------------------------------------------------------------------------------------------
// 3. Interop: Distribution 2.8 accepts ocimirror's tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_accepts_tokens_from_ocimirror_token_server() {
    let auth = AuthSetup::new();
    // Seed Distribution while it is open, then restart it on the same storage with token auth.
    let (mut reg, imgs) = seeded_upstream(&["myorg/app", "other/app"]).await;
    let token_server = Mirror::start(
        MirrorOpts::default()
            .extra(&auth.yaml("", ""))
            .arg("--role")
            .arg("auth"),
    )
    .await;
    reg.restart(RegistryOpts {
        token: Some(RegistryTokenAuth {
            realm: format!("{}/auth", token_server.url()),
            service: SERVICE.into(),
            issuer: "ocimirror".into(),
            rootcertbundle: auth.keys.cert.clone(),
        }),
        ..Default::default()
    })
    .await;

    // Distribution now sends clients to ocimirror for tokens.
    let r = client()
        .get(format!("{}/v2/myorg/app/manifests/v1", reg.url()))
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = header(r.headers(), "www-authenticate").to_string();
    assert!(
        challenge.contains(&format!("realm=\"{}/auth\"", token_server.url()))
            && challenge.contains("service=\"ocimirror\"")
            && challenge.contains("scope=\"repository:myorg/app:pull\""),
        "{challenge}"
    );

    // skopeo pulls from Distribution with ocimirror's tokens (x5c + libtrust kid).
    pull_and_check_oci(&reg.hostport(), &imgs[0], None).await;
    let t = token_ok(&token_server.url(), "repository:myorg/app:pull", None).await;
    let (h, _) = decode_jwt(&t);
    assert!(h["x5c"].is_array() && h["kid"].is_string(), "{h}");
    // The ACL is enforced through Distribution too: anonymous other/app is refused, the admin
    // gets it.
    let err = try_pull(&reg.hostport(), "other/app", None)
        .await
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("denied") || err.contains("401"),
        "{err}"
    );
    pull_and_check_oci(
        &reg.hostport(),
        &imgs[1],
        Some(&format!("admin:{ADMIN_PW}")),
    )
    .await;

    // Tokens without x5c (kid only, libtrust format) from the same key are accepted as well.
    let kid_server = Mirror::start(
        MirrorOpts::default()
            .extra(&auth.yaml("  x5c: false\n", ""))
            .arg("--role")
            .arg("auth"),
    )
    .await;
    let t = token_ok(&kid_server.url(), "repository:myorg/app:pull", None).await;
    let (h, _) = decode_jwt(&t);
    assert!(h.get("x5c").is_none(), "x5c: false: {h}");
    assert_eq!(
        h["kid"],
        libtrust_kid(&spki_der(&auth.keys.cert, true)).as_str()
    );
    let r = bearer_get(&format!("{}/v2/myorg/app/manifests/v1", reg.url()), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "Distribution with a kid-only token"
    );
    assert_eq!(r.bytes().await.unwrap(), imgs[0].manifest);
    // ... and still only for what they grant.
    let r = bearer_get(&format!("{}/v2/other/app/manifests/v1", reg.url()), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "Distribution: scope not granted");
}

// ---------------------------------------------------------------------------------------------
// 4. ocimirror accepts docker_auth-style tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_role_accepts_docker_auth_style_tokens() {
    let dir = TempDir::new().unwrap();
    let key = dir.path().join("server.key");
    let cert = dir.path().join("server.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=Acme auth server",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req");
    let kid = libtrust_kid(&spki_der(&key, false));
    assert_eq!(kid, libtrust_kid(&spki_der(&cert, true)));

    let (reg, imgs) = seeded_upstream(&["myorg/app", "myorg/other"]).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .extra(&format!(
                "auth:\n  realm: \"https://auth.example.com/auth\"\n  trusted_certificates: {}\n  trusted_issuers: [\"Acme auth server\"]\n",
                q(&cert.display().to_string())
            ))
            .arg("--role")
            .arg("registry"),
    )
    .await;
    let base = m.url();
    let r = m.get("/v2/myorg/app/manifests/v1").send().await.unwrap();
    let h = expect_oci_error(r, 401, &["UNAUTHORIZED"]).await;
    assert_eq!(
        header(&h, "www-authenticate"),
        "Bearer realm=\"https://auth.example.com/auth\",service=\"ocimirror\",scope=\"repository:myorg/app:pull\""
    );

    // What docker_auth emits: RS256, kid = libtrust ID, no x5c, aud a string.
    let now = now_secs();
    let claims = |iss: &str, aud: &str| {
        json!({
            "iss": iss,
            "sub": "alice",
            "aud": aud,
            "exp": now + 300,
            "nbf": now - 1,
            "iat": now - 1,
            "jti": "4937466146484213389",
            "access": [{"type": "repository", "name": "myorg/app", "actions": ["pull"]}],
        })
    };
    let tok = mint_rs256(&key, Some(&kid), &claims("Acme auth server", SERVICE));
    let (h, _) = decode_jwt(&tok);
    assert!(h.get("x5c").is_none());

    let r = bearer_get(&format!("{base}/v2/myorg/app/manifests/v1"), &tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), imgs[0].manifest);
    pull_with_token_and_check(&m.hostport(), &imgs[0], &tok).await;
    // Only what it grants.
    let r = bearer_get(&format!("{base}/v2/myorg/other/manifests/v1"), &tok)
        .send()
        .await
        .unwrap();
    expect_oci_error(r, 403, &["DENIED"]).await;
    assert_eq!(upstream_count(&reg, "myorg/other").await, 0);

    // The same token from another issuer or for another audience, or signed by another key
    // under this kid, or naming an unknown kid: refused.
    let stranger = TokenKeys::generate();
    let scope = "repository:myorg/app:pull";
    for (what, t) in [
        (
            "wrong issuer",
            mint_rs256(&key, Some(&kid), &claims("Evil auth server", SERVICE)),
        ),
        (
            "wrong audience",
            mint_rs256(
                &key,
                Some(&kid),
                &claims("Acme auth server", "registry.example"),
            ),
        ),
        (
            "other key under the trusted kid",
            mint_rs256(
                &stranger.key,
                Some(&kid),
                &claims("Acme auth server", SERVICE),
            ),
        ),
        (
            "unknown kid",
            mint_rs256(
                &stranger.key,
                Some(&libtrust_kid(&spki_der(&stranger.cert, true))),
                &claims("Acme auth server", SERVICE),
            ),
        ),
        (
            "no kid",
            mint_rs256(&key, None, &claims("Acme auth server", SERVICE)),
        ),
    ] {
        let r = bearer_get(&format!("{base}/v2/myorg/app/manifests/v1"), &t)
            .send()
            .await
            .unwrap();
        expect_invalid_token(r, scope, what).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 5. upstream.allow
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_allow_list_denies_without_fetching() {
    let (reg, imgs) = seeded_upstream(&["myorg/app", "myorg/team/app", "other/app"]).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).up("allow", "[\"myorg/**\"]")).await;

    let mut paths = content_paths("other/app", &imgs[2]).to_vec();
    // Prefix look-alikes are outside the list too.
    paths.push("/v2/myorgx/app/manifests/v1".to_string());
    for path in paths {
        let r = m.get_accepting(&path).send().await.unwrap();
        expect_oci_error(r, 403, &["DENIED"]).await;
    }
    let r = m
        .head("/v2/other/app/manifests/v1")
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "HEAD");
    assert!(try_pull(&m.hostport(), "other/app", None).await.is_err());

    pull_and_check_oci(&m.hostport(), &imgs[0], None).await;
    pull_and_check_oci(&m.hostport(), &imgs[1], None).await;
    assert_eq!(upstream_count(&reg, "other/app").await, 0);
    assert_eq!(upstream_count(&reg, "myorgx/app").await, 0);
    assert!(upstream_count(&reg, "myorg/team/app").await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_allow_list_denies_tag_lists_too() {
    let (reg, _imgs) = seeded_upstream(&["myorg/app", "other/app"]).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).up("allow", "[\"myorg/**\"]")).await;
    let r = m.get("/v2/other/app/tags/list").send().await.unwrap();
    expect_oci_error(r, 403, &["DENIED"]).await;
    assert_eq!(upstream_count(&reg, "other/app").await, 0);
    let r = m.get("/v2/myorg/app/tags/list").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap(),
        json!({"name": "myorg/app", "tags": ["v1"]})
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Reload
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_reloads_on_file_change_and_sighup_and_refuses_a_broken_file() {
    let auth = AuthSetup::new();
    let opts = MirrorOpts::default().extra(&auth.yaml("", ""));
    let mut m = Mirror::start(opts).await;
    let base = m.url();
    assert!(anonymous_may_pull(&base, "myorg/app").await);
    assert!(!anonymous_may_pull(&base, "other/app").await);

    // Rewrite the file: anonymous may now pull other/**.
    let other_rule =
        "    - match: {account: \"\", name: \"other/**\"}\n      actions: [\"pull\"]\n";
    m.rewrite_config(MirrorOpts::default().extra(&auth.yaml("", other_rule)));
    wait_for("the new ACL", Duration::from_secs(10), || {
        anonymous_may_pull(&base, "other/team/app")
    })
    .await;
    assert!(anonymous_may_pull(&base, "other/app").await);
    assert!(anonymous_may_pull(&base, "myorg/app").await);
    m.wait_log("the reload", |l| l.contains("users and ACL reloaded"))
        .await;

    // A broken file (invalid regex): refused with a logged error, the policy in force stays.
    let broken =
        format!("{other_rule}    - match: {{name: \"/[unclosed/\"}}\n      actions: [\"pull\"]\n");
    m.rewrite_config(MirrorOpts::default().extra(&auth.yaml("", &broken)));
    let log_has_refusal = || async { m.log_text().contains("reload refused") };
    wait_for(
        "the refusal in the log",
        Duration::from_secs(10),
        log_has_refusal,
    )
    .await;
    let log = m.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap()
        .to_string();
    assert!(line.contains("ERROR"), "{line}");
    let refusal = &log[log.find("reload refused").unwrap()..];
    assert!(
        refusal.contains("auth.acl[3].match.name"),
        "the error names the bad entry: {refusal}"
    );
    assert!(
        anonymous_may_pull(&base, "other/app").await,
        "old policy kept"
    );
    assert!(anonymous_may_pull(&base, "myorg/app").await);
    assert!(!anonymous_may_pull(&base, "third/app").await);

    // SIGHUP: put the original ACL in place without changing the file's mtime (so the poller
    // cannot see it), check nothing changes, then signal.
    let cfg = m.config_path();
    let mtime = std::fs::metadata(&cfg).unwrap().modified().unwrap();
    let staged = cfg.with_extension("staged");
    std::fs::write(
        &staged,
        m.render_config(&MirrorOpts::default().extra(&auth.yaml("", ""))),
    )
    .unwrap();
    let f = std::fs::File::options().write(true).open(&staged).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    std::fs::rename(&staged, &cfg).unwrap();
    assert_eq!(std::fs::metadata(&cfg).unwrap().modified().unwrap(), mtime);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        anonymous_may_pull(&base, "other/app").await,
        "no reload without a change of mtime or a signal"
    );
    let reloads = m.log_text().matches("users and ACL reloaded").count();
    let st = Command::new("kill")
        .args(["-HUP", &m.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_for("the SIGHUP reload", Duration::from_secs(10), || async {
        !anonymous_may_pull(&base, "other/app").await
    })
    .await;
    assert!(anonymous_may_pull(&base, "myorg/app").await);
    m.wait_log("the second reload", |l| {
        l.matches("users and ACL reloaded").count() > reloads
    })
    .await;
    // Still serving after the signal.
    let r = m.get("/healthz").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

// ---------------------------------------------------------------------------------------------
// 7. Roles
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_roles_auth_and_registry_processes() {
    let auth = AuthSetup::new();
    let (reg, imgs) = seeded_upstream(&["myorg/app", "other/app"]).await;

    // --role auth: tokens, no /v2.
    let token_server = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .extra(&auth.yaml("", ""))
            .arg("--role")
            .arg("auth"),
    )
    .await;
    let t = token_ok(&token_server.url(), "repository:myorg/app:pull", None).await;
    assert!(!access_of(&decode_jwt(&t).1).is_empty());
    for path in ["/v2/", "/v2/myorg/app/manifests/v1"] {
        let r = token_server.get(path).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "--role auth serves no {path}");
    }
    assert_eq!(
        token_server.get("/healthz").send().await.unwrap().status(),
        200
    );

    // --role registry: /v2 gated by tokens from the other process, no /auth.
    let registry = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .extra(&format!(
                "auth:\n  realm: {}\n  trusted_certificates: {}\n",
                q(&format!("{}/auth", token_server.url())),
                q(&auth.keys.cert.display().to_string())
            ))
            .arg("--role")
            .arg("registry"),
    )
    .await;
    let r = registry
        .get(&format!(
            "/auth?service={SERVICE}&scope=repository:myorg/app:pull"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "--role registry serves no /auth");
    let r = registry.get("/v2/").send().await.unwrap();
    let h = expect_oci_error(r, 401, &["UNAUTHORIZED"]).await;
    assert_eq!(
        header(&h, "www-authenticate"),
        format!(
            "Bearer realm=\"{}/auth\",service=\"{SERVICE}\"",
            token_server.url()
        )
    );
    pull_and_check_oci(&registry.hostport(), &imgs[0], None).await;
    assert!(
        try_pull(&registry.hostport(), "other/app", None)
            .await
            .is_err()
    );
    assert_eq!(upstream_count(&reg, "other/app").await, 0);
    pull_and_check_oci(
        &registry.hostport(),
        &imgs[1],
        Some(&format!("admin:{ADMIN_PW}")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_role_needs_a_realm_and_auth_role_an_auth_section() {
    let keys = TokenKeys::generate();
    let dir = TempDir::new().unwrap();
    let write = |name: &str, yaml: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        p.display().to_string()
    };
    let trusted = format!(
        "auth:\n  trusted_certificates: {}\n",
        q(&keys.cert.display().to_string())
    );

    // role: registry in the file, no realm.
    let f = write("registry.yml", format!("role: registry\n{trusted}"));
    let out = run_bin(&["config", "check", &f], &[]);
    assert!(!out.status.success(), "config check accepted it");
    let err = text(&out.stderr);
    assert!(err.contains("auth.realm"), "{err}");
    // With a realm it is fine.
    let f = write(
        "registry-ok.yml",
        format!("role: registry\n{trusted}  realm: \"https://auth.example.com/auth\"\n"),
    );
    let out = run_bin(&["config", "check", &f], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");

    // --role registry on the command line, no realm: serve refuses to start.
    let f = write("plain.yml", trusted.clone());
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking({
            let f = f.clone();
            let data = data.display().to_string();
            move || {
                run_bin(
                    &[
                        "serve",
                        "--config",
                        &f,
                        "--role",
                        "registry",
                        "--listen",
                        &listen,
                        "--data-dir",
                        &data,
                    ],
                    &[],
                )
            }
        }),
    )
    .await
    .expect("serve without a realm should exit")
    .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("auth.realm"),
        "{}",
        text(&out.stderr)
    );

    // role: auth without an auth section.
    let f = write("auth.yml", "role: auth\n".into());
    let out = run_bin(&["config", "check", &f], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("role"), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// 8. Login throttling
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_client() {
    let auth = AuthSetup::new();
    let m = Mirror::start(MirrorOpts::default().extra(&auth.yaml(
        "  real_ip_header: X-Real-IP\n  trusted_proxies: [127.0.0.1]\n  login_throttle: {max_failures: 5, window: 1m}\n",
        "",
    )))
    .await;
    let url = token_url(
        &m.url(),
        &[("service", SERVICE), ("scope", "repository:myorg/app:pull")],
    );
    let attempt = |ip: &'static str, pw: &'static str| {
        client()
            .get(&url)
            .header("x-real-ip", ip)
            .basic_auth("admin", Some(pw))
            .send()
    };

    for i in 1..=5 {
        let r = attempt("10.1.1.1", "wrong").await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "failure {i}");
    }
    let r = attempt("10.1.1.1", "wrong").await.unwrap();
    let sixth = r.status().as_u16();
    assert!(sixth == 429 || sixth == 401, "6th attempt: {sixth}");
    // Throttled now, even with the right password.
    let r = attempt("10.1.1.1", ADMIN_PW).await.unwrap();
    let h = expect_oci_error(r, 429, &["TOOMANYREQUESTS"]).await;
    let retry: u64 = header(&h, "retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(sixth, 429, "the 6th failure within the window is refused");

    // Another client is not affected.
    let r = attempt("10.2.2.2", ADMIN_PW).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

// ---------------------------------------------------------------------------------------------
// 9. The shipped example
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_seed_config_checks_and_serves() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed.yaml");
    assert!(example.exists(), "{} is missing", example.display());
    let example = example.display().to_string();
    let keys = TokenKeys::generate();
    let key = keys.key.display().to_string();
    let cert = keys.cert.display().to_string();
    let env = [
        ("OCIMIRROR_AUTH__KEY", key.as_str()),
        ("OCIMIRROR_AUTH__CERTIFICATE", cert.as_str()),
    ];
    let out = run_bin(&["config", "check", &example], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");

    // Serve it against a local upstream: anonymous pulls of myorg/** work, the rest is refused.
    let (reg, imgs) = seeded_upstream(&["myorg/app", "myorg/team/app", "other/app"]).await;
    let storage = TempDir::new().unwrap();
    let storage_root = storage.path().display().to_string();
    let m = Mirror::start(
        MirrorOpts::cli(&["--config", &example, "--upstream", &reg.url()])
            .env("OCIMIRROR_AUTH__KEY", &key)
            .env("OCIMIRROR_AUTH__CERTIFICATE", &cert)
            .env("OCIMIRROR_STORAGE__FILESYSTEM__ROOT", &storage_root),
    )
    .await;
    pull_and_check_oci(&m.hostport(), &imgs[0], None).await;
    pull_and_check_oci(&m.hostport(), &imgs[1], None).await;
    assert!(try_pull(&m.hostport(), "other/app", None).await.is_err());
    assert_eq!(upstream_count(&reg, "other/app").await, 0);
    let r = m.get("/v2/myorg/app/manifests/v1").send().await.unwrap();
    let h = expect_oci_error(r, 401, &["UNAUTHORIZED"]).await;
    assert!(header(&h, "www-authenticate").contains(&format!("realm=\"{}/auth\"", m.url())));
}

// ---------------------------------------------------------------------------------------------
// Key rotation and the published JWKS
// ---------------------------------------------------------------------------------------------

/// A rotation as an operator does it: `keygen --jwks --previous-certificate` writes the new key
/// and a key set listing both; a mirror signing with the new key and listing the old one in
/// `previous_keys` keeps accepting the old key's access and refresh tokens and publishes both
/// keys at `/auth/jwks.json`; without `previous_keys` the old tokens are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_tokens_valid_and_publishes_both_keys() {
    let old = AuthSetup::new();
    let (reg, imgs) = seeded_upstream(&["other/app"]).await;
    let scope = "repository:other/app:pull";
    let m1 = Mirror::start(MirrorOpts::upstream(&reg.url()).extra(&old.yaml("", ""))).await;
    let old_access = token_ok(&m1.url(), scope, Some(("admin", ADMIN_PW))).await;
    let r = token_get(
        &m1.url(),
        &[
            ("service", SERVICE),
            ("scope", scope),
            ("offline_token", "true"),
        ],
        Some(("admin", ADMIN_PW)),
    )
    .await;
    let old_refresh = json_of(r, 200).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_jwks = json_of(m1.get("/auth/jwks.json").send().await.unwrap(), 200).await;
    assert_eq!(old_jwks["keys"].as_array().unwrap().len(), 1, "{old_jwks}");
    drop(m1);

    let dir = tempfile::tempdir().unwrap();
    let (key, cert, jwks) = (
        dir.path().join("new.key"),
        dir.path().join("new.crt"),
        dir.path().join("jwks.json"),
    );
    let out = run_bin(
        &[
            "keygen",
            "--key",
            key.to_str().unwrap(),
            "--certificate",
            cert.to_str().unwrap(),
            "--jwks",
            jwks.to_str().unwrap(),
            "--previous-certificate",
            old.keys.cert.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "keygen: {}", text(&out.stderr));
    let file: Value = serde_json::from_slice(&std::fs::read(&jwks).unwrap()).unwrap();
    let kids: Vec<&str> = file["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2, "{file}");
    assert_eq!(
        kids[1], old_jwks["keys"][0]["kid"],
        "the old key's thumbprint"
    );

    let new = AuthSetup {
        keys: TokenKeys::from_files(key, cert),
        admin_hash: old.admin_hash.clone(),
    };
    let rotated = format!(
        "  previous_keys: [{}]\n",
        q(&old.keys.cert.display().to_string())
    );
    let m2 = Mirror::start(MirrorOpts::upstream(&reg.url()).extra(&new.yaml(&rotated, ""))).await;
    let served = json_of(m2.get("/auth/jwks.json").send().await.unwrap(), 200).await;
    assert_eq!(
        served, file,
        "the endpoint and keygen publish the same key set"
    );
    let url = format!("{}/v2/other/app/manifests/v1", m2.url());
    let r = bearer_get(&url, &old_access).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "the old key's access token");
    assert_eq!(r.bytes().await.unwrap(), imgs[0].manifest);
    let r = token_post(
        &m2.url(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &old_refresh),
            ("service", SERVICE),
            ("scope", scope),
        ],
    )
    .await;
    let renewed = json_of(r, 200).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (h, _) = decode_jwt(&renewed);
    assert_eq!(
        h["kid"].as_str().unwrap(),
        libtrust_kid(&spki_der(&new.keys.cert, true)),
        "new tokens are signed with the new key"
    );
    assert_eq!(
        bearer_get(&url, &renewed).send().await.unwrap().status(),
        200
    );
    drop(m2);

    // The old key no longer listed: its tokens are refused.
    let m3 = Mirror::start(MirrorOpts::upstream(&reg.url()).extra(&new.yaml("", ""))).await;
    let url = format!("{}/v2/other/app/manifests/v1", m3.url());
    let r = bearer_get(&url, &old_access).send().await.unwrap();
    expect_invalid_token(r, scope, "a token of a key no longer trusted").await;
    let served = json_of(m3.get("/auth/jwks.json").send().await.unwrap(), 200).await;
    assert_eq!(served["keys"].as_array().unwrap().len(), 1);
}

/// examples/ldap.yaml passes `config check` once its files exist (here: made for the test).
#[test]
fn example_ldap_config_checks() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ldap.yaml");
    let example = example.display().to_string();
    let keys = TokenKeys::generate();
    let pw = keys.key.with_file_name("bind.pw");
    std::fs::write(&pw, "secret\n").unwrap();
    let (key, cert, pw) = (
        keys.key.display().to_string(),
        keys.cert.display().to_string(),
        pw.display().to_string(),
    );
    let env = [
        ("OCIMIRROR_AUTH__KEY", key.as_str()),
        ("OCIMIRROR_AUTH__CERTIFICATE", cert.as_str()),
        ("OCIMIRROR_AUTH__LDAP_AUTH__CA_CERTIFICATE", cert.as_str()),
        ("OCIMIRROR_AUTH__LDAP_AUTH__BIND_PASSWORD_FILE", pw.as_str()),
    ];
    let out = run_bin(&["config", "check", &example], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");
    // Without the bind password file, the problem is named.
    let out = run_bin(&["config", "check", &example], &env[..2]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("auth.ldap_auth."),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Cross-repository blob disclosure through a planted manifest
// ---------------------------------------------------------------------------------------------

const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_NONDISTRIBUTABLE: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// `media_type` manifest over `config` and `layers` (raw descriptor JSON).
fn manifest_json(media_type: &str, config: &Descriptor, layers: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.json(),
        "layers": layers,
    }))
    .unwrap()
}

/// An attacker's manifest planted as `myorg/app:<tag>`: its own config, and for layers the
/// digests and sizes of someone else's blobs, pointing elsewhere.
struct Planted {
    tag: &'static str,
    manifest_type: &'static str,
    config_type: &'static str,
    os: &'static str,
}

impl Planted {
    /// Push it with `p`, the layer descriptors of `secret` typed `layer_type(i)`; its bytes.
    async fn push(
        &self,
        p: &Pusher,
        secret: &[Descriptor],
        layer_type: impl Fn(usize) -> &'static str,
    ) -> Vec<u8> {
        let config = format!(
            r#"{{"architecture":"amd64","os":"{}","rootfs":{{"type":"layers"}}}}"#,
            self.os
        )
        .into_bytes();
        let config_d = Descriptor::of(self.config_type, &config);
        p.push_blob("myorg/app", config.into()).await;
        let layers = secret
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({"mediaType": layer_type(i), "digest": d.digest, "size": d.size,
                       "urls": ["http://127.0.0.1:9/layer.tar.gz"]})
            })
            .collect();
        let manifest = manifest_json(self.manifest_type, &config_d, layers);
        p.push_manifest("myorg/app", self.tag, self.manifest_type, &manifest)
            .await;
        manifest
    }
}

/// The attack of issue "cross-repository blob disclosure": a private image pulled by its user,
/// and on a second upstream (a real Distribution accepting foreign layers) an attacker's
/// manifests whose foreign-layer / cross-repository descriptors carry the private image's
/// digests and sizes. Anonymously, under the attacker's repository only, the attacker gets the
/// manifests but never the private bytes, before or after the victim's pull; a legitimate image
/// on that upstream sharing a base layer is served once that upstream confirms the layer under
/// its own name, and the confirmation is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_manifest_on_a_second_upstream_cannot_read_a_private_images_blobs() {
    if !tool_or_skip(
        std::process::Command::new("skopeo")
            .arg("--version")
            .output()
            .is_ok(),
        "skopeo",
        "apt-get install skopeo",
    ) {
        return;
    }
    // up1: the default upstream, private (Basic auth), holding myorg/legacy.
    let up1 = Registry::start(RegistryOpts {
        auth: Some(("puller".into(), "up1-pass".into())),
        ..Default::default()
    })
    .await;
    let legacy = up1
        .pusher()
        .push_image(
            "myorg/legacy",
            "v1",
            &build_image(Kind::Oci, 2001, &[4 << 10, 64 << 10], "amd64", "linux"),
        )
        .await;
    // up2: anyone may push there (the attacker did), foreign layers accepted.
    let up2 = Registry::start(RegistryOpts {
        allow_urls: true,
        ..Default::default()
    })
    .await;
    let p2 = up2.pusher();
    let secret: Vec<Descriptor> = legacy.all_blobs();
    // Docker schema 2 with foreign layers.
    let evil = Planted {
        tag: "evil",
        manifest_type: DOCKER_MANIFEST,
        config_type: DOCKER_CONFIG,
        os: "windows",
    }
    .push(&p2, &secret, |_| DOCKER_FOREIGN)
    .await;
    // OCI with non-distributable and plain layer descriptors pointing elsewhere.
    let evil_oci = Planted {
        tag: "evil-oci",
        manifest_type: OCI_MANIFEST,
        config_type: OCI_CONFIG,
        os: "linux",
    }
    .push(&p2, &secret, |i| {
        if i % 2 == 0 {
            OCI_NONDISTRIBUTABLE
        } else {
            OCI_LAYER_GZIP
        }
    })
    .await;
    // A legitimate image on up2 sharing legacy's base layer (really pushed there).
    let own = build_image(Kind::Oci, 2002, &[8 << 10], "amd64", "linux");
    let base = legacy.layers[0].clone();
    p2.push_blob("myorg/base-user", legacy.blob(&base.digest).clone())
        .await;
    let mut legit = own.clone();
    legit.layers.insert(0, base.clone());
    legit
        .blobs
        .insert(base.digest.clone(), legacy.blob(&base.digest).clone());
    legit.manifest = manifest_json(
        OCI_MANIFEST,
        &legit.config,
        legit.layers.iter().map(|d| d.json()).collect(),
    );
    legit.digest = sha256_digest(&legit.manifest);
    let legit = p2.push_image("myorg/base-user", "v1", &legit).await;

    // The mirror: alice may pull everything, anonymous only what lives on up2.
    let keys = TokenKeys::generate();
    let alice_pw = "alice-Pw-1";
    let m = Mirror::start(
        MirrorOpts::upstream(&up1.url())
            .up("username", "puller")
            .up("password", "up1-pass")
            .extra(&format!(
                "upstreams:\n  - name: up2\n    url: {}\n\
                 auth:\n  key: {}\n  certificate: {}\n  users:\n    \"\": {{}}\n    alice:\n      password: {}\n  acl:\n    - match: {{account: \"alice\"}}\n      actions: [\"pull\"]\n    - match: {{account: \"\", name: \"up2/**\"}}\n      actions: [\"pull\"]\n",
                q(&up2.url()),
                q(&keys.key.display().to_string()),
                q(&keys.cert.display().to_string()),
                q(&hash_password(alice_pw)),
            )),
    )
    .await;
    let base_url = m.url();
    let attacker = token_ok(&base_url, "repository:up2/myorg/app:pull", None).await;
    let get = |path: String| bearer_get(&format!("{base_url}{path}"), &attacker);
    let ask_secrets = |what: &'static str| {
        let secret = secret.clone();
        let attacker = attacker.clone();
        let base_url = base_url.clone();
        async move {
            for d in &secret {
                let url = format!("{base_url}/v2/up2/myorg/app/blobs/{}", d.digest);
                let r = bearer_get(&url, &attacker).send().await.unwrap();
                expect_oci_error(r, 404, &["BLOB_UNKNOWN"]).await;
                let r = client()
                    .head(&url)
                    .bearer_auth(&attacker)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 404, "{what}: HEAD {}", d.digest);
            }
        }
    };

    // The attacker plants the claims before the victim's pull: the manifests are served as
    // they are (a manifest is content, and up2 holds them).
    for (tag, body) in [("evil", &evil), ("evil-oci", &evil_oci)] {
        let r = get(format!("/v2/up2/myorg/app/manifests/{tag}"))
            .header("accept", ACCEPT_MANIFESTS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{tag}");
        assert_eq!(&r.bytes().await.unwrap()[..], &body[..]);
    }
    ask_secrets("before the victim's pull").await;

    // The victim pulls the private image with skopeo; it is cached whole.
    pull_and_check_oci(&m.hostport(), &legacy, Some(&format!("alice:{alice_pw}"))).await;
    for d in &secret {
        assert!(blob_data_path(&m.storage_root(), &d.digest).exists());
    }

    // Now the blobs are stored: still refused under the attacker's name, with or without
    // fetching the manifests again; the private repository itself is denied.
    ask_secrets("after the victim's pull").await;
    for tag in ["evil", "evil-oci"] {
        let r = get(format!("/v2/up2/myorg/app/manifests/{tag}"))
            .header("accept", ACCEPT_MANIFESTS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    ask_secrets("after fetching the manifests again").await;
    let r = get(format!("/v2/myorg/legacy/blobs/{}", secret[1].digest))
        .send()
        .await
        .unwrap();
    expect_oci_error(r, 403, &["DENIED"]).await;
    // Each refusal was up2's answer under the attacker's repository (never a fetch of a
    // descriptor's URL, nothing asked of up1 under that name).
    for d in &secret {
        let asked = up2
            .count_requests("", &format!("/v2/myorg/app/blobs/{}", d.digest))
            .await;
        assert!(asked >= 1, "up2 asked about {}", d.digest);
    }
    assert_eq!(up1.count_requests("", "/v2/myorg/app/").await, 0);
    // Nothing links the private digests anywhere but under myorg/legacy.
    let repos = m.storage_root().join("docker/registry/v2/repositories");
    for f in files_under(&repos) {
        let p = f.display().to_string();
        if p.contains("/_layers/") && secret.iter().any(|d| p.contains(hex_of(&d.digest))) {
            assert!(p.contains("/myorg/legacy/"), "planted link {p}");
        }
    }

    // A legitimate image on up2 sharing the base layer pulls anonymously: up2 confirms the
    // layer under its name with a HEAD, the bytes come from storage, and the confirmation is
    // kept (a second pull asks nothing about that layer).
    let shared = format!("/v2/myorg/base-user/blobs/{}", base.digest);
    pull_and_check_oci(&format!("{}/up2", m.hostport()), &legit, None).await;
    assert_eq!(
        up2.count_requests("GET", &shared).await,
        0,
        "served from storage"
    );
    let heads = up2.count_requests("HEAD", &shared).await;
    assert_eq!(heads, 1, "confirmed once under myorg/base-user");
    pull_and_check_oci(&format!("{}/up2", m.hostport()), &legit, None).await;
    assert_eq!(
        up2.count_requests("", &shared).await,
        heads,
        "confirmation kept"
    );
}
