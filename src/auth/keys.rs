//! Keys for the token service: the private key that signs tokens ([`SigningKey`], created by
//! [`keygen`] or loaded from PEM), the two key-ID formats registries look keys up by
//! ([`libtrust_kid`] for Distribution 2.x and docker_auth, [`jwk_thumbprint`] for Distribution
//! 3.x), and the keys a verifier trusts ([`TrustStore`]).
//!
//! Facts this module is built on (see `design.md` §7 "Token interop"):
//! - Distribution 2.8 indexes the keys of its `rootcertbundle` by libtrust key ID: SHA-256 of the
//!   DER SubjectPublicKeyInfo as Go's `x509.MarshalPKIXPublicKey` writes it, first 30 bytes,
//!   base32 without padding, 12 groups of 4 joined by `:`.
//! - Distribution 3.x indexes them by RFC 7638 JWK thumbprint instead (and a `jwks` file by
//!   `kid`). Its EC thumbprint is computed from the curve's generator point rather than the key
//!   (`params.Gx`/`params.Gy` in `registry/auth/token/util.go`), so an EC key cannot be found by
//!   a correct thumbprint there: RSA is the default, and `x5c` is how EC keys interoperate.
//! - Both verify an `x5c` chain against the bundle before looking at `kid`; a leaf certificate
//!   that is itself in the bundle verifies (Go's `Certificate.Verify`).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use aws_lc_rs::{digest, signature::ParsedPublicKey};
use data_encoding::{BASE32_NOPAD, BASE64, BASE64URL_NOPAD};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey as X509PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// RSA modulus size [`keygen`] uses: 128-bit security, and signing (~1.8 ms a token on this
/// machine's cores) a quarter of the cost of 4096 bits.
pub const RSA_KEYGEN_BITS: usize = 3072;

/// Longest `x5c` chain a verifier looks at.
pub const MAX_CHAIN_LEN: usize = 5;

/// The algorithm a [`SigningKey`] signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256: accepted by every Distribution version and docker_auth.
    Rs256,
    /// ECDSA P-256 with SHA-256 (fixed-size `r || s` signature, as JWS wants).
    Es256,
}

impl KeyAlgorithm {
    /// The JWS `alg` name.
    pub fn jws_name(self) -> &'static str {
        match self {
            KeyAlgorithm::Rs256 => "RS256",
            KeyAlgorithm::Es256 => "ES256",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jws_name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s.to_ascii_lowercase().as_str() {
            "rs256" | "rsa" => Ok(KeyAlgorithm::Rs256),
            "es256" | "ec" | "ecdsa" | "p-256" | "p256" => Ok(KeyAlgorithm::Es256),
            _ => Err(KeyError::Unsupported(format!(
                "key algorithm {s:?}: expected RS256 (rsa) or ES256 (ec)"
            ))),
        }
    }
}

/// A JWS signature algorithm a verifier accepts (see `token::TokenVerifier` for why these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
}

impl JwsAlgorithm {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => JwsAlgorithm::Rs256,
            "RS384" => JwsAlgorithm::Rs384,
            "RS512" => JwsAlgorithm::Rs512,
            "ES256" => JwsAlgorithm::Es256,
            "ES384" => JwsAlgorithm::Es384,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::Rs256 => "RS256",
            JwsAlgorithm::Rs384 => "RS384",
            JwsAlgorithm::Rs512 => "RS512",
            JwsAlgorithm::Es256 => "ES256",
            JwsAlgorithm::Es384 => "ES384",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite it (move it away first)")]
    Exists(PathBuf),
    #[error("private key {origin}: {msg}")]
    PrivateKey { origin: String, msg: String },
    #[error("certificate {origin}: {msg}")]
    Certificate { origin: String, msg: String },
    #[error(
        "the certificate {cert} is for another key than {key} (certificate key {cert_kid}, \
         private key {key_kid}); the first certificate in the file must be the key's own"
    )]
    KeyMismatch {
        key: String,
        cert: String,
        key_kid: String,
        cert_kid: String,
    },
    #[error("public key: {0}")]
    PublicKey(String),
    #[error("JWK: {0}")]
    Jwk(String),
    #[error("JWKS {origin}: {msg}")]
    Jwks { origin: String, msg: String },
    #[error("key ID {kid:?} names two different keys ({first} and {second})")]
    KidConflict {
        kid: String,
        first: String,
        second: String,
    },
    #[error("certificate chain: {0}")]
    Chain(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("signing failed")]
    Sign,
    #[error("key generation failed: {0}")]
    Keygen(String),
}

// ---------------------------------------------------------------------------------------------
// Key IDs

/// The libtrust key ID of a public key given as DER SubjectPublicKeyInfo: SHA-256 of exactly
/// these bytes, first 30 bytes (240 bits), base32 (RFC 4648 alphabet) without padding, 12 groups
/// of 4 characters joined by `:`. Go's libtrust hashes the SPKI as `x509.MarshalPKIXPublicKey`
/// writes it; [`PublicKey::libtrust_kid`] re-encodes the key that way first.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, spki_der);
    let b32 = BASE32_NOPAD.encode(&hash.as_ref()[..30]);
    let groups: Vec<&str> = (0..b32.len())
        .step_by(4)
        .map(|i| &b32[i..(i + 4).min(b32.len())])
        .collect();
    groups.join(":")
}

/// The RFC 7638 thumbprint of a JWK (SHA-256, base64url without padding): the hash of a JSON
/// object holding only the key type's required members (`e`, `kty`, `n` for RSA; `crv`, `kty`,
/// `x`, `y` for EC; `crv`, `kty`, `x` for OKP; `k`, `kty` for oct) in lexicographic order,
/// without whitespace. Member values are used as given.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, KeyError> {
    let obj = jwk
        .as_object()
        .ok_or_else(|| KeyError::Jwk("not a JSON object".into()))?;
    let kty = obj
        .get("kty")
        .and_then(Value::as_str)
        .ok_or_else(|| KeyError::Jwk("no \"kty\" string".into()))?;
    let members: &[&str] = match kty {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "oct" => &["k", "kty"],
        other => return Err(KeyError::Jwk(format!("unknown kty {other:?}"))),
    };
    let mut canonical = String::from("{");
    for (i, m) in members.iter().enumerate() {
        let v = obj
            .get(*m)
            .and_then(Value::as_str)
            .ok_or_else(|| KeyError::Jwk(format!("{kty} key without a {m:?} string")))?;
        if i > 0 {
            canonical.push(',');
        }
        // serde_json writes a JSON string with the escaping RFC 7638 §3.3 asks for.
        canonical.push_str(&serde_json::to_string(m).expect("string serializes"));
        canonical.push(':');
        canonical.push_str(&serde_json::to_string(v).expect("string serializes"));
    }
    canonical.push('}');
    Ok(BASE64URL_NOPAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref()))
}

// ---------------------------------------------------------------------------------------------
// Public keys

/// Elliptic curves a verifier accepts keys on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    P256,
    P384,
}

impl EcCurve {
    fn jwk_name(self) -> &'static str {
        match self {
            EcCurve::P256 => "P-256",
            EcCurve::P384 => "P-384",
        }
    }

    fn coord_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
        }
    }

    /// Content bytes of the named-curve OID.
    fn oid(self) -> &'static [u8] {
        match self {
            EcCurve::P256 => &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            EcCurve::P384 => &[0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }
}

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// A public key, normalised: RSA modulus and exponent big-endian without leading zero bytes,
/// EC coordinates at the curve's full length. Two keys are the same key iff they are `==`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        curve: EcCurve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.describe(), self.thumbprint())
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let skip = b.iter().take_while(|x| **x == 0).count();
    &b[skip..]
}

fn b64url_decode(field: &str, s: &str) -> Result<Vec<u8>, KeyError> {
    BASE64URL_NOPAD
        .decode(s.trim_end_matches('=').as_bytes())
        .map_err(|e| KeyError::Jwk(format!("{field:?} is not base64url: {e}")))
}

impl PublicKey {
    /// Parse a DER SubjectPublicKeyInfo (RSA, or EC on P-256 or P-384 with an uncompressed
    /// point).
    pub fn from_spki_der(spki: &[u8]) -> Result<Self, KeyError> {
        let (rest, info) = SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| KeyError::PublicKey(format!("not a SubjectPublicKeyInfo: {e}")))?;
        if !rest.is_empty() {
            return Err(KeyError::PublicKey(
                "trailing bytes after SubjectPublicKeyInfo".into(),
            ));
        }
        Self::from_spki(&info)
    }

    fn from_spki(info: &SubjectPublicKeyInfo<'_>) -> Result<Self, KeyError> {
        let parsed = info
            .parsed()
            .map_err(|e| KeyError::PublicKey(format!("unreadable public key: {e}")))?;
        let key = match parsed {
            X509PublicKey::RSA(rsa) => PublicKey::Rsa {
                n: strip_leading_zeros(rsa.modulus).to_vec(),
                e: strip_leading_zeros(rsa.exponent).to_vec(),
            },
            X509PublicKey::EC(point) => {
                let curve_oid = info
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .ok_or_else(|| KeyError::PublicKey("EC key without a named curve".into()))?;
                let curve = [EcCurve::P256, EcCurve::P384]
                    .into_iter()
                    .find(|c| c.oid() == curve_oid.as_bytes())
                    .ok_or_else(|| {
                        KeyError::Unsupported(format!(
                            "EC curve {curve_oid} (only P-256 and P-384 are supported)"
                        ))
                    })?;
                Self::from_ec_point(curve, point.data())?
            }
            _ => {
                return Err(KeyError::Unsupported(format!(
                    "public key algorithm {} (only RSA and EC are supported)",
                    info.algorithm.algorithm
                )));
            }
        };
        key.validate()?;
        Ok(key)
    }

    fn from_ec_point(curve: EcCurve, point: &[u8]) -> Result<Self, KeyError> {
        let len = curve.coord_len();
        if point.len() != 1 + 2 * len || point[0] != 0x04 {
            return Err(KeyError::PublicKey(format!(
                "EC {} point is not in uncompressed form",
                curve.jwk_name()
            )));
        }
        Ok(PublicKey::Ec {
            curve,
            x: point[1..1 + len].to_vec(),
            y: point[1 + len..].to_vec(),
        })
    }

    /// Parse the public part of a JWK (`kty` RSA, or EC with `crv` P-256 or P-384). A JWK that
    /// carries private members is refused: a verifier's trust file has no business holding them.
    pub fn from_jwk(jwk: &Value) -> Result<Self, KeyError> {
        let obj = jwk
            .as_object()
            .ok_or_else(|| KeyError::Jwk("not a JSON object".into()))?;
        let field = |name: &str| -> Result<&str, KeyError> {
            obj.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| KeyError::Jwk(format!("no {name:?} string")))
        };
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| obj.contains_key(*m))
        {
            return Err(KeyError::Jwk(
                "contains private key material; publish only the public key".into(),
            ));
        }
        let key = match field("kty")? {
            "RSA" => PublicKey::Rsa {
                n: strip_leading_zeros(&b64url_decode("n", field("n")?)?).to_vec(),
                e: strip_leading_zeros(&b64url_decode("e", field("e")?)?).to_vec(),
            },
            "EC" => {
                let curve = match field("crv")? {
                    "P-256" => EcCurve::P256,
                    "P-384" => EcCurve::P384,
                    other => {
                        return Err(KeyError::Unsupported(format!(
                            "JWK curve {other:?} (only P-256 and P-384 are supported)"
                        )));
                    }
                };
                let x = b64url_decode("x", field("x")?)?;
                let y = b64url_decode("y", field("y")?)?;
                if x.len() != curve.coord_len() || y.len() != curve.coord_len() {
                    return Err(KeyError::Jwk(format!(
                        "{} coordinates must be {} bytes",
                        curve.jwk_name(),
                        curve.coord_len()
                    )));
                }
                PublicKey::Ec { curve, x, y }
            }
            other => {
                return Err(KeyError::Unsupported(format!(
                    "JWK kty {other:?} (only RSA and EC are supported)"
                )));
            }
        };
        key.validate()?;
        Ok(key)
    }

    /// Check the key is usable: RSA of 2048 to 8192 bits, an EC point on its curve.
    fn validate(&self) -> Result<(), KeyError> {
        let result = match self {
            PublicKey::Rsa { n, e } => {
                let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
                if !(2048..=8192).contains(&bits) {
                    return Err(KeyError::Unsupported(format!(
                        "RSA key of {bits} bits (2048 to 8192 are accepted)"
                    )));
                }
                if e.is_empty() {
                    return Err(KeyError::PublicKey("RSA exponent is zero".into()));
                }
                ParsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, self.to_spki_der())
            }
            PublicKey::Ec { curve, .. } => {
                let alg = match curve {
                    EcCurve::P256 => &sig::ECDSA_P256_SHA256_FIXED,
                    EcCurve::P384 => &sig::ECDSA_P384_SHA384_FIXED,
                };
                ParsedPublicKey::new(alg, self.ec_point())
            }
        };
        result
            .map(|_| ())
            .map_err(|e| KeyError::PublicKey(format!("{} key rejected: {e}", self.describe())))
    }

    fn ec_point(&self) -> Vec<u8> {
        match self {
            PublicKey::Ec { x, y, .. } => {
                let mut p = Vec::with_capacity(1 + x.len() + y.len());
                p.push(0x04);
                p.extend_from_slice(x);
                p.extend_from_slice(y);
                p
            }
            PublicKey::Rsa { .. } => Vec::new(),
        }
    }

    /// "RSA 3072" or "EC P-256".
    pub fn describe(&self) -> String {
        match self {
            PublicKey::Rsa { n, .. } => {
                let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
                format!("RSA {bits}")
            }
            PublicKey::Ec { curve, .. } => format!("EC {}", curve.jwk_name()),
        }
    }

    /// DER SubjectPublicKeyInfo as Go's `x509.MarshalPKIXPublicKey` writes it (RSA with NULL
    /// parameters, EC with a named curve and an uncompressed point): the bytes libtrust hashes.
    pub fn to_spki_der(&self) -> Vec<u8> {
        match self {
            PublicKey::Rsa { n, e } => {
                let alg = der(
                    0x30,
                    &[der(0x06, OID_RSA_ENCRYPTION), der(0x05, &[])].concat(),
                );
                let rsa_key = der(0x30, &[der_uint(n), der_uint(e)].concat());
                der(0x30, &[alg, der_bit_string(&rsa_key)].concat())
            }
            PublicKey::Ec { curve, .. } => {
                let alg = der(
                    0x30,
                    &[der(0x06, OID_EC_PUBLIC_KEY), der(0x06, curve.oid())].concat(),
                );
                der(0x30, &[alg, der_bit_string(&self.ec_point())].concat())
            }
        }
    }

    /// The key's public JWK members (`kty`, `n`, `e` or `kty`, `crv`, `x`, `y`).
    pub fn to_jwk(&self) -> Value {
        match self {
            PublicKey::Rsa { n, e } => json!({
                "kty": "RSA",
                "n": BASE64URL_NOPAD.encode(n),
                "e": BASE64URL_NOPAD.encode(e),
            }),
            PublicKey::Ec { curve, x, y } => json!({
                "kty": "EC",
                "crv": curve.jwk_name(),
                "x": BASE64URL_NOPAD.encode(x),
                "y": BASE64URL_NOPAD.encode(y),
            }),
        }
    }

    /// The libtrust key ID (Distribution 2.x, docker_auth).
    pub fn libtrust_kid(&self) -> String {
        libtrust_kid(&self.to_spki_der())
    }

    /// The RFC 7638 SHA-256 thumbprint (Distribution 3.x for RSA keys).
    pub fn thumbprint(&self) -> String {
        jwk_thumbprint(&self.to_jwk()).expect("our own JWK has every required member")
    }

    /// Whether `alg` can be verified with this key.
    pub fn supports(&self, alg: JwsAlgorithm) -> bool {
        matches!(
            (self, alg),
            (
                PublicKey::Rsa { .. },
                JwsAlgorithm::Rs256 | JwsAlgorithm::Rs384 | JwsAlgorithm::Rs512
            ) | (
                PublicKey::Ec {
                    curve: EcCurve::P256,
                    ..
                },
                JwsAlgorithm::Es256
            ) | (
                PublicKey::Ec {
                    curve: EcCurve::P384,
                    ..
                },
                JwsAlgorithm::Es384
            )
        )
    }

    /// Verify a JWS signature (RSASSA-PKCS1-v1_5, or ECDSA as fixed-size `r || s`) of
    /// `message`. False for a bad signature and for an `alg` this key cannot do.
    pub fn verify(&self, alg: JwsAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        if !self.supports(alg) {
            return false;
        }
        match self {
            PublicKey::Rsa { n, e } => {
                let params = match alg {
                    JwsAlgorithm::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    JwsAlgorithm::Rs384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    _ => &sig::RSA_PKCS1_2048_8192_SHA512,
                };
                sig::RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok()
            }
            PublicKey::Ec { curve, .. } => {
                let alg: &'static dyn sig::VerificationAlgorithm = match curve {
                    EcCurve::P256 => &sig::ECDSA_P256_SHA256_FIXED,
                    EcCurve::P384 => &sig::ECDSA_P384_SHA384_FIXED,
                };
                sig::UnparsedPublicKey::new(alg, self.ec_point())
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }
}

// Minimal DER writer for SubjectPublicKeyInfo.

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(v: &[u8]) -> Vec<u8> {
    let v = strip_leading_zeros(v);
    let mut content = Vec::with_capacity(v.len() + 1);
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(v);
    der(0x02, &content)
}

fn der_bit_string(v: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], v].concat())
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// What a verifier or issuer needs from a certificate.
struct CertInfo {
    key: PublicKey,
    not_before: i64,
    not_after: i64,
}

fn cert_info(der: &[u8], origin: &str) -> Result<CertInfo, KeyError> {
    let bad = |msg: String| KeyError::Certificate {
        origin: origin.to_owned(),
        msg,
    };
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate".into()));
    }
    let key = PublicKey::from_spki(cert.public_key()).map_err(|e| bad(e.to_string()))?;
    Ok(CertInfo {
        key,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_cert_pems(
    pem_bytes: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KeyError::Certificate {
            origin: origin.to_owned(),
            msg: format!("unreadable PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(KeyError::Certificate {
            origin: origin.to_owned(),
            msg: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs().min(i64::MAX as u64) as i64,
        Err(e) => -(e.duration().as_secs().min(i64::MAX as u64) as i64),
    }
}

// ---------------------------------------------------------------------------------------------
// Signing key

enum Signer {
    Rsa(sig::RsaKeyPair),
    Ec(sig::EcdsaKeyPair),
}

/// The token service's private key with its certificate chain (leaf first). Cheap to clone.
#[derive(Clone)]
pub struct SigningKey {
    signer: Arc<Signer>,
    algorithm: KeyAlgorithm,
    public: PublicKey,
    chain: Vec<CertificateDer<'static>>,
    libtrust_kid: String,
    thumbprint_kid: String,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("key", &self.public.describe())
            .field("libtrust_kid", &self.libtrust_kid)
            .field("thumbprint_kid", &self.thumbprint_kid)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Load the token signing key and its certificate chain from PEM files.
///
/// The key may be PKCS#8 (`PRIVATE KEY`: RSA or EC P-256), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`, converted in memory). The certificate file holds the chain, leaf first;
/// the leaf must be the key's own certificate.
pub fn load_signing_key(key_pem: &Path, cert_pem: &Path) -> Result<SigningKey, KeyError> {
    let key = read_file(key_pem)?;
    let certs = read_file(cert_pem)?;
    SigningKey::from_pem_named(
        &key,
        &certs,
        &key_pem.display().to_string(),
        &cert_pem.display().to_string(),
    )
}

impl SigningKey {
    /// [`load_signing_key`] from bytes.
    pub fn from_pem(key_pem: &[u8], cert_pem: &[u8]) -> Result<Self, KeyError> {
        Self::from_pem_named(key_pem, cert_pem, "(key)", "(certificate)")
    }

    fn from_pem_named(
        key_pem: &[u8],
        cert_pem: &[u8],
        key_origin: &str,
        cert_origin: &str,
    ) -> Result<Self, KeyError> {
        let (signer, algorithm, public) = parse_private_key(key_pem, key_origin)?;
        let chain = parse_cert_pems(cert_pem, cert_origin)?;
        let leaf = cert_info(&chain[0], cert_origin)?;
        if leaf.key != public {
            return Err(KeyError::KeyMismatch {
                key: key_origin.to_owned(),
                cert: cert_origin.to_owned(),
                key_kid: public.libtrust_kid(),
                cert_kid: leaf.key.libtrust_kid(),
            });
        }
        for (i, c) in chain.iter().enumerate().skip(1) {
            cert_info(c, &format!("{cert_origin} (certificate #{})", i + 1))?;
        }
        Ok(SigningKey {
            signer: Arc::new(signer),
            algorithm,
            libtrust_kid: public.libtrust_kid(),
            thumbprint_kid: public.thumbprint(),
            public,
            chain,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Key ID for Distribution 2.x and docker_auth-style verifiers.
    pub fn libtrust_kid(&self) -> &str {
        &self.libtrust_kid
    }

    /// RFC 7638 thumbprint, the key ID Distribution 3.x looks RSA keys up by.
    pub fn thumbprint_kid(&self) -> &str {
        &self.thumbprint_kid
    }

    /// The certificate chain for a JWS `x5c` header: standard base64 DER, leaf first.
    pub fn x5c(&self) -> Vec<String> {
        self.chain
            .iter()
            .map(|c| BASE64.encode(c.as_ref()))
            .collect()
    }

    /// The public key as a JWK for a JWKS document: key members plus `alg` and `use`. Callers
    /// add the `kid` their tokens carry.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = self.public.to_jwk();
        let obj = jwk.as_object_mut().expect("to_jwk returns an object");
        obj.insert("alg".into(), self.algorithm.jws_name().into());
        obj.insert("use".into(), "sig".into());
        jwk
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn certificate_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf certificate's validity period, Unix seconds.
    pub fn leaf_validity(&self) -> (i64, i64) {
        (self.not_before, self.not_after)
    }

    /// Whether the leaf certificate is valid at `now` (verifiers of `x5c` check this).
    pub fn leaf_valid_at(&self, now: SystemTime) -> bool {
        let t = unix_secs(now);
        self.not_before <= t && t <= self.not_after
    }

    /// Sign a JWS signing input with [`Self::algorithm`].
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match &*self.signer {
            Signer::Rsa(kp) => {
                let mut out = vec![0; kp.public_modulus_len()];
                kp.sign(&sig::RSA_PKCS1_SHA256, &rng, message, &mut out)
                    .map_err(|_| KeyError::Sign)?;
                Ok(out)
            }
            Signer::Ec(kp) => kp
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
        }
    }
}

const TOPK8_HINT: &str = "openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pkcs8";

fn parse_private_key(
    pem_bytes: &[u8],
    origin: &str,
) -> Result<(Signer, KeyAlgorithm, PublicKey), KeyError> {
    let bad = |msg: String| KeyError::PrivateKey {
        origin: origin.to_owned(),
        msg,
    };
    let text = String::from_utf8_lossy(pem_bytes);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(bad(format!(
            "the key is encrypted; store it unencrypted with mode 0600 \
             (`openssl pkey -in KEY -out KEY.plain`, or `{TOPK8_HINT}`)"
        )));
    }
    let der = PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            bad("no PEM block PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY found".to_owned())
        }
        e => bad(format!("unreadable PEM: {e}")),
    })?;
    let rsa = |kp: sig::RsaKeyPair| -> Result<_, KeyError> {
        let spki = kp
            .public_key()
            .as_der()
            .map_err(|_| bad("cannot encode the RSA public key".into()))?;
        let public = PublicKey::from_spki_der(spki.as_ref()).map_err(|e| bad(e.to_string()))?;
        Ok((Signer::Rsa(kp), KeyAlgorithm::Rs256, public))
    };
    let ec = |kp: sig::EcdsaKeyPair| -> Result<_, KeyError> {
        let public = PublicKey::from_ec_point(EcCurve::P256, kp.public_key().as_ref())
            .map_err(|e| bad(e.to_string()))?;
        Ok((Signer::Ec(kp), KeyAlgorithm::Es256, public))
    };
    match der {
        PrivateKeyDer::Pkcs1(k) => match sig::RsaKeyPair::from_der(k.secret_pkcs1_der()) {
            Ok(kp) => rsa(kp),
            Err(e) => Err(bad(format!("RSA key rejected: {e} (2048 to 8192 bits)"))),
        },
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            match sig::RsaKeyPair::from_pkcs8(der) {
                Ok(kp) => rsa(kp),
                Err(rsa_err) => {
                    match sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    {
                        Ok(kp) => ec(kp),
                        Err(ec_err) => Err(bad(format!(
                            "PKCS#8 key is neither an RSA key of 2048 to 8192 bits ({rsa_err}) nor \
                         an EC P-256 key ({ec_err}); only those can sign tokens"
                        ))),
                    }
                }
            }
        }
        PrivateKeyDer::Sec1(k) => match sig::EcdsaKeyPair::from_private_key_der(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            k.secret_sec1_der(),
        ) {
            Ok(kp) => ec(kp),
            Err(e) => Err(bad(format!(
                "SEC1 EC key rejected: {e} (only P-256 can sign tokens; for PKCS#8 run \
                 `{TOPK8_HINT}`)"
            ))),
        },
        _ => Err(bad(format!(
            "unsupported private key format; use PKCS#8 (`{TOPK8_HINT}`)"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// keygen

/// Create a token signing key and a self-signed certificate for it: what
/// `openssl req -x509 -newkey rsa:4096 -nodes -keyout KEY -out CERT -days N -subj /CN=NAME`
/// does in a docker_auth setup. The certificate (a CA certificate, as openssl makes it) is what
/// a registry's `rootcertbundle` names. The key is written as PKCS#8 PEM with mode 0600; RSA
/// keys have [`RSA_KEYGEN_BITS`] bits. Existing files are never overwritten.
pub fn keygen(
    key_out: &Path,
    cert_out: &Path,
    alg: KeyAlgorithm,
    common_name: &str,
    validity_days: u32,
) -> Result<(), KeyError> {
    if common_name.is_empty() {
        return Err(KeyError::Keygen("the common name is empty".into()));
    }
    if validity_days == 0 {
        return Err(KeyError::Keygen("validity must be at least one day".into()));
    }
    if key_out == cert_out {
        return Err(KeyError::Keygen(
            "the key and the certificate need two different files".into(),
        ));
    }
    for p in [key_out, cert_out] {
        if p.exists() {
            return Err(KeyError::Exists(p.to_owned()));
        }
    }
    let (key_pem, cert_pem) = generate(alg, common_name, validity_days, SystemTime::now())?;
    write_new(key_out, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(cert_out, cert_pem.as_bytes(), 0o644) {
        let _ = fs::remove_file(key_out);
        return Err(e);
    }
    Ok(())
}

/// Key PEM (PKCS#8) and self-signed certificate PEM.
fn generate(
    alg: KeyAlgorithm,
    common_name: &str,
    validity_days: u32,
    now: SystemTime,
) -> Result<(String, String), KeyError> {
    let err = |e: rcgen::Error| KeyError::Keygen(e.to_string());
    let key_pair = match alg {
        KeyAlgorithm::Rs256 => {
            let size = match RSA_KEYGEN_BITS {
                2048 => rcgen::RsaKeySize::_2048,
                4096 => rcgen::RsaKeySize::_4096,
                _ => rcgen::RsaKeySize::_3072,
            };
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size).map_err(err)?
        }
        KeyAlgorithm::Es256 => {
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?
        }
    };
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    // A little slack for verifiers whose clock is behind.
    params.not_before = (now - Duration::from_secs(300)).into();
    params.not_after = (now + Duration::from_secs(u64::from(validity_days) * 86_400)).into();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key_pair).map_err(err)?;
    Ok((key_pair.serialize_pem(), cert.pem()))
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let write_err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_owned())
        } else {
            write_err(e)
        }
    })?;
    let result = f.write_all(data).and_then(|()| f.sync_all());
    if let Err(e) = result {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(write_err(e));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Trust

#[derive(Clone)]
struct TrustedKey {
    key: PublicKey,
    source: String,
}

/// The keys a token verifier trusts, and the certificates `x5c` chains must lead to.
///
/// - A certificate (our own signing key's, or each one of a `rootcertbundle` file) makes its
///   public key trusted under its libtrust key ID and its RFC 7638 thumbprint, and makes the
///   certificate a root for `x5c` chains.
/// - A JWKS file makes each key trusted under its `kid` (and, being the same key, under its
///   libtrust ID and thumbprint). JWKS keys are not `x5c` roots.
#[derive(Clone, Default)]
pub struct TrustStore {
    keys: Vec<TrustedKey>,
    by_kid: HashMap<String, usize>,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.by_kid.keys().collect();
        kids.sort();
        f.debug_struct("TrustStore")
            .field("keys", &self.keys.len())
            .field("kids", &kids)
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// `x5c` leaves may carry any extended key usage, as Distribution's `ExtKeyUsageAny`.
struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

impl TrustStore {
    pub fn new() -> Self {
        TrustStore::default()
    }

    /// A store trusting one `rootcertbundle`-style PEM file.
    pub fn from_cert_bundle_file(path: &Path) -> Result<Self, KeyError> {
        let mut t = TrustStore::new();
        t.add_cert_bundle_file(path)?;
        Ok(t)
    }

    /// A store trusting the keys of one JWKS file.
    pub fn from_jwks_file(path: &Path) -> Result<Self, KeyError> {
        let mut t = TrustStore::new();
        t.add_jwks_file(path)?;
        Ok(t)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of distinct trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Number of certificates `x5c` chains may lead to.
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }

    /// Trust our own signing key: its leaf certificate (not the rest of its chain).
    pub fn add_signing_key(&mut self, key: &SigningKey) -> Result<(), KeyError> {
        self.add_certificate(key.chain[0].clone(), "the token signing certificate")
    }

    /// Trust one certificate: its key by libtrust ID and thumbprint, and the certificate as an
    /// `x5c` root.
    pub fn add_certificate(
        &mut self,
        cert: CertificateDer<'static>,
        source: &str,
    ) -> Result<(), KeyError> {
        let info = cert_info(&cert, source)?;
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| KeyError::Certificate {
                origin: source.to_owned(),
                msg: format!("unusable as a trust anchor: {e}"),
            })?
            .to_owned();
        self.add_key(info.key, None, source)?;
        if !self.roots.iter().any(|r| r == &cert) {
            self.roots.push(cert);
            self.anchors.push(anchor);
        }
        Ok(())
    }

    /// Trust every certificate of a PEM bundle (a registry's `rootcertbundle`). Returns how
    /// many certificates it held.
    pub fn add_cert_bundle_pem(
        &mut self,
        pem_bytes: &[u8],
        source: &str,
    ) -> Result<usize, KeyError> {
        let certs = parse_cert_pems(pem_bytes, source)?;
        let n = certs.len();
        for (i, cert) in certs.into_iter().enumerate() {
            self.add_certificate(cert, &format!("{source} (certificate #{})", i + 1))?;
        }
        Ok(n)
    }

    pub fn add_cert_bundle_file(&mut self, path: &Path) -> Result<usize, KeyError> {
        let bytes = read_file(path)?;
        self.add_cert_bundle_pem(&bytes, &path.display().to_string())
    }

    /// Trust the keys of a JWKS document (`{"keys":[...]}`; RSA and EC P-256/P-384). Keys with
    /// `"use"` other than `"sig"` are skipped; any other key that cannot be used is an error.
    /// Returns how many keys were added.
    pub fn add_jwks(&mut self, json_bytes: &[u8], source: &str) -> Result<usize, KeyError> {
        let bad = |msg: String| KeyError::Jwks {
            origin: source.to_owned(),
            msg,
        };
        let doc: Value =
            serde_json::from_slice(json_bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"keys\" array".into()))?;
        let mut added = 0;
        for (i, jwk) in keys.iter().enumerate() {
            let kid = jwk.get("kid").and_then(Value::as_str);
            let name = match kid {
                Some(k) => format!("key #{} (kid {k:?})", i + 1),
                None => format!("key #{}", i + 1),
            };
            if jwk
                .get("use")
                .and_then(Value::as_str)
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            let key = PublicKey::from_jwk(jwk).map_err(|e| bad(format!("{name}: {e}")))?;
            self.add_key(
                key,
                kid.filter(|k| !k.is_empty()),
                &format!("{source} {name}"),
            )?;
            added += 1;
        }
        Ok(added)
    }

    pub fn add_jwks_file(&mut self, path: &Path) -> Result<usize, KeyError> {
        let bytes = read_file(path)?;
        self.add_jwks(&bytes, &path.display().to_string())
    }

    fn add_key(&mut self, key: PublicKey, kid: Option<&str>, source: &str) -> Result<(), KeyError> {
        let idx = match self.keys.iter().position(|k| k.key == key) {
            Some(i) => i,
            None => {
                self.keys.push(TrustedKey {
                    key: key.clone(),
                    source: source.to_owned(),
                });
                self.keys.len() - 1
            }
        };
        let mut kids = vec![key.libtrust_kid(), key.thumbprint()];
        kids.extend(kid.map(str::to_owned));
        for k in kids {
            match self.by_kid.get(&k) {
                Some(&other) if other != idx => {
                    return Err(KeyError::KidConflict {
                        kid: k,
                        first: self.keys[other].source.clone(),
                        second: source.to_owned(),
                    });
                }
                Some(_) => {}
                None => {
                    self.by_kid.insert(k, idx);
                }
            }
        }
        Ok(())
    }

    /// The trusted key with this key ID.
    pub fn key_by_kid(&self, kid: &str) -> Option<&PublicKey> {
        self.by_kid.get(kid).map(|&i| &self.keys[i].key)
    }

    /// Whether this very key is trusted.
    pub fn contains_key(&self, key: &PublicKey) -> bool {
        self.keys.iter().any(|k| &k.key == key)
    }

    /// All key IDs the store answers to, sorted (for logs).
    pub fn kids(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Verify an `x5c` chain (DER, leaf first) at `now` and return the leaf's public key.
    ///
    /// As Go's `Certificate.Verify` (Distribution 2.8 and 3.x): a leaf that is itself one of the
    /// trusted certificates is trusted if within its validity period; otherwise the chain,
    /// through the given intermediates, must lead to a trusted certificate (rustls-webpki path
    /// building: signatures, validity, CA basic constraints, path length, name constraints; any
    /// extended key usage). A CA certificate cannot be the leaf of a longer chain.
    pub fn verify_chain(&self, chain: &[Vec<u8>], now: SystemTime) -> Result<PublicKey, KeyError> {
        let leaf = chain
            .first()
            .ok_or_else(|| KeyError::Chain("empty chain".into()))?;
        if chain.len() > MAX_CHAIN_LEN {
            return Err(KeyError::Chain(format!(
                "{} certificates; at most {MAX_CHAIN_LEN} are looked at",
                chain.len()
            )));
        }
        if self.roots.is_empty() {
            return Err(KeyError::Chain(
                "no trusted certificates are configured to verify it against".into(),
            ));
        }
        let info = cert_info(leaf, "x5c leaf").map_err(|e| KeyError::Chain(e.to_string()))?;
        if self.roots.iter().any(|r| r.as_ref() == leaf.as_slice()) {
            let t = unix_secs(now);
            if t < info.not_before {
                return Err(KeyError::Chain("leaf certificate is not valid yet".into()));
            }
            if t > info.not_after {
                return Err(KeyError::Chain("leaf certificate has expired".into()));
            }
            return Ok(info.key);
        }
        let leaf_der = CertificateDer::from(leaf.as_slice());
        let ee = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| KeyError::Chain(format!("leaf certificate: {e}")))?;
        let intermediates: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| KeyError::Chain("clock before 1970".into()))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            UnixTime::since_unix_epoch(secs),
            AnyEku,
            None,
            None,
        )
        .map_err(|e| KeyError::Chain(format!("does not lead to a trusted certificate: {e}")))?;
        Ok(info.key)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // Fixtures made with openssl 3.0 (see testdata/README.md): a PKCS#1 RSA key and an SEC1
    // EC key, each with a self-signed certificate from `openssl req -x509`.
    pub(crate) const RSA_PKCS1_KEY: &str = include_str!("testdata/rsa-pkcs1.key");
    pub(crate) const RSA_CERT: &str = include_str!("testdata/rsa.crt");
    pub(crate) const EC_SEC1_KEY: &str = include_str!("testdata/ec-sec1.key");
    pub(crate) const EC_CERT: &str = include_str!("testdata/ec.crt");

    // Computed independently of this code: libtrust IDs by
    //   openssl x509 -in C -noout -pubkey | openssl pkey -pubin -outform DER \
    //     | openssl dgst -sha256 -binary | head -c 30 | base32 -w0 | tr -d = \
    //     | sed 's/..../&:/g; s/:$//'
    // thumbprints with Python's `cryptography` and `hashlib` (testdata/README.md).
    const RSA_LIBTRUST: &str = "EXWF:UKF6:B5RW:J6BP:6PDZ:VV2E:K26R:EIH6:NLJL:IFWO:UU3C:G73T";
    const EC_LIBTRUST: &str = "KE3A:UCJT:QZJX:XU4D:TSVG:7AFG:U33A:V6NJ:KNGL:GK2L:MV7I:HRCO";
    const RSA_THUMBPRINT: &str = "wLGWPpFbjd1gKD0tKMc2a2pFuHfG4t5-8spDNS9ZXMU";
    const EC_THUMBPRINT: &str = "wZHQI7zhfMYvg8AE6j3Zg07pyFCUThAB4T1VTqqCKOU";

    fn spki_of(cert_pem: &str) -> Vec<u8> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        cert.public_key().raw.to_vec()
    }

    #[test]
    fn libtrust_kid_matches_openssl() {
        assert_eq!(libtrust_kid(&spki_of(RSA_CERT)), RSA_LIBTRUST);
        assert_eq!(libtrust_kid(&spki_of(EC_CERT)), EC_LIBTRUST);
        // Re-encoding the parsed key as Go does gives the same bytes, hence the same ID.
        for cert in [RSA_CERT, EC_CERT] {
            let spki = spki_of(cert);
            let key = PublicKey::from_spki_der(&spki).unwrap();
            assert_eq!(key.to_spki_der(), spki);
        }
        let k = libtrust_kid(b"anything");
        assert_eq!(k.len(), 12 * 4 + 11);
        assert_eq!(k.split(':').count(), 12);
    }

    #[test]
    fn thumbprint_rfc7638_vector() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        let key = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(jwk_thumbprint(&json!({"kty": "RSA", "n": "AQAB"})).is_err());
        assert!(jwk_thumbprint(&json!({"kty": "XYZ"})).is_err());
    }

    #[test]
    fn thumbprints_match_python() {
        let rsa = PublicKey::from_spki_der(&spki_of(RSA_CERT)).unwrap();
        let ec = PublicKey::from_spki_der(&spki_of(EC_CERT)).unwrap();
        assert_eq!(rsa.thumbprint(), RSA_THUMBPRINT);
        assert_eq!(ec.thumbprint(), EC_THUMBPRINT);
        assert_eq!(jwk_thumbprint(&rsa.to_jwk()).unwrap(), RSA_THUMBPRINT);
        assert_eq!(rsa.describe(), "RSA 2048");
        assert_eq!(ec.describe(), "EC P-256");
        // JWK round trip.
        assert_eq!(PublicKey::from_jwk(&ec.to_jwk()).unwrap(), ec);
        assert_eq!(PublicKey::from_jwk(&rsa.to_jwk()).unwrap(), rsa);
    }

    #[test]
    fn loads_openssl_pkcs1_and_sec1_keys() {
        let rsa = SigningKey::from_pem(RSA_PKCS1_KEY.as_bytes(), RSA_CERT.as_bytes()).unwrap();
        assert_eq!(rsa.algorithm(), KeyAlgorithm::Rs256);
        assert_eq!(rsa.libtrust_kid(), RSA_LIBTRUST);
        assert_eq!(rsa.thumbprint_kid(), RSA_THUMBPRINT);
        let ec = SigningKey::from_pem(EC_SEC1_KEY.as_bytes(), EC_CERT.as_bytes()).unwrap();
        assert_eq!(ec.algorithm(), KeyAlgorithm::Es256);
        assert_eq!(ec.libtrust_kid(), EC_LIBTRUST);
        assert_eq!(ec.thumbprint_kid(), EC_THUMBPRINT);
        assert_eq!(ec.x5c().len(), 1);
        assert_eq!(
            BASE64.decode(ec.x5c()[0].as_bytes()).unwrap(),
            ec.certificate_chain()[0].as_ref()
        );
        let jwk = rsa.public_jwk();
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk_thumbprint(&jwk).unwrap(), RSA_THUMBPRINT);
        // Signatures verify with the public key.
        for key in [&rsa, &ec] {
            let alg = JwsAlgorithm::from_name(key.algorithm().jws_name()).unwrap();
            let s = key.sign(b"message").unwrap();
            assert!(key.public_key().verify(alg, b"message", &s));
            assert!(!key.public_key().verify(alg, b"messagf", &s));
        }
        assert_eq!(ec.sign(b"m").unwrap().len(), 64);
    }

    #[test]
    fn refuses_mismatched_and_bad_keys() {
        let err = SigningKey::from_pem(RSA_PKCS1_KEY.as_bytes(), EC_CERT.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::KeyMismatch { .. }), "{err}");
        let err = SigningKey::from_pem(b"nothing here", RSA_CERT.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("no PEM block"), "{err}");
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = SigningKey::from_pem(enc.as_bytes(), RSA_CERT.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
        let err = SigningKey::from_pem(RSA_PKCS1_KEY.as_bytes(), b"").unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn keygen_writes_loadable_files() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [KeyAlgorithm::Es256, KeyAlgorithm::Rs256] {
            let key = dir.path().join(format!("{alg}.key"));
            let cert = dir.path().join(format!("{alg}.crt"));
            keygen(&key, &cert, alg, "ocimirror token", 30).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600);
            }
            let pem = fs::read_to_string(&key).unwrap();
            assert!(
                pem.starts_with("-----BEGIN PRIVATE KEY-----"),
                "PKCS#8 expected"
            );
            let sk = load_signing_key(&key, &cert).unwrap();
            assert_eq!(sk.algorithm(), alg);
            if alg == KeyAlgorithm::Rs256 {
                assert_eq!(sk.public_key().describe(), format!("RSA {RSA_KEYGEN_BITS}"));
            }
            let (nb, na) = sk.leaf_validity();
            assert!((na - nb - 30 * 86_400 - 300).abs() <= 2, "{nb} {na}");
            assert!(sk.leaf_valid_at(SystemTime::now()));
            let der = &sk.certificate_chain()[0];
            let (_, c) = X509Certificate::from_der(der).unwrap();
            assert!(c.is_ca());
            assert_eq!(c.subject(), c.issuer());
            // Usable as a rootcertbundle: trusted by both key IDs, and as its own x5c root.
            let t = TrustStore::from_cert_bundle_file(&cert).unwrap();
            assert_eq!(t.key_by_kid(sk.libtrust_kid()), Some(sk.public_key()));
            assert_eq!(t.key_by_kid(sk.thumbprint_kid()), Some(sk.public_key()));
            let chain = vec![der.to_vec()];
            assert_eq!(
                &t.verify_chain(&chain, SystemTime::now()).unwrap(),
                sk.public_key()
            );
            let later = SystemTime::now() + Duration::from_secs(31 * 86_400);
            assert!(
                t.verify_chain(&chain, later).is_err(),
                "expired leaf accepted"
            );
            // Never overwrites.
            let err = keygen(&key, &dir.path().join("other.crt"), alg, "x", 1).unwrap_err();
            assert!(matches!(err, KeyError::Exists(_)), "{err}");
        }
        assert!(
            keygen(
                &dir.path().join("a"),
                &dir.path().join("b"),
                KeyAlgorithm::Es256,
                "",
                1
            )
            .is_err()
        );
        assert!(
            keygen(
                &dir.path().join("a"),
                &dir.path().join("b"),
                KeyAlgorithm::Es256,
                "x",
                0
            )
            .is_err()
        );
    }

    #[test]
    fn trust_store_from_bundle_and_jwks() {
        let mut bundle = String::from(RSA_CERT);
        bundle.push_str(EC_CERT);
        let mut t = TrustStore::new();
        assert_eq!(
            t.add_cert_bundle_pem(bundle.as_bytes(), "bundle").unwrap(),
            2
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.root_count(), 2);
        for kid in [RSA_LIBTRUST, RSA_THUMBPRINT, EC_LIBTRUST, EC_THUMBPRINT] {
            assert!(t.key_by_kid(kid).is_some(), "{kid}");
        }
        // Adding the same certificate twice changes nothing.
        t.add_cert_bundle_pem(RSA_CERT.as_bytes(), "again").unwrap();
        assert_eq!((t.len(), t.root_count()), (2, 2));

        let ec = PublicKey::from_spki_der(&spki_of(EC_CERT)).unwrap();
        let mut jwk = ec.to_jwk();
        jwk["kid"] = "my-ec-key".into();
        let enc = json!({"kty": "oct", "k": "c2VjcmV0", "use": "enc"});
        let jwks = json!({"keys": [jwk, enc]});
        let mut j = TrustStore::new();
        assert_eq!(j.add_jwks(jwks.to_string().as_bytes(), "jwks").unwrap(), 1);
        assert_eq!(j.key_by_kid("my-ec-key"), Some(&ec));
        assert_eq!(j.key_by_kid(EC_THUMBPRINT), Some(&ec));
        assert_eq!(j.root_count(), 0);
        // A kid naming two keys is refused; so are secret and private keys.
        let rsa = PublicKey::from_spki_der(&spki_of(RSA_CERT)).unwrap();
        let mut other = rsa.to_jwk();
        other["kid"] = "my-ec-key".into();
        let err = j
            .add_jwks(json!({"keys": [other]}).to_string().as_bytes(), "jwks2")
            .unwrap_err();
        assert!(matches!(err, KeyError::KidConflict { .. }), "{err}");
        let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        assert!(
            TrustStore::new()
                .add_jwks(oct.to_string().as_bytes(), "j")
                .is_err()
        );
        let mut private = ec.to_jwk();
        private["d"] = "AAAA".into();
        let private = json!({"keys": [private]});
        assert!(
            TrustStore::new()
                .add_jwks(private.to_string().as_bytes(), "j")
                .is_err()
        );
        // A point off the curve is refused at load time.
        let mut off = ec.to_jwk();
        off["y"] = BASE64URL_NOPAD.encode(&[1u8; 32]).into();
        assert!(PublicKey::from_jwk(&off).is_err());
    }

    #[test]
    fn chains_through_a_ca() {
        let now = SystemTime::now();
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ca");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "leaf");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let mut t = TrustStore::new();
        t.add_certificate(ca_cert.der().clone(), "ca").unwrap();
        let key = t.verify_chain(&[leaf.der().to_vec()], now).unwrap();
        assert_eq!(key, cert_info(leaf.der(), "leaf").unwrap().key);
        // The leaf's key is not trusted by key ID: only through the chain.
        assert!(t.key_by_kid(&key.libtrust_kid()).is_none());
        // An untrusted CA of the same name does not do.
        let other_ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let other_issuer = rcgen::Issuer::from_params(&ca_params, &other_ca_key);
        let forged = leaf_params.signed_by(&leaf_key, &other_issuer).unwrap();
        let err = t.verify_chain(&[forged.der().to_vec()], now).unwrap_err();
        assert!(matches!(err, KeyError::Chain(_)), "{err}");
        // Nor does a store without roots.
        assert!(
            TrustStore::new()
                .verify_chain(&[leaf.der().to_vec()], now)
                .is_err()
        );
    }
}
