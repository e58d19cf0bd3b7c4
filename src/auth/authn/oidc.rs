//! OpenID Connect: the password is an ID token (a JWT) from a configured issuer.
//!
//! docker_auth runs a browser flow and stores its own tokens; here a client (typically CI with a
//! workload identity, or a user with a helper) sends the ID token itself as the password. It is
//! verified against the issuer's JWKS (RS256/384/512, PS256/384/512, ES256/384, EdDSA; never HMAC
//! or `none`, and never a key embedded in the token), with `iss` equal to `issuer`, `aud`
//! containing `client_id` (and `azp`, if present on a multi-audience token, equal to it), `exp`
//! required and `nbf` honoured, with 60 s leeway. The JWKS comes from `jwks_url` or from the
//! issuer's discovery document; it is cached, refetched when a token names an unknown key (at
//! most once a minute; 5 s after a failed fetch) and after an hour.
//!
//! Decisions:
//! - The user name must equal the `username_claim` of the token (ASCII case-insensitive for
//!   `email`, exact otherwise), as docker_auth requires a token to belong to the user logging
//!   in: the account in the issued registry token is then the name the client asked for.
//! - With `username_claim: email`, a token whose `email_verified` is `false` is refused.
//! - A password that is not a JWT, or a JWT from another issuer (read before verification, only
//!   to route it), is not this authenticator's: `Ok(None)`.
//! - Successes are not cached by the chain: a check is a local signature verification, and a
//!   cached success could outlive the token's `exp`.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::{
    Authenticator, AuthnError, Clock, ConfigProblem, describe_reqwest, parse_service_url,
    parse_timeout, provider_client, read_body,
};
use crate::auth::Identity;

const MAX_RESPONSE: usize = 1024 * 1024;
/// Refetch the JWKS for an unknown key at most this often.
const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// After a failed fetch, try again this soon.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Refetch a JWKS this old before using it (keys may have been withdrawn).
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
const LEEWAY_SECS: u64 = 60;

/// What an RSA key may verify: PKCS#1 v1.5 and PSS signatures.
const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Whether an ID token may be signed with `alg`.
fn accepted(alg: Algorithm) -> bool {
    RSA_ALGORITHMS.contains(&alg)
        || matches!(alg, Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA)
}

/// The `oidc_auth` config section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer, exactly as in the tokens' `iss` (and the discovery document).
    pub issuer: String,
    /// The audience the tokens must be for.
    pub client_id: String,
    /// Where the signing keys are; if unset, `jwks_uri` of `{issuer}/.well-known/openid-configuration`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// The claim that must equal the user name, and becomes the account.
    pub username_claim: String,
    /// The claim whose strings become the label `groups`.
    pub groups_claim: String,
    pub http_timeout: String,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            client_id: String::new(),
            jwks_url: None,
            username_claim: "email".into(),
            groups_claim: "groups".into(),
            http_timeout: "10s".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub jwks_url: Option<Url>,
    pub username_claim: String,
    pub groups_claim: String,
    pub http_timeout: Duration,
}

impl OidcConfig {
    /// Validate; `prefix` is the section's key path, for problem reports.
    pub fn settings(&self, prefix: &str) -> Result<OidcSettings, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let key = |k: &str| format!("{prefix}.{k}");
        if self.issuer.is_empty() {
            problems.push(ConfigProblem::new(key("issuer"), "must be set"));
        } else {
            parse_service_url(&key("issuer"), &self.issuer, &mut problems);
        }
        if self.client_id.is_empty() {
            problems.push(ConfigProblem::new(key("client_id"), "must be set"));
        }
        let jwks_url = self
            .jwks_url
            .as_deref()
            .and_then(|u| parse_service_url(&key("jwks_url"), u, &mut problems));
        for (k, v) in [
            ("username_claim", &self.username_claim),
            ("groups_claim", &self.groups_claim),
        ] {
            if v.is_empty() {
                problems.push(ConfigProblem::new(key(k), "must not be empty"));
            }
        }
        let timeout = parse_timeout(&key("http_timeout"), &self.http_timeout, &mut problems);
        match timeout {
            Some(http_timeout) if problems.is_empty() => Ok(OidcSettings {
                issuer: self.issuer.clone(),
                client_id: self.client_id.clone(),
                jwks_url,
                username_claim: self.username_claim.clone(),
                groups_claim: self.groups_claim.clone(),
                http_timeout,
            }),
            _ => Err(problems),
        }
    }
}

struct Key {
    kid: Option<String>,
    /// The algorithms this key may verify.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

struct KeySet {
    keys: Vec<Key>,
    fetched: Instant,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        let mut usable = self.keys.iter().filter(|k| k.algorithms.contains(&alg));
        match kid {
            Some(kid) => usable.find(|k| k.kid.as_deref() == Some(kid)),
            // Without a kid, only an unambiguous key will do.
            None => {
                let first = usable.next()?;
                usable.next().is_none().then_some(first)
            }
        }
    }
}

#[derive(Default)]
struct FetchState {
    /// From the config or discovery.
    jwks_uri: Option<Url>,
    last_attempt: Option<(Instant, bool)>,
}

/// What a JWKS entry may verify, or None for keys we never use.
fn key_algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGORITHMS.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => vec![],
    };
    match jwk.common.key_algorithm {
        None => by_type,
        Some(ka) => match Algorithm::try_from(ka) {
            Ok(a) if by_type.contains(&a) => vec![a],
            _ => vec![],
        },
    }
}

fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(Deserialize)]
    struct Jwks {
        keys: Vec<Value>,
    }
    let jwks: Jwks = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for v in jwks.keys {
        if v.get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        // Unknown key types are skipped, not fatal: providers publish keys we do not use.
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        let algorithms = key_algorithms(&jwk);
        if algorithms.is_empty() {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    if keys.is_empty() {
        return Err("no usable signing keys in the JWKS".into());
    }
    Ok(keys)
}

/// The payload of a compact JWT, unverified: only to route it by issuer.
fn unverified_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

pub struct OidcAuthenticator {
    settings: OidcSettings,
    client: reqwest::Client,
    clock: Clock,
    keys: RwLock<Option<KeySet>>,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl std::fmt::Debug for OidcAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuthenticator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

enum Lookup {
    Found(DecodingKey),
    Unknown,
}

impl OidcAuthenticator {
    pub fn new(settings: OidcSettings) -> Result<Self, ConfigProblem> {
        Self::with_clock(settings, Clock::system())
    }

    pub fn with_clock(settings: OidcSettings, clock: Clock) -> Result<Self, ConfigProblem> {
        let client = provider_client("oidc_auth", settings.http_timeout)?;
        let fetch = FetchState {
            jwks_uri: settings.jwks_url.clone(),
            last_attempt: None,
        };
        Ok(OidcAuthenticator {
            settings,
            client,
            clock,
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(fetch),
        })
    }

    async fn get_json(&self, url: &Url) -> Result<Vec<u8>, String> {
        let resp = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| describe_reqwest(&e))?;
        metrics::counter!(crate::metrics::AUTHN_OIDC_REQUESTS, "status" => resp.status().as_u16().to_string())
            .increment(1);
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        read_body(resp, MAX_RESPONSE).await
    }

    async fn discover(&self) -> Result<Url, String> {
        let base = self.settings.issuer.trim_end_matches('/');
        let url = Url::parse(&format!("{base}/.well-known/openid-configuration"))
            .map_err(|e| format!("discovery URL: {e}"))?;
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let d: Discovery = serde_json::from_slice(&self.get_json(&url).await?)
            .map_err(|e| format!("{url}: not a discovery document: {e}"))?;
        if d.issuer != self.settings.issuer {
            return Err(format!(
                "{url}: the document is for issuer {:?}, not {:?}",
                d.issuer, self.settings.issuer
            ));
        }
        let mut problems = Vec::new();
        parse_service_url("jwks_uri", &d.jwks_uri, &mut problems)
            .ok_or_else(|| format!("{url}: unusable jwks_uri: {}", problems[0].message))
    }

    async fn fetch_keys(&self, state: &mut FetchState) -> Result<(), String> {
        let uri = match &state.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let u = self.discover().await?;
                state.jwks_uri = Some(u.clone());
                u
            }
        };
        let keys = parse_jwks(&self.get_json(&uri).await?).map_err(|e| format!("{uri}: {e}"))?;
        tracing::info!(jwks = %uri, keys = keys.len(), "fetched OIDC signing keys");
        *super::lock_write(&self.keys) = Some(KeySet {
            keys,
            fetched: self.clock.now(),
        });
        Ok(())
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm, fresh_only: bool) -> Option<Lookup> {
        let keys = super::lock_read(&self.keys);
        let set = keys.as_ref()?;
        if fresh_only && set.fetched + JWKS_MAX_AGE <= self.clock.now() {
            return None;
        }
        Some(match set.find(kid, alg) {
            Some(k) => Lookup::Found(k.key.clone()),
            None => Lookup::Unknown,
        })
    }

    /// The key for `kid`/`alg`, fetching the JWKS if there is none, it is stale, or the key is
    /// unknown (rate-limited). `Ok(None)`: no such key.
    async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<DecodingKey>, AuthnError> {
        if let Some(Lookup::Found(k)) = self.lookup(kid, alg, true) {
            return Ok(Some(k));
        }
        let mut state = self.fetch.lock().await;
        // Another request may have fetched while we waited.
        if let Some(Lookup::Found(k)) = self.lookup(kid, alg, true) {
            return Ok(Some(k));
        }
        let now = self.clock.now();
        let may_fetch = match state.last_attempt {
            None => true,
            Some((at, ok)) => {
                at + if ok {
                    REFETCH_INTERVAL
                } else {
                    RETRY_AFTER_FAILURE
                } <= now
            }
        };
        let fetch_error = if may_fetch {
            let r = self.fetch_keys(&mut state).await;
            state.last_attempt = Some((now, r.is_ok()));
            r.err()
        } else {
            None
        };
        if let Some(e) = &fetch_error {
            tracing::warn!(issuer = self.settings.issuer, error = %e, "fetching OIDC signing keys failed");
        }
        // After a failed refresh, stale keys are better than none.
        match self.lookup(kid, alg, false) {
            Some(Lookup::Found(k)) => Ok(Some(k)),
            Some(Lookup::Unknown) => Ok(None),
            None => Err(AuthnError::Unavailable(format!(
                "OIDC signing keys of {}: {}",
                self.settings.issuer,
                fetch_error.unwrap_or_else(|| "not fetched yet; retrying shortly".into())
            ))),
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_audience(&[&self.settings.client_id]);
        v.set_issuer(&[&self.settings.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v
    }

    fn refuse(&self, user: &str, why: &str) -> Result<Option<Identity>, AuthnError> {
        tracing::info!(
            user,
            issuer = self.settings.issuer,
            why,
            "OIDC token refused"
        );
        Err(AuthnError::WrongPassword)
    }
}

#[async_trait]
impl Authenticator for OidcAuthenticator {
    fn name(&self) -> &'static str {
        "oidc"
    }

    fn cacheable(&self) -> bool {
        false
    }

    async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<Identity>, AuthnError> {
        let Some(claims) = unverified_claims(password) else {
            return Ok(None);
        };
        if claims.get("iss").and_then(Value::as_str) != Some(self.settings.issuer.as_str()) {
            return Ok(None);
        }
        let Ok(header) = jsonwebtoken::decode_header(password) else {
            return self.refuse(user, "malformed header");
        };
        if !accepted(header.alg) {
            return self.refuse(user, "algorithm not allowed");
        }
        let Some(key) = self.key(header.kid.as_deref(), header.alg).await? else {
            return self.refuse(user, "unknown signing key");
        };
        let claims =
            match jsonwebtoken::decode::<Value>(password, &key, &self.validation(header.alg)) {
                Ok(t) => t.claims,
                Err(e) => {
                    let why = format!("{:?}", e.kind());
                    return self.refuse(user, &why);
                }
            };
        // OIDC Core 3.1.3.7: with several audiences, azp (if present) must be us.
        if let (Some(Value::Array(aud)), Some(azp)) = (claims.get("aud"), claims.get("azp"))
            && aud.len() > 1
            && azp.as_str() != Some(self.settings.client_id.as_str())
        {
            return self.refuse(user, "azp is another client");
        }
        let claim = self.settings.username_claim.as_str();
        let Some(name) = claims.get(claim).and_then(Value::as_str) else {
            return self.refuse(user, "no username claim");
        };
        let matches = if claim == "email" {
            name.eq_ignore_ascii_case(user)
        } else {
            name == user
        };
        if !matches {
            return self.refuse(user, "token is for another user");
        }
        if claim == "email" && claims.get("email_verified") == Some(&Value::Bool(false)) {
            return self.refuse(user, "email not verified");
        }
        let groups: Vec<String> = match claims.get(&self.settings.groups_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let mut labels = BTreeMap::new();
        if !groups.is_empty() {
            labels.insert("groups".to_owned(), groups);
        }
        Ok(Some(Identity {
            account: name.to_owned(),
            labels,
            // Validated above: a refresh token for this login ends with the ID token.
            valid_until: claims.get("exp").and_then(Value::as_i64),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::authn::tests::ip;
    use crate::auth::authn::{Chain, ChainSettings};
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use axum::Json;
    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    struct Signer {
        key: EncodingKey,
        alg: Algorithm,
        kid: String,
    }

    impl Signer {
        fn jwk(&self) -> Value {
            let mut jwk =
                serde_json::to_value(Jwk::from_encoding_key(&self.key, self.alg).unwrap()).unwrap();
            jwk["kid"] = json!(self.kid);
            jwk["use"] = json!("sig");
            jwk
        }

        fn sign(&self, claims: &Value) -> String {
            let mut h = Header::new(self.alg);
            h.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&h, claims, &self.key).unwrap()
        }
    }

    fn rsa_pem() -> &'static [u8] {
        // RSA key generation is slow; one key serves every test.
        static PEM: OnceLock<Vec<u8>> = OnceLock::new();
        PEM.get_or_init(|| {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).unwrap();
            let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
            let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
            for chunk in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(chunk).unwrap());
                pem.push('\n');
            }
            pem.push_str("-----END PRIVATE KEY-----\n");
            pem.into_bytes()
        })
    }

    fn rsa(kid: &str) -> Signer {
        Signer {
            key: EncodingKey::from_rsa_pem(rsa_pem()).unwrap(),
            alg: Algorithm::RS256,
            kid: kid.into(),
        }
    }

    fn ec(kid: &str) -> Signer {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = kp.to_pkcs8v1().unwrap();
        Signer {
            key: EncodingKey::from_ec_der(der.as_ref()),
            alg: Algorithm::ES256,
            kid: kid.into(),
        }
    }

    #[derive(Default)]
    struct Idp {
        issuer: Mutex<String>,
        keys: Mutex<Vec<Value>>,
        jwks_calls: AtomicUsize,
        discovery_calls: AtomicUsize,
        down: AtomicBool,
    }

    async fn discovery(State(idp): State<Arc<Idp>>) -> Response {
        idp.discovery_calls.fetch_add(1, Ordering::SeqCst);
        let issuer = idp.issuer.lock().unwrap().clone();
        Json(json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/keys"),
            "authorization_endpoint": format!("{issuer}/auth"),
        }))
        .into_response()
    }

    async fn jwks(State(idp): State<Arc<Idp>>) -> Response {
        idp.jwks_calls.fetch_add(1, Ordering::SeqCst);
        if idp.down.load(Ordering::SeqCst) {
            return StatusCode::BAD_GATEWAY.into_response();
        }
        let mut keys = idp.keys.lock().unwrap().clone();
        // Keys we must skip without failing: an HMAC secret, an encryption key, an odd type.
        keys.push(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}));
        keys.push(json!({"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"}));
        keys.push(json!({"kty": "weird", "kid": "w"}));
        Json(json!({ "keys": keys })).into_response()
    }

    /// A stand-in issuer at `http://127.0.0.1:PORT/realm` with discovery and JWKS.
    async fn issuer(signers: &[&Signer]) -> (Arc<Idp>, String) {
        let idp = Arc::new(Idp::default());
        *idp.keys.lock().unwrap() = signers.iter().map(|s| s.jwk()).collect();
        let router = Router::new()
            .route("/realm/.well-known/openid-configuration", get(discovery))
            .route("/realm/keys", get(jwks))
            .with_state(idp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/realm", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        *idp.issuer.lock().unwrap() = base.clone();
        (idp, base)
    }

    fn authn(issuer: &str, f: impl FnOnce(&mut OidcConfig)) -> (OidcAuthenticator, Clock) {
        let mut cfg = OidcConfig {
            issuer: issuer.into(),
            client_id: "ocimirror".into(),
            http_timeout: "2s".into(),
            ..OidcConfig::default()
        };
        f(&mut cfg);
        let clock = Clock::manual();
        let a = OidcAuthenticator::with_clock(cfg.settings("oidc_auth").unwrap(), clock.clone())
            .unwrap();
        (a, clock)
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn claims(issuer: &str) -> Value {
        json!({
            "iss": issuer,
            "aud": "ocimirror",
            "sub": "248289761001",
            "email": "Jane@Example.com",
            "email_verified": true,
            "preferred_username": "jane",
            "groups": ["devs", "ops"],
            "iat": now(),
            "exp": now() + 300,
        })
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x;
        }
        v
    }

    #[tokio::test]
    async fn rs256_and_es256_tokens_via_discovery() {
        let (r, e) = (rsa("r1"), ec("e1"));
        let (idp, iss) = issuer(&[&r, &e]).await;
        let (a, _) = authn(&iss, |_| {});
        let id = a
            .authenticate("jane@example.com", &r.sign(&claims(&iss)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id.account, "Jane@Example.com");
        assert_eq!(id.labels["groups"], vec!["devs", "ops"]);
        let id = a
            .authenticate("Jane@Example.com", &e.sign(&claims(&iss)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id.account, "Jane@Example.com");
        assert_eq!(idp.discovery_calls.load(Ordering::SeqCst), 1);
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 1, "JWKS not cached");
        assert!(!a.cacheable());
    }

    #[tokio::test]
    async fn explicit_jwks_url_other_claims_and_string_groups() {
        let r = rsa("r1");
        let (idp, iss) = issuer(&[&r]).await;
        let (a, _) = authn(&iss, |c| {
            c.jwks_url = Some(format!("{iss}/keys"));
            c.username_claim = "preferred_username".into();
            c.groups_claim = "roles".into();
        });
        let t = r.sign(&with(claims(&iss), "roles", json!("admin")));
        let id = a.authenticate("jane", &t).await.unwrap().unwrap();
        assert_eq!(id.account, "jane");
        assert_eq!(id.labels["groups"], vec!["admin"]);
        // Exact match for claims other than email.
        assert_eq!(
            a.authenticate("Jane", &t).await,
            Err(AuthnError::WrongPassword)
        );
        assert_eq!(idp.discovery_calls.load(Ordering::SeqCst), 0);
        let (a, _) = authn(&iss, |c| c.username_claim = "sub".into());
        let id = a.authenticate("248289761001", &t).await.unwrap().unwrap();
        assert_eq!(id.account, "248289761001");
        assert_eq!(id.labels["groups"], vec!["devs", "ops"]);
    }

    #[tokio::test]
    async fn refusals() {
        let (r, other) = (rsa("r1"), ec("r1"));
        let (_, iss) = issuer(&[&r]).await;
        let (a, _) = authn(&iss, |_| {});
        let c = claims(&iss);
        let wrong = |t: String, user: &'static str| {
            let a = &a;
            async move { a.authenticate(user, &t).await }
        };
        let jane = "jane@example.com";
        for (what, token, user) in [
            ("another user", r.sign(&c), "john@example.com"),
            (
                "expired",
                r.sign(&with(c.clone(), "exp", json!(now() - 120))),
                jane,
            ),
            (
                "not yet valid",
                r.sign(&with(c.clone(), "nbf", json!(now() + 120))),
                jane,
            ),
            ("no exp", r.sign(&with(c.clone(), "exp", Value::Null)), jane),
            (
                "other audience",
                r.sign(&with(c.clone(), "aud", json!("someone-else"))),
                jane,
            ),
            (
                "no audience",
                r.sign(&with(c.clone(), "aud", Value::Null)),
                jane,
            ),
            (
                "azp of another client",
                r.sign(&with(
                    with(c.clone(), "aud", json!(["ocimirror", "x"])),
                    "azp",
                    json!("x"),
                )),
                jane,
            ),
            (
                "unverified email",
                r.sign(&with(c.clone(), "email_verified", json!(false))),
                jane,
            ),
            (
                "no email",
                r.sign(&with(c.clone(), "email", Value::Null)),
                jane,
            ),
            // Same kid, another key: the signature does not verify.
            ("forged", other.sign(&c), jane),
            (
                "hmac",
                jsonwebtoken::encode(
                    &Header {
                        kid: Some("hmac".into()),
                        ..Header::new(Algorithm::HS256)
                    },
                    &c,
                    &EncodingKey::from_secret(b"secret"),
                )
                .unwrap(),
                jane,
            ),
            (
                "tampered",
                {
                    let t = r.sign(&c);
                    let mut parts: Vec<&str> = t.split('.').collect();
                    let forged = URL_SAFE_NO_PAD.encode(
                        serde_json::to_vec(&with(c.clone(), "groups", json!(["admins"]))).unwrap(),
                    );
                    parts[1] = &forged;
                    parts.join(".")
                },
                jane,
            ),
        ] {
            assert_eq!(
                wrong(token, user).await,
                Err(AuthnError::WrongPassword),
                "{what}"
            );
        }
        // Within the leeway.
        let t = r.sign(&with(c.clone(), "exp", json!(now() - 30)));
        assert!(a.authenticate(jane, &t).await.unwrap().is_some());
        let t = r.sign(&with(
            with(c.clone(), "aud", json!(["x", "ocimirror"])),
            "azp",
            json!("ocimirror"),
        ));
        assert!(a.authenticate(jane, &t).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn not_ours() {
        let r = rsa("r1");
        let (idp, iss) = issuer(&[&r]).await;
        let (a, _) = authn(&iss, |_| {});
        for p in [
            "hunter2",
            "a.b",
            "a.b.c.d",
            "ghp_0000000000000000000000000000000000",
        ] {
            assert_eq!(a.authenticate("jane", p).await, Ok(None), "{p}");
        }
        let t = r.sign(&with(
            claims(&iss),
            "iss",
            json!("https://elsewhere.example.com"),
        ));
        assert_eq!(a.authenticate("jane@example.com", &t).await, Ok(None));
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_most_once_a_minute() {
        let (r1, e2, e3) = (rsa("r1"), ec("e2"), ec("e3"));
        let (idp, iss) = issuer(&[&r1]).await;
        let (a, clock) = authn(&iss, |_| {});
        let jane = "jane@example.com";
        let c = claims(&iss);
        a.authenticate(jane, &r1.sign(&c)).await.unwrap().unwrap();
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 1);
        // Rotation: a new key appears; the unknown kid triggers one refetch.
        clock.advance(REFETCH_INTERVAL);
        idp.keys.lock().unwrap().push(e2.jwk());
        a.authenticate(jane, &e2.sign(&c)).await.unwrap().unwrap();
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 2);
        // Another new key within the minute: refused without a fetch, however often asked.
        idp.keys.lock().unwrap().push(e3.jwk());
        for _ in 0..5 {
            assert_eq!(
                a.authenticate(jane, &e3.sign(&c)).await,
                Err(AuthnError::WrongPassword)
            );
        }
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 2);
        clock.advance(REFETCH_INTERVAL);
        a.authenticate(jane, &e3.sign(&c)).await.unwrap().unwrap();
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 3);
        // A kid that never exists costs one fetch a minute at most.
        let ghost = ec("ghost");
        for _ in 0..3 {
            assert_eq!(
                a.authenticate(jane, &ghost.sign(&c)).await,
                Err(AuthnError::WrongPassword)
            );
        }
        assert_eq!(
            idp.jwks_calls.load(Ordering::SeqCst),
            3,
            "within the minute of the last fetch"
        );
        // Known keys are served from the cache meanwhile; after an hour the set is refreshed.
        a.authenticate(jane, &r1.sign(&c)).await.unwrap().unwrap();
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 3);
        clock.advance(JWKS_MAX_AGE);
        a.authenticate(jane, &r1.sign(&c)).await.unwrap().unwrap();
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn provider_outages() {
        let r = rsa("r1");
        let (idp, iss) = issuer(&[&r]).await;
        let (a, clock) = authn(&iss, |_| {});
        let jane = "jane@example.com";
        let t = r.sign(&claims(&iss));
        idp.down.store(true, Ordering::SeqCst);
        match a.authenticate(jane, &t).await {
            Err(AuthnError::Unavailable(m)) => assert!(m.contains("502"), "{m}"),
            other => panic!("{other:?}"),
        }
        // No refetch storm while down.
        assert!(matches!(
            a.authenticate(jane, &t).await,
            Err(AuthnError::Unavailable(_))
        ));
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 1);
        idp.down.store(false, Ordering::SeqCst);
        clock.advance(RETRY_AFTER_FAILURE);
        a.authenticate(jane, &t).await.unwrap().unwrap();
        // Down again after an hour: the stale keys still verify.
        idp.down.store(true, Ordering::SeqCst);
        clock.advance(JWKS_MAX_AGE);
        a.authenticate(jane, &t).await.unwrap().unwrap();
        assert_eq!(idp.jwks_calls.load(Ordering::SeqCst), 3);
        // Nobody listening at all.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = format!("http://{}/realm", listener.local_addr().unwrap());
        drop(listener);
        let (a, _) = authn(&gone, |_| {});
        let t = r.sign(&claims(&gone));
        assert!(matches!(
            a.authenticate(jane, &t).await,
            Err(AuthnError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn discovery_must_name_the_same_issuer() {
        let r = rsa("r1");
        let (idp, iss) = issuer(&[&r]).await;
        *idp.issuer.lock().unwrap() = "https://impostor.example.com".into();
        let (a, _) = authn(&iss, |_| {});
        match a
            .authenticate("jane@example.com", &r.sign(&claims(&iss)))
            .await
        {
            Err(AuthnError::Unavailable(m)) => assert!(m.contains("impostor"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn in_a_chain_tokens_are_checked_every_time() {
        let r = rsa("r1");
        let (_, iss) = issuer(&[&r]).await;
        let (a, _) = authn(&iss, |_| {});
        let chain = Chain::new(vec![Arc::new(a)], ChainSettings::default());
        let t = r.sign(&claims(&iss));
        chain
            .authenticate(ip(1), Some(("jane@example.com", &t)))
            .await
            .unwrap();
        assert_eq!(chain.cached_logins(), 0);
    }

    #[test]
    fn config_validation() {
        let p = OidcConfig::default().settings("o").unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["o.issuer", "o.client_id"]);
        let p = OidcConfig {
            issuer: "http://idp.example.com".into(),
            client_id: "x".into(),
            jwks_url: Some("ftp://idp.example.com/keys".into()),
            username_claim: String::new(),
            groups_claim: "groups".into(),
            http_timeout: "0s".into(),
        }
        .settings("o")
        .unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "o.issuer",
                "o.jwks_url",
                "o.username_claim",
                "o.http_timeout"
            ]
        );
    }
}
