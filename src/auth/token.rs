//! Docker token-spec JWTs: [`TokenIssuer`] mints the bearer tokens the token service hands out,
//! [`TokenVerifier`] checks them on the registry side (ours or docker_auth's).
//!
//! What is emitted by default, and why (`design.md` §2, §7 "Token interop"):
//! - header `{"alg":"RS256"|"ES256","typ":"JWT","kid":<libtrust key ID>,"x5c":[<leaf>,...]}`.
//!   Distribution 2.8 and 3.x both try `x5c` first, verify it against `rootcertbundle`, and
//!   then ignore `kid` (2.8 `VerifySigningKey` switches on `len(x5c) > 0` first; 3.x returns the
//!   leaf key as soon as `header.Certificates` verifies and only looks at `kid` when x5c is
//!   missing). Without `x5c`, 2.8 wants the libtrust ID and 3.x the RFC 7638 thumbprint, which
//!   [`KidFormat`] chooses; a `kid` in the libtrust format also serves docker_auth-era
//!   verifiers. A registry 3.x configured with only `jwks` (no `rootcertbundle`) verifies `x5c`
//!   against the system roots and fails: issue without `x5c`, `kid` = thumbprint, for those.
//! - claims `iss`, `sub`, `aud` (a string: Distribution 2.8 refuses an array), `exp`, `nbf`,
//!   `iat` (integers; `nbf` = `iat` = now), `jti` (random) and `access`.
//!
//! The verifier refuses, each with its own [`TokenError`]: tokens over 8 KiB; malformed tokens;
//! `alg: none`; HMAC (`HS*`: the classic "public key as HMAC secret" forgery); any algorithm but
//! RS256/384/512 and ES256/384 (PS* included: Distribution 2.8 and docker_auth cannot produce or
//! check them, so accepting them would only widen what a forger can try); unknown keys; `x5c`
//! chains that do not lead to a trusted certificate; bad signatures; expired or not yet valid
//! tokens (±60 s leeway, as Distribution); a wrong audience or issuer; missing claims.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::{BASE64, BASE64URL_NOPAD};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::ResourceActions;
use super::keys::{JwsAlgorithm, PublicKey, SigningKey, TrustStore};
use crate::util::unix_secs;

/// Tokens longer than this are refused unread (and never issued).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew allowed on `exp`, `nbf` and `iat`, as Distribution's `Leeway`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Claims a token must carry. The others default as Distribution's Go structs do: `sub` and
/// `jti` to `""`, `nbf` and `iat` to 0, `access` to nothing.
pub const REQUIRED_CLAIMS: [&str; 3] = ["iss", "aud", "exp"];

/// Signature algorithms the verifier accepts.
pub const ACCEPTED_ALGORITHMS: [&str; 5] = ["RS256", "RS384", "RS512", "ES256", "ES384"];

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is {0} bytes long; at most {MAX_TOKEN_BYTES} are accepted")]
    TooLarge(usize),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsigned token (alg {0:?}) refused")]
    AlgNone(String),
    #[error(
        "HMAC-signed token (alg {0}) refused: tokens must be signed with a private key, and a \
         public key is no secret"
    )]
    HmacAlgorithm(String),
    #[error("signature algorithm {0:?} is not accepted (only RS256, RS384, RS512, ES256, ES384)")]
    UnsupportedAlgorithm(String),
    #[error("token header names no key: it has none of x5c, jwk and kid")]
    NoKeyHint,
    #[error("token signed by an unknown key (kid {0:?})")]
    UnknownKey(String),
    #[error("the jwk in the token header is not a trusted key (thumbprint {0})")]
    UntrustedJwk(String),
    #[error("the token's x5c certificate chain is not trusted: {0}")]
    UntrustedChain(String),
    #[error("alg {alg} cannot be used with the signing key, an {key} key")]
    KeyAlgorithmMismatch { alg: String, key: String },
    #[error("bad token signature")]
    BadSignature,
    #[error("token lacks the required claim {0:?}")]
    MissingClaim(&'static str),
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
    #[error("token expired at {exp} (now {now}, leeway {leeway} s)")]
    Expired { exp: i64, now: i64, leeway: u64 },
    #[error("token not valid yet: {claim} is {at} (now {now}, leeway {leeway} s)")]
    NotYetValid {
        claim: &'static str,
        at: i64,
        now: i64,
        leeway: u64,
    },
    #[error("token is for audience {got:?}, not {want:?}")]
    WrongAudience { got: Vec<String>, want: String },
    #[error("token issuer {0:?} is not trusted")]
    UntrustedIssuer(String),
    #[error("token issuer misconfigured: {0}")]
    Config(String),
    #[error(
        "the signing certificate is not valid now (valid from {not_before} to {not_after}); \
         registries would refuse its x5c"
    )]
    SigningCertificateNotValid { not_before: i64, not_after: i64 },
    #[error("token signing failed: {0}")]
    Signing(String),
}

/// The `aud` claim: a string or an array of strings when read, always a string when written
/// by us (Distribution 2.8 decodes `aud` into a Go string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(v) => v.iter().any(|a| a == audience),
        }
    }

    pub fn values(&self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a.clone()],
            Audience::Many(v) => v.clone(),
        }
    }
}

impl From<&str> for Audience {
    fn from(s: &str) -> Self {
        Audience::One(s.to_owned())
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Audience::One(a) => s.serialize_str(a),
            Audience::Many(v) if v.len() == 1 => s.serialize_str(&v[0]),
            Audience::Many(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d) {
            Ok(Raw::One(a)) => Ok(Audience::One(a)),
            Ok(Raw::Many(v)) => Ok(Audience::Many(v)),
            Err(_) => Err(serde::de::Error::custom(
                "aud must be a string or an array of strings",
            )),
        }
    }
}

/// The claim set of a registry token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    #[serde(default)]
    pub nbf: i64,
    #[serde(default)]
    pub iat: i64,
    #[serde(default)]
    pub jti: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub access: Vec<ResourceActions>,
    /// Refresh tokens only: the labels the login produced, so that label rules still apply
    /// when the account cannot be looked up again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, Vec<String>>>,
    /// Refresh tokens only: the authenticator that let the account in, asked again when the
    /// token is redeemed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authn: Option<String>,
}

/// What a refresh token carries beside its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshGrant {
    pub labels: BTreeMap<String, Vec<String>>,
    pub authn: String,
    /// The token expires then at the latest (Unix seconds): the end of the presented refresh
    /// token or of the login's own credential, so a chain of refreshes never outlives the
    /// first login's lifetime.
    pub not_after: Option<i64>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ResourceActions>, D::Error> {
    Ok(Option::<Vec<ResourceActions>>::deserialize(d)?.unwrap_or_default())
}

/// Which key ID goes in the `kid` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KidFormat {
    /// libtrust fingerprint: Distribution 2.x, docker_auth.
    #[default]
    Libtrust,
    /// RFC 7638 thumbprint: Distribution 3.x (RSA keys; its EC thumbprints are wrong).
    Thumbprint,
    /// No `kid`: only valid with `x5c`.
    None,
}

impl FromStr for KidFormat {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        match s.to_ascii_lowercase().as_str() {
            "libtrust" => Ok(KidFormat::Libtrust),
            "thumbprint" | "jwk-thumbprint" | "rfc7638" => Ok(KidFormat::Thumbprint),
            "none" => Ok(KidFormat::None),
            _ => Err(TokenError::Config(format!(
                "kid format {s:?}: expected libtrust, thumbprint or none"
            ))),
        }
    }
}

/// A minted token, with the fields of the token endpoint's JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedToken {
    pub token: String,
    /// Seconds.
    pub expires_in: u64,
    /// RFC 3339, UTC, whole seconds.
    pub issued_at: String,
}

fn b64url(bytes: &[u8]) -> String {
    BASE64URL_NOPAD.encode(bytes)
}

/// Mints registry tokens.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    pub key: SigningKey,
    /// `iss`; the registry's `auth.token.issuer` must be the same string.
    pub issuer: String,
    pub ttl: Duration,
    pub kid: KidFormat,
    pub include_x5c: bool,
}

impl TokenIssuer {
    /// An issuer with the defaults both Distribution 2.8 and 3.x accept: `x5c` on, `kid` in
    /// the libtrust format.
    pub fn new(key: SigningKey, issuer: impl Into<String>, ttl: Duration) -> Self {
        TokenIssuer {
            key,
            issuer: issuer.into(),
            ttl,
            kid: KidFormat::Libtrust,
            include_x5c: true,
        }
    }

    /// The `kid` tokens carry, if any.
    pub fn kid_value(&self) -> Option<&str> {
        match self.kid {
            KidFormat::Libtrust => Some(self.key.libtrust_kid()),
            KidFormat::Thumbprint => Some(self.key.thumbprint_kid()),
            KidFormat::None => None,
        }
    }

    /// The JOSE header of every token.
    pub fn header(&self) -> Value {
        let mut h = Map::new();
        h.insert("alg".into(), self.key.algorithm().jws_name().into());
        h.insert("typ".into(), "JWT".into());
        if let Some(kid) = self.kid_value() {
            h.insert("kid".into(), kid.into());
        }
        if self.include_x5c {
            h.insert("x5c".into(), self.key.x5c().into());
        }
        Value::Object(h)
    }

    /// The JWKS document of the signing key and of `previous` keys (a rotation), each under
    /// its RFC 7638 thumbprint: what a verifier configured with `jwks` needs, with tokens that
    /// carry `kid: thumbprint`.
    pub fn jwks(&self, previous: &[PublicKey]) -> Value {
        super::keys::jwks(std::iter::once(self.key.public_key()).chain(previous))
    }

    pub fn issue(
        &self,
        subject: &str,
        audience: &str,
        access: Vec<ResourceActions>,
    ) -> Result<IssuedToken, TokenError> {
        self.issue_at(subject, audience, access, SystemTime::now())
    }

    /// A refresh token (no access) carrying `grant`, expiring at `grant.not_after` if that
    /// comes before this issuer's lifetime; refused when that moment has passed.
    pub fn issue_refresh_at(
        &self,
        subject: &str,
        audience: &str,
        grant: &RefreshGrant,
        now: SystemTime,
    ) -> Result<IssuedToken, TokenError> {
        self.mint(subject, audience, Vec::new(), Some(grant), now)
    }

    /// [`Self::issue`] with the clock given.
    pub fn issue_at(
        &self,
        subject: &str,
        audience: &str,
        access: Vec<ResourceActions>,
        now: SystemTime,
    ) -> Result<IssuedToken, TokenError> {
        self.mint(subject, audience, access, None, now)
    }

    fn mint(
        &self,
        subject: &str,
        audience: &str,
        access: Vec<ResourceActions>,
        grant: Option<&RefreshGrant>,
        now: SystemTime,
    ) -> Result<IssuedToken, TokenError> {
        if self.kid == KidFormat::None && !self.include_x5c {
            return Err(TokenError::Config(
                "a token without kid must carry x5c, or no verifier can find its key".into(),
            ));
        }
        let ttl = self.ttl.as_secs();
        if ttl == 0 || ttl > 366 * 86_400 {
            return Err(TokenError::Config(format!(
                "token lifetime {:?}: must be from 1 s to a year",
                self.ttl
            )));
        }
        if self.include_x5c && !self.key.leaf_valid_at(now) {
            let (not_before, not_after) = self.key.leaf_validity();
            return Err(TokenError::SigningCertificateNotValid {
                not_before,
                not_after,
            });
        }
        let iat = unix_secs(now);
        let exp = match grant.and_then(|g| g.not_after) {
            Some(end) if end <= iat => {
                return Err(TokenError::Expired {
                    exp: end,
                    now: iat,
                    leeway: 0,
                });
            }
            Some(end) => end.min(iat + ttl as i64),
            None => iat + ttl as i64,
        };
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: Audience::One(audience.to_owned()),
            exp,
            nbf: iat,
            iat,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
            labels: grant.map(|g| g.labels.clone()),
            authn: grant.map(|g| g.authn.clone()),
        };
        let header = serde_json::to_vec(&self.header()).expect("header serializes");
        let payload = serde_json::to_vec(&claims).expect("claims serialize");
        let mut token = format!("{}.{}", b64url(&header), b64url(&payload));
        let signature = self
            .key
            .sign(token.as_bytes())
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        token.push('.');
        token.push_str(&b64url(&signature));
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge(token.len()));
        }
        let issued_at = UNIX_EPOCH + Duration::from_secs(iat.max(0) as u64);
        Ok(IssuedToken {
            token,
            expires_in: (exp - iat) as u64,
            issued_at: humantime::format_rfc3339_seconds(issued_at).to_string(),
        })
    }
}

/// Checks registry tokens.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    pub trust: TrustStore,
    /// Accepted `iss` values (the registry's `auth.token.issuer`).
    pub issuers: Vec<String>,
    /// The `aud` a token must name: this registry's service name.
    pub audience: String,
    pub leeway: Duration,
}

fn decode_part(what: &str, part: &str) -> Result<Vec<u8>, TokenError> {
    BASE64URL_NOPAD
        .decode(part.as_bytes())
        .map_err(|_| TokenError::Malformed(format!("the {what} is not unpadded base64url")))
}

fn decode_object(what: &str, part: &str) -> Result<Map<String, Value>, TokenError> {
    match serde_json::from_slice(&decode_part(what, part)?) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TokenError::Malformed(format!(
            "the {what} is not a JSON object"
        ))),
        Err(e) => Err(TokenError::Malformed(format!(
            "the {what} is not JSON: {e}"
        ))),
    }
}

/// The algorithm a header names, if it is one we accept.
fn check_alg(header: &Map<String, Value>) -> Result<JwsAlgorithm, TokenError> {
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a,
        Some(_) => return Err(TokenError::Malformed("alg is not a string".into())),
        None => return Err(TokenError::Malformed("the header has no alg".into())),
    };
    if alg.eq_ignore_ascii_case("none") || alg.is_empty() {
        return Err(TokenError::AlgNone(alg.clone()));
    }
    if alg.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("hs")) {
        return Err(TokenError::HmacAlgorithm(alg.clone()));
    }
    JwsAlgorithm::from_name(alg).ok_or_else(|| TokenError::UnsupportedAlgorithm(alg.clone()))
}

fn decode_x5c(value: &Value) -> Result<Option<Vec<Vec<u8>>>, TokenError> {
    let arr = value
        .as_array()
        .ok_or_else(|| TokenError::Malformed("x5c is not an array".into()))?;
    if arr.is_empty() {
        return Ok(None);
    }
    arr.iter()
        .map(|c| {
            c.as_str()
                .and_then(|s| BASE64.decode(s.as_bytes()).ok())
                .ok_or_else(|| {
                    TokenError::Malformed("x5c holds something other than base64 DER".into())
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl TokenVerifier {
    pub fn new(trust: TrustStore, issuers: Vec<String>, audience: impl Into<String>) -> Self {
        TokenVerifier {
            trust,
            issuers,
            audience: audience.into(),
            leeway: DEFAULT_LEEWAY,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, SystemTime::now())
    }

    /// [`Self::verify`] with the clock given.
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge(token.len()));
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(TokenError::Malformed(format!(
                "{} dot-separated parts instead of 3",
                parts.len()
            )));
        }
        let header = decode_object("header", parts[0])?;
        let alg = check_alg(&header)?;
        if header.contains_key("crit") {
            return Err(TokenError::Malformed(
                "critical header extensions (crit) are not supported".into(),
            ));
        }
        let signature = decode_part("signature", parts[2])?;

        let key = self.signing_key(&header, now)?;
        if !key.supports(alg) {
            return Err(TokenError::KeyAlgorithmMismatch {
                alg: alg.name().into(),
                key: key.describe(),
            });
        }
        let signing_input = &token[..parts[0].len() + 1 + parts[1].len()];
        if !key.verify(alg, signing_input.as_bytes(), &signature) {
            return Err(TokenError::BadSignature);
        }

        let payload = decode_object("payload", parts[1])?;
        for claim in REQUIRED_CLAIMS {
            if payload.get(claim).is_none_or(Value::is_null) {
                return Err(TokenError::MissingClaim(claim));
            }
        }
        let claims: Claims = serde_json::from_value(Value::Object(payload))
            .map_err(|e| TokenError::InvalidClaims(e.to_string()))?;

        if !self.issuers.contains(&claims.iss) {
            return Err(TokenError::UntrustedIssuer(claims.iss));
        }
        if !claims.aud.contains(&self.audience) {
            return Err(TokenError::WrongAudience {
                got: claims.aud.values(),
                want: self.audience.clone(),
            });
        }
        let t = unix_secs(now);
        let leeway = self.leeway.as_secs();
        let (t128, l128) = (i128::from(t), i128::from(leeway));
        if t128 > i128::from(claims.exp) + l128 {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now: t,
                leeway,
            });
        }
        for (claim, at) in [("nbf", claims.nbf), ("iat", claims.iat)] {
            if t128 < i128::from(at) - l128 {
                return Err(TokenError::NotYetValid {
                    claim,
                    at,
                    now: t,
                    leeway,
                });
            }
        }
        Ok(claims)
    }

    /// Find the key that must have signed the token, in Distribution's order: `x5c` (verified
    /// against the trusted certificates; no fallback to `kid` when it fails), then `jwk` (only
    /// a key that is itself trusted, or whose own `x5c` verifies), then `kid`.
    fn signing_key(
        &self,
        header: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<PublicKey, TokenError> {
        if let Some(x5c) = header.get("x5c")
            && let Some(chain) = decode_x5c(x5c)?
        {
            return self
                .trust
                .verify_chain(&chain, now)
                .map_err(|e| TokenError::UntrustedChain(e.to_string()));
        }
        if let Some(jwk) = header.get("jwk") {
            let key = PublicKey::from_jwk(jwk)
                .map_err(|e| TokenError::Malformed(format!("jwk header: {e}")))?;
            if let Some(x5c) = jwk.get("x5c")
                && let Some(chain) = decode_x5c(x5c)?
            {
                let leaf = self
                    .trust
                    .verify_chain(&chain, now)
                    .map_err(|e| TokenError::UntrustedChain(e.to_string()))?;
                if leaf != key {
                    return Err(TokenError::UntrustedChain(
                        "the jwk is not the key of its x5c leaf certificate".into(),
                    ));
                }
                return Ok(key);
            }
            if self.trust.contains_key(&key) {
                return Ok(key);
            }
            return Err(TokenError::UntrustedJwk(key.thumbprint()));
        }
        match header.get("kid") {
            Some(Value::String(kid)) if !kid.is_empty() => self
                .trust
                .key_by_kid(kid)
                .cloned()
                .ok_or_else(|| TokenError::UnknownKey(kid.clone())),
            Some(Value::String(_)) | None => Err(TokenError::NoKeyHint),
            Some(_) => Err(TokenError::Malformed("kid is not a string".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use rustls_pki_types::pem::PemObject as _;
    use serde_json::json;

    use super::*;
    use crate::auth::keys::tests::{EC_CERT, EC_SEC1_KEY, RSA_CERT, RSA_PKCS1_KEY};
    use crate::auth::keys::{KeyAlgorithm, keygen, libtrust_kid, load_signing_key};

    const ISS: &str = "ocimirror-token";
    const AUD: &str = "mirror.example:5000";
    const TTL: Duration = Duration::from_secs(300);

    struct Fixture {
        key: SigningKey,
        key_pem: String,
        cert_pem: String,
    }

    fn make(alg: KeyAlgorithm) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (k, c) = (dir.path().join("token.key"), dir.path().join("token.crt"));
        keygen(&k, &c, alg, "ocimirror token", 365).unwrap();
        Fixture {
            key: load_signing_key(&k, &c).unwrap(),
            key_pem: std::fs::read_to_string(&k).unwrap(),
            cert_pem: std::fs::read_to_string(&c).unwrap(),
        }
    }

    fn rsa() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| make(KeyAlgorithm::Rs256))
    }

    fn ec() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| make(KeyAlgorithm::Es256))
    }

    /// A key nobody trusts.
    fn stranger() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| make(KeyAlgorithm::Es256))
    }

    /// A verifier trusting both fixtures' certificates as one `rootcertbundle`.
    fn verifier() -> TokenVerifier {
        let mut trust = TrustStore::new();
        let bundle = format!("{}{}", rsa().cert_pem, ec().cert_pem);
        assert_eq!(
            trust
                .add_cert_bundle_pem(bundle.as_bytes(), "bundle")
                .unwrap(),
            2
        );
        TokenVerifier::new(trust, vec!["other-issuer".into(), ISS.into()], AUD)
    }

    fn pull(name: &str) -> Vec<ResourceActions> {
        vec![ResourceActions {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        }]
    }

    fn now_secs() -> i64 {
        unix_secs(SystemTime::now())
    }

    fn claims_json(now: i64) -> Value {
        json!({
            "iss": ISS, "sub": "alice", "aud": AUD, "exp": now + 300, "nbf": now, "iat": now,
            "jti": "abc", "access": [{"type": "repository", "name": "library/alpine",
            "actions": ["pull"]}],
        })
    }

    /// Hand-made token: the header and claims as given, signed by `key` (or unsigned).
    fn craft(header: &Value, claims: &Value, key: Option<&SigningKey>) -> String {
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = key
            .map(|k| k.sign(input.as_bytes()).unwrap())
            .unwrap_or_default();
        format!("{input}.{}", b64url(&sig))
    }

    /// The usual claims, as of now, under `header`, signed by `key`.
    fn signed_now(header: &Value, key: &SigningKey) -> String {
        craft(header, &claims_json(now_secs()), Some(key))
    }

    /// A token `issuer` issues to alice, granting nothing.
    fn issued(issuer: &TokenIssuer) -> String {
        issuer.issue("alice", AUD, vec![]).unwrap().token
    }

    /// `result` is an error matching `pattern`.
    macro_rules! assert_err {
        ($result:expr, $pattern:pat) => {{
            let err = $result.unwrap_err();
            assert!(matches!(err, $pattern), "{err}");
        }};
        ($result:expr, $pattern:pat, $($what:tt)+) => {{
            let err = $result.unwrap_err();
            assert!(matches!(err, $pattern), "{}: {err}", format!($($what)+));
        }};
    }

    fn kid_header(key: &SigningKey) -> Value {
        json!({"alg": key.algorithm().jws_name(), "typ": "JWT", "kid": key.libtrust_kid()})
    }

    fn decode_json(part: &str) -> Value {
        serde_json::from_slice(&BASE64URL_NOPAD.decode(part.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_every_algorithm_and_kid_format() {
        let v = verifier();
        for f in [rsa(), ec()] {
            for kid in [KidFormat::Libtrust, KidFormat::Thumbprint, KidFormat::None] {
                for x5c in [true, false] {
                    let mut issuer = TokenIssuer::new(f.key.clone(), ISS, TTL);
                    issuer.kid = kid;
                    issuer.include_x5c = x5c;
                    if kid == KidFormat::None && !x5c {
                        assert_err!(issuer.issue("alice", AUD, pull("a")), TokenError::Config(_));
                        continue;
                    }
                    let t = issuer.issue("alice", AUD, pull("library/alpine")).unwrap();
                    let header = decode_json(t.token.split('.').next().unwrap());
                    assert_eq!(header["alg"], f.key.algorithm().jws_name());
                    assert_eq!(header["typ"], "JWT");
                    assert_eq!(header.get("x5c").is_some(), x5c);
                    let want_kid = match kid {
                        KidFormat::Libtrust => Some(f.key.libtrust_kid()),
                        KidFormat::Thumbprint => Some(f.key.thumbprint_kid()),
                        KidFormat::None => None,
                    };
                    assert_eq!(header.get("kid").and_then(Value::as_str), want_kid);
                    let c = v
                        .verify(&t.token)
                        .unwrap_or_else(|e| panic!("{:?} {kid:?} x5c={x5c}: {e}", f.key));
                    assert_eq!(c.sub, "alice");
                    assert_eq!(c.iss, ISS);
                    assert_eq!(c.aud, Audience::One(AUD.into()));
                    assert_eq!(c.access, pull("library/alpine"));
                    assert_eq!(t.expires_in, 300);
                    assert_eq!(c.exp - c.iat, 300);
                    let issued = humantime::parse_rfc3339(&t.issued_at).unwrap();
                    assert_eq!(unix_secs(issued), c.iat);
                    assert!(t.issued_at.ends_with('Z'));
                }
            }
        }
    }

    #[test]
    fn default_header_and_claims() {
        let issuer = TokenIssuer::new(rsa().key.clone(), ISS, TTL);
        assert_eq!(
            (issuer.kid, issuer.include_x5c),
            (KidFormat::Libtrust, true)
        );
        let before = now_secs();
        let t1 = issuer.issue("bob", AUD, vec![]).unwrap();
        let t2 = issuer.issue("bob", AUD, vec![]).unwrap();
        let parts: Vec<&str> = t1.token.split('.').collect();
        let header = decode_json(parts[0]);
        assert_eq!(
            header,
            json!({"alg": "RS256", "typ": "JWT", "kid": rsa().key.libtrust_kid(),
                   "x5c": rsa().key.x5c()})
        );
        let claims = decode_json(parts[1]);
        assert!(
            claims["aud"].is_string(),
            "aud must be a string for Distribution 2.8"
        );
        for c in ["exp", "nbf", "iat"] {
            assert!(claims[c].is_i64(), "{c} must be an integer");
        }
        assert_eq!(claims["nbf"], claims["iat"]);
        let iat = claims["iat"].as_i64().unwrap();
        assert!((before..=before + 5).contains(&iat));
        assert_eq!(claims["exp"].as_i64().unwrap(), iat + 300);
        assert_eq!(claims["access"], json!([]));
        let jti2 = decode_json(t2.token.split('.').nth(1).unwrap())["jti"].clone();
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 32));
        assert_ne!(claims["jti"], jti2);
    }

    #[test]
    fn refuses_alg_none() {
        let v = verifier();
        for alg in ["none", "None", "NONE"] {
            let mut h = kid_header(&rsa().key);
            h["alg"] = alg.into();
            let token = craft(&h, &claims_json(now_secs()), None);
            assert_err!(v.verify(&token), TokenError::AlgNone(_), "{alg}");
        }
    }

    fn public_key_pem(key: &SigningKey) -> String {
        let b64 = BASE64.encode(&key.public_key().to_spki_der());
        let lines: Vec<&str> = (0..b64.len())
            .step_by(64)
            .map(|i| &b64[i..(i + 64).min(b64.len())])
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn refuses_hmac_signed_with_the_public_key() {
        let v = verifier();
        let f = rsa();
        for secret in [public_key_pem(&f.key), f.cert_pem.clone()] {
            for alg in [
                jsonwebtoken::Algorithm::HS256,
                jsonwebtoken::Algorithm::HS384,
                jsonwebtoken::Algorithm::HS512,
            ] {
                let mut h = jsonwebtoken::Header::new(alg);
                h.kid = Some(f.key.libtrust_kid().to_owned());
                let token = jsonwebtoken::encode(
                    &h,
                    &claims_json(now_secs()),
                    &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
                )
                .unwrap();
                let err = v.verify(&token).unwrap_err();
                assert!(
                    matches!(err, TokenError::HmacAlgorithm(_)),
                    "{alg:?}: {err}"
                );
            }
        }
    }

    #[test]
    fn refuses_other_algorithms() {
        let v = verifier();
        let f = rsa();
        // PS256, genuinely signed by a trusted key.
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
        h.kid = Some(f.key.libtrust_kid().to_owned());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(f.key_pem.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&h, &claims_json(now_secs()), &key).unwrap();
        let err = v.verify(&token).unwrap_err();
        assert!(
            matches!(&err, TokenError::UnsupportedAlgorithm(a) if a == "PS256"),
            "{err}"
        );
        for alg in ["ES512", "EdDSA", "rs256", "RSA-OAEP", ""] {
            let mut h = kid_header(&f.key);
            h["alg"] = alg.into();
            let err = v.verify(&signed_now(&h, &f.key)).unwrap_err();
            match alg {
                "" => assert!(matches!(err, TokenError::AlgNone(_)), "{err}"),
                _ => assert!(
                    matches!(err, TokenError::UnsupportedAlgorithm(_)),
                    "{alg}: {err}"
                ),
            }
        }
        // RS384 and RS512 from the same key are fine.
        for alg in [
            jsonwebtoken::Algorithm::RS384,
            jsonwebtoken::Algorithm::RS512,
        ] {
            let mut h = jsonwebtoken::Header::new(alg);
            h.kid = Some(f.key.libtrust_kid().to_owned());
            let token = jsonwebtoken::encode(&h, &claims_json(now_secs()), &key).unwrap();
            v.verify(&token).unwrap();
        }
        // An RSA key cannot vouch for an ES256 signature.
        let mut h = kid_header(&f.key);
        h["alg"] = "ES256".into();
        let token = craft(&h, &claims_json(now_secs()), Some(&ec().key));
        let err = v.verify(&token).unwrap_err();
        assert!(
            matches!(err, TokenError::KeyAlgorithmMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_tampering() {
        let v = verifier();
        for f in [rsa(), ec()] {
            let t = TokenIssuer::new(f.key.clone(), ISS, TTL)
                .issue("alice", AUD, pull("library/alpine"))
                .unwrap()
                .token;
            let parts: Vec<&str> = t.split('.').collect();
            let mut claims = decode_json(parts[1]);
            claims["access"][0]["actions"] = json!(["pull", "push"]);
            let forged = format!(
                "{}.{}.{}",
                parts[0],
                b64url(claims.to_string().as_bytes()),
                parts[2]
            );
            assert_err!(v.verify(&forged), TokenError::BadSignature);
            // A flipped signature byte.
            let mut sig = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
            sig[10] ^= 1;
            let forged = format!("{}.{}.{}", parts[0], parts[1], b64url(&sig));
            assert_err!(v.verify(&forged), TokenError::BadSignature);
        }
        // Signed by a stranger, claiming a trusted key's kid.
        let token = craft(
            &kid_header(&ec().key),
            &claims_json(now_secs()),
            Some(&stranger().key),
        );
        assert_err!(v.verify(&token), TokenError::BadSignature);
    }

    #[test]
    fn expiry_and_leeway() {
        let v = verifier();
        let issuer = TokenIssuer::new(rsa().key.clone(), ISS, TTL);
        let now = SystemTime::now();
        let token = issuer.issue_at("alice", AUD, vec![], now).unwrap().token;
        v.verify_at(&token, now + TTL + Duration::from_secs(59))
            .unwrap();
        assert_err!(
            v.verify_at(&token, now + TTL + Duration::from_secs(62)),
            TokenError::Expired { .. }
        );
        // An hour old: kid only, since the certificate is younger than that.
        let mut issuer = issuer;
        issuer.include_x5c = false;
        let old = issuer
            .issue_at("alice", AUD, vec![], now - Duration::from_secs(3600))
            .unwrap()
            .token;
        assert_err!(v.verify(&old), TokenError::Expired { .. });
    }

    #[test]
    fn not_yet_valid() {
        let v = verifier();
        let issuer = TokenIssuer::new(ec().key.clone(), ISS, TTL);
        let now = SystemTime::now();
        let soon = issuer
            .issue_at("alice", AUD, vec![], now + Duration::from_secs(30))
            .unwrap()
            .token;
        v.verify_at(&soon, now).unwrap();
        let later = issuer
            .issue_at("alice", AUD, vec![], now + Duration::from_secs(120))
            .unwrap()
            .token;
        let err = v.verify_at(&later, now).unwrap_err();
        assert!(
            matches!(err, TokenError::NotYetValid { claim: "nbf", .. }),
            "{err}"
        );
        // iat in the future with a current nbf.
        let t = now_secs();
        let mut claims = claims_json(t);
        claims["iat"] = (t + 3600).into();
        let token = craft(&kid_header(&ec().key), &claims, Some(&ec().key));
        let err = v.verify(&token).unwrap_err();
        assert!(
            matches!(err, TokenError::NotYetValid { claim: "iat", .. }),
            "{err}"
        );
    }

    #[test]
    fn audience_and_issuer() {
        let v = verifier();
        let issuer = TokenIssuer::new(rsa().key.clone(), ISS, TTL);
        let token = issuer
            .issue("alice", "other-registry", vec![])
            .unwrap()
            .token;
        assert_err!(v.verify(&token), TokenError::WrongAudience { .. });
        let evil = TokenIssuer::new(rsa().key.clone(), "evil", TTL);
        let err = v
            .verify(&evil.issue("alice", AUD, vec![]).unwrap().token)
            .unwrap_err();
        assert!(
            matches!(&err, TokenError::UntrustedIssuer(i) if i == "evil"),
            "{err}"
        );
        // The second trusted issuer is accepted too.
        let other = TokenIssuer::new(rsa().key.clone(), "other-issuer", TTL);
        v.verify(&other.issue("alice", AUD, vec![]).unwrap().token)
            .unwrap();
        // An audience array (Distribution 3.x, RFC 7519) naming us is accepted.
        let t = now_secs();
        let mut claims = claims_json(t);
        claims["aud"] = json!(["x", AUD]);
        let c = v
            .verify(&craft(&kid_header(&rsa().key), &claims, Some(&rsa().key)))
            .unwrap();
        assert!(c.aud.contains(AUD));
        claims["aud"] = json!(["x", "y"]);
        assert_err!(
            v.verify(&craft(&kid_header(&rsa().key), &claims, Some(&rsa().key))),
            TokenError::WrongAudience { .. }
        );
    }

    #[test]
    fn unknown_key() {
        let v = verifier();
        let mut issuer = TokenIssuer::new(stranger().key.clone(), ISS, TTL);
        issuer.include_x5c = false;
        for kid in [KidFormat::Libtrust, KidFormat::Thumbprint] {
            issuer.kid = kid;
            assert_err!(v.verify(&issued(&issuer)), TokenError::UnknownKey(_));
        }
        let header = json!({"alg": "ES256", "typ": "JWT"});
        let token = craft(&header, &claims_json(now_secs()), Some(&ec().key));
        assert_err!(v.verify(&token), TokenError::NoKeyHint);
    }

    #[test]
    fn untrusted_x5c() {
        let v = verifier();
        // A stranger's self-signed certificate.
        let issuer = TokenIssuer::new(stranger().key.clone(), ISS, TTL);
        assert_err!(v.verify(&issued(&issuer)), TokenError::UntrustedChain(_));
        // x5c decides: a trusted kid next to an untrusted chain does not help.
        let mut h = kid_header(&ec().key);
        h["x5c"] = stranger().key.x5c().into();
        assert_err!(
            v.verify(&craft(&h, &claims_json(now_secs()), Some(&stranger().key))),
            TokenError::UntrustedChain(_)
        );
        // A trusted chain whose leaf key did not sign.
        let mut h = kid_header(&ec().key);
        h["x5c"] = ec().key.x5c().into();
        assert_err!(
            v.verify(&craft(&h, &claims_json(now_secs()), Some(&stranger().key))),
            TokenError::BadSignature
        );
    }

    #[test]
    fn x5c_leaf_signed_by_the_bundle_root() {
        // The bundle holds only a CA; the token service's key has a leaf certificate from it.
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let leaf = leaf_params
            .signed_by(&leaf_key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        let chain_pem = format!("{}{}", leaf.pem(), ca.pem());
        let key = SigningKey::from_pem(leaf_key.serialize_pem().as_bytes(), chain_pem.as_bytes())
            .unwrap();
        let mut trust = TrustStore::new();
        trust
            .add_cert_bundle_pem(ca.pem().as_bytes(), "ca")
            .unwrap();
        let v = TokenVerifier::new(trust, vec![ISS.into()], AUD);
        let mut issuer = TokenIssuer::new(key, ISS, TTL);
        assert_eq!(issuer.key.x5c().len(), 2);
        v.verify(&issued(&issuer)).unwrap();
        // Without x5c the leaf key is unknown: only the CA's key is in the bundle.
        issuer.include_x5c = false;
        assert_err!(v.verify(&issued(&issuer)), TokenError::UnknownKey(_));
    }

    #[test]
    fn jwk_header_only_for_trusted_keys() {
        let v = verifier();
        let mut h = json!({"alg": "ES256", "typ": "JWT", "jwk": ec().key.public_key().to_jwk()});
        v.verify(&craft(&h, &claims_json(now_secs()), Some(&ec().key)))
            .unwrap();
        // A forger embedding their own key.
        h["jwk"] = stranger().key.public_key().to_jwk();
        assert_err!(
            v.verify(&craft(&h, &claims_json(now_secs()), Some(&stranger().key))),
            TokenError::UntrustedJwk(_)
        );
        // ... even with a trusted kid beside it (jwk comes first).
        h["kid"] = ec().key.libtrust_kid().into();
        assert_err!(
            v.verify(&craft(&h, &claims_json(now_secs()), Some(&stranger().key))),
            TokenError::UntrustedJwk(_)
        );
    }

    #[test]
    fn refuses_oversized_tokens() {
        let v = verifier();
        let issuer = TokenIssuer::new(ec().key.clone(), ISS, TTL);
        let many: Vec<ResourceActions> = (0..200)
            .flat_map(|i| pull(&format!("some/long/repository/name/{i}")))
            .collect();
        assert_err!(
            issuer.issue("alice", AUD, many.clone()),
            TokenError::TooLarge(_)
        );
        // The same claims, signed by hand: valid but for their size.
        let mut claims = claims_json(now_secs());
        claims["access"] = serde_json::to_value(&many).unwrap();
        let token = craft(&kid_header(&ec().key), &claims, Some(&ec().key));
        assert!(token.len() > MAX_TOKEN_BYTES);
        assert_err!(v.verify(&token), TokenError::TooLarge(_));
    }

    #[test]
    fn refuses_malformed_tokens() {
        let v = verifier();
        let key = &rsa().key;
        let good_claims = b64url(claims_json(now_secs()).to_string().as_bytes());
        let good_header = b64url(kid_header(key).to_string().as_bytes());
        let cases = [
            String::new(),
            "abc".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{good_header}.{good_claims}.!!"),
            format!("***.{good_claims}.AAAA"),
            format!("{}.{good_claims}.AAAA", b64url(b"not json")),
            format!("{}.{good_claims}.AAAA", b64url(b"[1,2]")),
            format!("{}.{good_claims}.AAAA", b64url(b"{\"typ\":\"JWT\"}")),
            format!("{}.{good_claims}.AAAA", b64url(b"{\"alg\":5}")),
            format!("{good_header}=.{good_claims}.AAAA"),
        ];
        for t in &cases {
            assert_err!(v.verify(t), TokenError::Malformed(_), "{t:?}");
        }
        let claims = claims_json(now_secs());
        let mut crit = kid_header(key);
        crit["crit"] = json!(["exp"]);
        let mut bad_x5c = kid_header(key);
        bad_x5c["x5c"] = json!("MIIB");
        let mut bad_x5c2 = kid_header(key);
        bad_x5c2["x5c"] = json!(["not base64!"]);
        let mut bad_kid = kid_header(key);
        bad_kid["kid"] = json!(7);
        for h in [crit, bad_x5c, bad_x5c2, bad_kid] {
            assert_err!(
                v.verify(&craft(&h, &claims, Some(key))),
                TokenError::Malformed(_),
                "{h}"
            );
        }
        // A validly signed payload that is not a JSON object.
        let input = format!("{good_header}.{}", b64url(b"[]"));
        let sig = key.sign(input.as_bytes()).unwrap();
        assert_err!(
            v.verify(&format!("{input}.{}", b64url(&sig))),
            TokenError::Malformed(_)
        );
    }

    #[test]
    fn refuses_missing_or_mistyped_claims() {
        let v = verifier();
        let key = &ec().key;
        for claim in REQUIRED_CLAIMS {
            // Left out, or null.
            for null in [false, true] {
                let mut claims = claims_json(now_secs());
                if null {
                    claims[claim] = Value::Null;
                } else {
                    claims.as_object_mut().unwrap().remove(claim);
                }
                let err = v
                    .verify(&craft(&kid_header(key), &claims, Some(key)))
                    .unwrap_err();
                assert!(
                    matches!(err, TokenError::MissingClaim(c) if c == claim),
                    "{claim} (null {null}): {err}"
                );
            }
        }
        let t = now_secs();
        let mutations: [(&str, Value); 5] = [
            ("exp", json!((t + 300) as f64 + 0.5)),
            ("exp", json!((t + 300).to_string())),
            ("nbf", json!("soon")),
            ("aud", json!(5)),
            ("access", json!([{"type": "repository"}])),
        ];
        for (claim, value) in mutations {
            let mut claims = claims_json(t);
            claims[claim] = value;
            let err = v
                .verify(&craft(&kid_header(key), &claims, Some(key)))
                .unwrap_err();
            assert!(
                matches!(err, TokenError::InvalidClaims(_)),
                "{claim}: {err}"
            );
        }
        // Optional claims may be absent, and access may be null.
        let claims = json!({"iss": ISS, "aud": AUD, "exp": t + 60, "access": null});
        let c = v
            .verify(&craft(&kid_header(key), &claims, Some(key)))
            .unwrap();
        assert_eq!((c.sub.as_str(), c.nbf, c.access.len()), ("", 0, 0));
    }

    /// A token made the way docker_auth makes one (`auth_server/server/server.go`
    /// `CreateToken`): RS256 or ES256, `kid` = libtrust ID, no `x5c`, `nbf` = now - 10, a decimal
    /// `jti`, `aud` a string, sorted actions. Signed with jsonwebtoken, not with this module.
    fn docker_auth_token(
        alg: jsonwebtoken::Algorithm,
        key: jsonwebtoken::EncodingKey,
        cert_pem: &str,
    ) -> String {
        let cert = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(libtrust_kid(parsed.public_key().raw));
        let now = now_secs();
        let claims = json!({
            "iss": ISS, "sub": "ci-bot", "aud": AUD, "exp": now + 900, "nbf": now - 10,
            "iat": now, "jti": "5577006791947779410",
            "access": [{"type": "repository", "name": "myorg/app", "actions": ["pull", "push"]}],
        });
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    #[test]
    fn accepts_docker_auth_tokens() {
        // keygen's RSA key (PKCS#8) and the openssl-made PKCS#1 key of a docker_auth setup.
        let cases = [
            (
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::EncodingKey::from_rsa_pem(rsa().key_pem.as_bytes()).unwrap(),
                rsa().cert_pem.clone(),
            ),
            (
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PKCS1_KEY.as_bytes()).unwrap(),
                RSA_CERT.to_owned(),
            ),
            (
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::EncodingKey::from_ec_pem(ec().key_pem.as_bytes()).unwrap(),
                ec().cert_pem.clone(),
            ),
        ];
        for (alg, key, cert_pem) in cases {
            let token = docker_auth_token(alg, key, &cert_pem);
            let dir = tempfile::tempdir().unwrap();
            let bundle = dir.path().join("root.crt");
            std::fs::write(&bundle, &cert_pem).unwrap();
            let trust = TrustStore::from_cert_bundle_file(&bundle).unwrap();
            let v = TokenVerifier::new(trust, vec![ISS.into()], AUD);
            let c = v.verify(&token).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(c.sub, "ci-bot");
            assert_eq!(c.access[0].actions, vec!["pull", "push"]);
            assert_eq!(c.nbf, c.iat - 10);
        }
        // jsonwebtoken refuses SEC1 EC keys, as design.md says; SigningKey converts them.
        assert!(jsonwebtoken::EncodingKey::from_ec_pem(EC_SEC1_KEY.as_bytes()).is_err());
        let sk = SigningKey::from_pem(EC_SEC1_KEY.as_bytes(), EC_CERT.as_bytes()).unwrap();
        let mut trust = TrustStore::new();
        trust.add_cert_bundle_pem(EC_CERT.as_bytes(), "ec").unwrap();
        let v = TokenVerifier::new(trust, vec![ISS.into()], AUD);
        v.verify(
            &TokenIssuer::new(sk, ISS, TTL)
                .issue("a", AUD, vec![])
                .unwrap()
                .token,
        )
        .unwrap();
    }

    #[test]
    fn jwks_trust() {
        let mut issuer = TokenIssuer::new(rsa().key.clone(), ISS, TTL);
        issuer.kid = KidFormat::Thumbprint;
        issuer.include_x5c = false;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let mut jwks = issuer.jwks(&[]);
        jwks["keys"][0]["kid"] = "token-signer-2025".into();
        std::fs::write(&path, jwks.to_string()).unwrap();
        let trust = TrustStore::from_jwks_file(&path).unwrap();
        let v = TokenVerifier::new(trust, vec![ISS.into()], AUD);
        // By the JWKS kid, and by the thumbprint (the same key).
        let mut h = json!({"alg": "RS256", "typ": "JWT", "kid": "token-signer-2025"});
        v.verify(&craft(&h, &claims_json(now_secs()), Some(&rsa().key)))
            .unwrap();
        v.verify(&issued(&issuer)).unwrap();
        h["kid"] = "another".into();
        assert_err!(
            v.verify(&craft(&h, &claims_json(now_secs()), Some(&rsa().key))),
            TokenError::UnknownKey(_)
        );
        // A JWKS gives no x5c roots: x5c tokens fail, as on a registry configured with jwks only.
        issuer.include_x5c = true;
        assert_err!(v.verify(&issued(&issuer)), TokenError::UntrustedChain(_));
        assert_eq!(
            issuer.jwks(&[])["keys"][0]["kid"],
            rsa().key.thumbprint_kid()
        );
    }

    #[test]
    fn issuer_configuration_errors() {
        let mut issuer = TokenIssuer::new(ec().key.clone(), ISS, Duration::from_millis(500));
        assert_err!(issuer.issue("a", AUD, vec![]), TokenError::Config(_));
        issuer.ttl = TTL;
        // keygen made a 365-day certificate: x5c tokens after that would be refused downstream.
        let later = SystemTime::now() + Duration::from_secs(400 * 86_400);
        let err = issuer.issue_at("a", AUD, vec![], later).unwrap_err();
        assert!(
            matches!(err, TokenError::SigningCertificateNotValid { .. }),
            "{err}"
        );
        issuer.include_x5c = false;
        issuer.issue_at("a", AUD, vec![], later).unwrap();
        assert_eq!(
            "thumbprint".parse::<KidFormat>().unwrap(),
            KidFormat::Thumbprint
        );
        assert!("x".parse::<KidFormat>().is_err());
    }

    #[test]
    fn shareable_across_tasks() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<TokenIssuer>();
        send_sync::<TokenVerifier>();
        send_sync::<TokenError>();
    }

    #[test]
    fn audience_serde() {
        let a: Audience = serde_json::from_str("\"svc\"").unwrap();
        assert_eq!(a, Audience::One("svc".into()));
        let a: Audience = serde_json::from_str("[\"a\",\"svc\"]").unwrap();
        assert!(a.contains("svc") && !a.contains("b"));
        assert_eq!(
            serde_json::to_string(&Audience::Many(vec!["x".into()])).unwrap(),
            "\"x\""
        );
        assert!(serde_json::from_str::<Audience>("5").is_err());
    }
}

#[cfg(test)]
mod props {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;
    use crate::auth::keys::tests::{EC_CERT, EC_SEC1_KEY, RSA_CERT, RSA_PKCS1_KEY};
    use crate::auth::keys::{KeyAlgorithm, keygen, load_signing_key};

    const ISS: &str = "ocimirror";
    const AUD: &str = "mirror.example";
    const TTL: Duration = Duration::from_secs(300);

    /// The trusted keys (the RSA and EC fixtures of `testdata/`, so no RSA key is generated per
    /// test process), and a fresh one nobody trusts.
    fn keys() -> &'static (SigningKey, SigningKey, SigningKey) {
        static K: OnceLock<(SigningKey, SigningKey, SigningKey)> = OnceLock::new();
        K.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let (k, c) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
            keygen(&k, &c, KeyAlgorithm::Es256, "stranger", 30).unwrap();
            (
                SigningKey::from_pem(RSA_PKCS1_KEY.as_bytes(), RSA_CERT.as_bytes()).unwrap(),
                SigningKey::from_pem(EC_SEC1_KEY.as_bytes(), EC_CERT.as_bytes()).unwrap(),
                load_signing_key(&k, &c).unwrap(),
            )
        })
    }

    /// A fixed clock inside the fixtures' certificate validity (2026 to 2126).
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_900_000_000)
    }

    fn verifier() -> TokenVerifier {
        let (rsa, ec, _) = keys();
        let mut trust = TrustStore::new();
        trust.add_signing_key(rsa).unwrap();
        trust.add_signing_key(ec).unwrap();
        TokenVerifier::new(trust, vec![ISS.into()], AUD)
    }

    fn issuer() -> impl Strategy<Value = TokenIssuer> {
        (
            any::<bool>(),
            proptest::sample::select(vec![
                KidFormat::Libtrust,
                KidFormat::Thumbprint,
                KidFormat::None,
            ]),
            any::<bool>(),
        )
            .prop_map(|(use_rsa, kid, x5c)| {
                let (rsa, ec, _) = keys();
                let key = if use_rsa { rsa } else { ec };
                TokenIssuer {
                    kid,
                    include_x5c: x5c || kid == KidFormat::None,
                    ..TokenIssuer::new(key.clone(), ISS, TTL)
                }
            })
    }

    fn access() -> impl Strategy<Value = Vec<ResourceActions>> {
        proptest::collection::vec(
            (
                ".{1,12}",
                ".{1,30}",
                proptest::collection::vec(".{1,8}", 0..3),
            )
                .prop_map(|(kind, name, actions)| ResourceActions {
                    kind,
                    name,
                    actions,
                }),
            0..4,
        )
    }

    /// One edit of a token's text.
    #[derive(Debug, Clone)]
    enum Mutation {
        Replace(prop::sample::Index, char),
        Delete(prop::sample::Index),
        Insert(prop::sample::Index, char),
        Truncate(prop::sample::Index),
        SwapParts(usize, usize),
        /// Flip one bit of one decoded part and re-encode it.
        FlipBit(usize, prop::sample::Index, u8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let ch = prop_oneof![
            proptest::char::ranges(vec!['A'..='Z', 'a'..='z', '0'..='9'].into()),
            proptest::sample::select(vec!['-', '_', '.', '=', '+', '/', ' ', '\0']),
            any::<char>(),
        ];
        prop_oneof![
            (any::<prop::sample::Index>(), ch.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
            any::<prop::sample::Index>().prop_map(Mutation::Delete),
            (any::<prop::sample::Index>(), ch).prop_map(|(i, c)| Mutation::Insert(i, c)),
            any::<prop::sample::Index>().prop_map(Mutation::Truncate),
            (0usize..3, 0usize..3).prop_map(|(a, b)| Mutation::SwapParts(a, b)),
            (0usize..3, any::<prop::sample::Index>(), 0u8..8)
                .prop_map(|(p, i, b)| Mutation::FlipBit(p, i, b)),
        ]
    }

    fn apply(token: &str, m: &Mutation) -> String {
        let mut chars: Vec<char> = token.chars().collect();
        if chars.is_empty() && matches!(m, Mutation::Replace(..) | Mutation::Delete(_)) {
            return String::new();
        }
        match m {
            Mutation::Replace(i, c) => {
                let i = i.index(chars.len());
                chars[i] = *c;
            }
            Mutation::Delete(i) => {
                chars.remove(i.index(chars.len()));
            }
            Mutation::Insert(i, c) => chars.insert(i.index(chars.len() + 1), *c),
            Mutation::Truncate(i) => chars.truncate(i.index(chars.len())),
            Mutation::SwapParts(a, b) => {
                let mut parts: Vec<&str> = token.split('.').collect();
                parts.swap(*a, *b);
                return parts.join(".");
            }
            Mutation::FlipBit(p, i, b) => {
                let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
                let mut bytes = BASE64URL_NOPAD.decode(parts[*p].as_bytes()).unwrap();
                let i = i.index(bytes.len());
                bytes[i] ^= 1 << b;
                parts[*p] = b64url(&bytes);
                return parts.join(".");
            }
        }
        chars.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// What the issuer signs, the verifier accepts, with the claims intact, for every key
        /// type and header style, anywhere within the lifetime (and its leeway).
        #[test]
        fn sign_verify_round_trip(
            issuer in issuer(),
            subject in ".{0,40}",
            access in access(),
            offset in -60i64..=360,
        ) {
            let now = now();
            let issued = match issuer.issue_at(&subject, AUD, access.clone(), now) {
                Err(TokenError::TooLarge(_)) => return Err(TestCaseError::reject("too large")),
                r => r.unwrap(),
            };
            let at = if offset < 0 {
                now - Duration::from_secs(offset.unsigned_abs())
            } else {
                now + Duration::from_secs(offset as u64)
            };
            let claims = verifier().verify_at(&issued.token, at).unwrap();
            prop_assert_eq!(claims.sub, subject);
            prop_assert_eq!(claims.access, access);
            prop_assert_eq!(claims.iss, ISS);
            prop_assert_eq!(claims.aud, Audience::One(AUD.into()));
            prop_assert_eq!(claims.exp - claims.iat, 300);
        }

        /// Outside the lifetime and its leeway the same token is refused.
        #[test]
        fn refused_outside_lifetime(issuer in issuer(), late in any::<bool>(), by in 1u64..100_000) {
            let now = now();
            let token = issuer.issue_at("alice", AUD, Vec::new(), now).unwrap().token;
            let at = if late { now + TTL + DEFAULT_LEEWAY + Duration::from_secs(by) } else { now - DEFAULT_LEEWAY - Duration::from_secs(by) };
            let r = verifier().verify_at(&token, at);
            if late {
                prop_assert!(matches!(r, Err(TokenError::Expired { .. })), "{:?}", r);
            } else {
                prop_assert!(matches!(r, Err(TokenError::NotYetValid { .. })), "{:?}", r);
            }
        }

        /// Any edit of a valid token's text makes it fail, without a panic. (Unpadded base64url
        /// has spare bits in its last character; they are checked, so no edit there survives.)
        #[test]
        fn mutated_tokens_never_verify(issuer in issuer(), muts in proptest::collection::vec(mutation(), 1..4)) {
            let now = now();
            let token = issuer.issue_at("alice", AUD, Vec::new(), now).unwrap().token;
            let mut forged = token.clone();
            for m in &muts {
                // Part-wise edits need three decodable parts; earlier edits may have broken them.
                let whole = forged.split('.').count() == 3
                    && forged.split('.').all(|p| BASE64URL_NOPAD.decode(p.as_bytes()).is_ok_and(|b| !b.is_empty()));
                if whole || !matches!(m, Mutation::SwapParts(..) | Mutation::FlipBit(..)) {
                    forged = apply(&forged, m);
                }
            }
            prop_assume!(forged != token);
            let r = verifier().verify_at(&forged, now);
            prop_assert!(r.is_err(), "{:?} verified: {:?}", muts, r);
        }

        /// A token signed by an untrusted key never verifies, whatever trusted key or chain its
        /// header names.
        #[test]
        fn strangers_never_verify(issuer in issuer(), subject in ".{0,20}") {
            let (_, _, stranger) = keys();
            let now = now();
            let token = issuer.issue_at(&subject, AUD, Vec::new(), now).unwrap().token;
            let (input, _) = token.rsplit_once('.').unwrap();
            let sig = stranger.sign(input.as_bytes()).unwrap();
            let forged = format!("{input}.{}", b64url(&sig));
            prop_assert!(verifier().verify_at(&forged, now).is_err());
        }

        /// Arbitrary text, and three base64url parts of arbitrary JSON with arbitrary bytes as the
        /// signature: refused, never a panic.
        #[test]
        fn arbitrary_tokens_never_verify(
            text in prop_oneof![
                any::<String>(),
                "[A-Za-z0-9_.-]{0,300}",
                (
                    proptest::collection::btree_map(
                        proptest::sample::select(vec!["alg", "typ", "kid", "x5c", "jwk", "crit"]),
                        prop_oneof![
                            proptest::sample::select(vec!["none", "None", "", "HS256", "hs512", "RS256", "ES256", "PS256", "EdDSA"])
                                .prop_map(serde_json::Value::from),
                            ".{0,20}".prop_map(serde_json::Value::from),
                            proptest::collection::vec(".{0,20}", 0..3).prop_map(serde_json::Value::from),
                            any::<i64>().prop_map(serde_json::Value::from),
                            Just(serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})),
                            Just(serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"})),
                        ],
                        0..5,
                    ),
                    proptest::collection::btree_map(
                        proptest::sample::select(vec!["iss", "aud", "exp", "nbf", "iat", "sub", "access"]),
                        prop_oneof![
                            Just(serde_json::Value::from(ISS)),
                            Just(serde_json::Value::from(AUD)),
                            any::<i64>().prop_map(serde_json::Value::from),
                            ".{0,10}".prop_map(serde_json::Value::from),
                            Just(serde_json::Value::Null),
                        ],
                        0..7,
                    ),
                    proptest::collection::vec(any::<u8>(), 0..300),
                )
                    .prop_map(|(h, c, sig)| {
                        format!(
                            "{}.{}.{}",
                            b64url(serde_json::to_string(&h).unwrap().as_bytes()),
                            b64url(serde_json::to_string(&c).unwrap().as_bytes()),
                            b64url(&sig),
                        )
                    }),
            ]
        ) {
            prop_assert!(verifier().verify_at(&text, now()).is_err());
        }
    }
}
