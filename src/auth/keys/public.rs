//! Public keys, normalised so that equal keys compare equal: read from a SubjectPublicKeyInfo
//! or a JWK, written back as Go writes them (the bytes libtrust hashes) or as a JWK, and used
//! to verify JWS signatures.

use std::fmt;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey};
use data_encoding::BASE64URL_NOPAD;
use serde_json::{Value, json};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as X509PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::der::{der, der_bit_string, der_uint, strip_leading_zeros};
use super::kid::{jwk_thumbprint, libtrust_kid};
use super::{JwsAlgorithm, KeyError};

/// Elliptic curves a verifier accepts keys on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    P256,
    P384,
}

impl EcCurve {
    pub(super) fn jwk_name(self) -> &'static str {
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

    pub(super) fn from_spki(info: &SubjectPublicKeyInfo<'_>) -> Result<Self, KeyError> {
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

    pub(super) fn from_ec_point(curve: EcCurve, point: &[u8]) -> Result<Self, KeyError> {
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
#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;

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
}
