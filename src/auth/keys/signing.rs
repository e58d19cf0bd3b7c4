//! The token service's signing key: loaded from PEM (PKCS#8, PKCS#1 or SEC1) with its
//! certificate chain, checked to match it, and signing JWS inputs.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use data_encoding::BASE64;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::der::{cert_info, parse_cert_pems};
use super::{EcCurve, KeyAlgorithm, KeyError, PublicKey, read_file};
use crate::util::unix_secs;

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
#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::{JwsAlgorithm, jwk_thumbprint};
    use super::*;

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
        let jwk = super::super::public_jwk(rsa.public_key());
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
}
