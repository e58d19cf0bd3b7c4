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
//!
//! The rooms: `kid` the key-ID formats, `public` public keys (SPKI, JWK, verification), `der`
//! the DER writing and certificate reading they share, `signing` the signing key, `keygen`
//! creating one, `trust` what a verifier trusts, `jwks` the key set the token service publishes.

mod der;
mod jwks;
mod keygen;
mod kid;
mod public;
mod signing;
mod trust;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use jwks::{certificate_keys, jwks, public_jwk};
pub use keygen::{RSA_KEYGEN_BITS, keygen};
pub use kid::{jwk_thumbprint, libtrust_kid};
pub use public::{EcCurve, PublicKey};
pub use signing::{SigningKey, load_signing_key};
pub use trust::{MAX_CHAIN_LEN, TrustStore};

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

fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};

    // Fixtures made with openssl 3.0 (see testdata/README.md): a PKCS#1 RSA key and an SEC1
    // EC key, each with a self-signed certificate from `openssl req -x509`.
    pub(crate) const RSA_PKCS1_KEY: &str = include_str!("../testdata/rsa-pkcs1.key");
    pub(crate) const RSA_CERT: &str = include_str!("../testdata/rsa.crt");
    pub(crate) const EC_SEC1_KEY: &str = include_str!("../testdata/ec-sec1.key");
    pub(crate) const EC_CERT: &str = include_str!("../testdata/ec.crt");

    // Computed independently of this code: libtrust IDs by
    //   openssl x509 -in C -noout -pubkey | openssl pkey -pubin -outform DER \
    //     | openssl dgst -sha256 -binary | head -c 30 | base32 -w0 | tr -d = \
    //     | sed 's/..../&:/g; s/:$//'
    // thumbprints with Python's `cryptography` and `hashlib` (testdata/README.md).
    pub(super) const RSA_LIBTRUST: &str =
        "EXWF:UKF6:B5RW:J6BP:6PDZ:VV2E:K26R:EIH6:NLJL:IFWO:UU3C:G73T";
    pub(super) const EC_LIBTRUST: &str =
        "KE3A:UCJT:QZJX:XU4D:TSVG:7AFG:U33A:V6NJ:KNGL:GK2L:MV7I:HRCO";
    pub(super) const RSA_THUMBPRINT: &str = "wLGWPpFbjd1gKD0tKMc2a2pFuHfG4t5-8spDNS9ZXMU";
    pub(super) const EC_THUMBPRINT: &str = "wZHQI7zhfMYvg8AE6j3Zg07pyFCUThAB4T1VTqqCKOU";

    pub(super) fn spki_of(cert_pem: &str) -> Vec<u8> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        cert.public_key().raw.to_vec()
    }
}
