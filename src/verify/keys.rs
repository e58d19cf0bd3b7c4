//! The public keys a rule trusts: PEM `PUBLIC KEY` files (ECDSA P-256/P-384, RSA, Ed25519) read
//! into aws-lc-rs verifiers, each known by its fingerprint (SHA-256 of its SubjectPublicKeyInfo,
//! the form `cosign` and `openssl pkey -pubin -outform DER | sha256sum` agree on).

use std::path::Path;

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa,
    Ed25519,
}

/// A trusted public key.
#[derive(Clone)]
pub struct TrustedKey {
    algorithm: Algorithm,
    /// What aws-lc-rs verifies with: the EC point, the PKCS#1 RSAPublicKey, or the raw Ed25519 key.
    raw: Vec<u8>,
    fingerprint: String,
    /// The file it was read from (watched for reloads); empty when not from a file.
    path: std::path::PathBuf,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({:?}, {})", self.algorithm, self.fingerprint)
    }
}

impl TrustedKey {
    pub fn load(path: &Path) -> Result<Self, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut k = Self::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        k.path = path.to_owned();
        Ok(k)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM PUBLIC KEY: {e}"))?;
        Self::from_spki_der(der.as_ref())
    }

    pub fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        let (rest, info) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the SubjectPublicKeyInfo".into());
        }
        let oid = info.algorithm.algorithm.to_id_string();
        let algorithm = match oid.as_str() {
            OID_RSA => Algorithm::Rsa,
            OID_ED25519 => Algorithm::Ed25519,
            OID_EC => {
                let curve = info
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string());
                match curve.as_deref() {
                    Some(OID_P256) => Algorithm::EcdsaP256,
                    Some(OID_P384) => Algorithm::EcdsaP384,
                    other => {
                        return Err(format!(
                            "EC curve {} is not supported (P-256 and P-384 are)",
                            other.unwrap_or("(none)")
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "key algorithm {other} is not supported (ECDSA P-256/P-384, RSA and Ed25519 are)"
                ));
            }
        };
        Ok(TrustedKey {
            algorithm,
            raw: info.subject_public_key.data.to_vec(),
            fingerprint: format!(
                "SHA256:{}",
                hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
            ),
            path: Default::default(),
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether `signature` is this key's signature of `message`: ECDSA as ASN.1 DER with
    /// SHA-256 (P-256) or SHA-384 or SHA-256 (P-384: Sigstore's clients have signed with
    /// either), RSA PKCS#1 v1.5 or PSS with SHA-256, Ed25519 over
    /// the message itself; what `cosign sign` and `openssl dgst -sign` write.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let algs: &[&'static dyn sig::VerificationAlgorithm] = match self.algorithm {
            Algorithm::EcdsaP256 => &[&sig::ECDSA_P256_SHA256_ASN1],
            Algorithm::EcdsaP384 => &[&sig::ECDSA_P384_SHA384_ASN1, &sig::ECDSA_P384_SHA256_ASN1],
            Algorithm::Rsa => &[
                &sig::RSA_PKCS1_2048_8192_SHA256,
                &sig::RSA_PSS_2048_8192_SHA256,
            ],
            Algorithm::Ed25519 => &[&sig::ED25519],
        };
        algs.iter().any(|alg| {
            UnparsedPublicKey::new(*alg, &self.raw)
                .verify(message, signature)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl(args: &[&str], dir: &Path) -> Option<()> {
        let st = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        st.success().then_some(())
    }

    /// `openssl genpkey` arguments: a key of `algorithm` (with `-pkeyopt opt`) into `out`.
    fn genpkey<'a>(algorithm: &'a str, opt: Option<&'a str>, out: &'a str) -> Vec<&'a str> {
        let mut args = vec!["genpkey", "-algorithm", algorithm];
        if let Some(opt) = opt {
            args.extend(["-pkeyopt", opt]);
        }
        args.extend(["-out", out]);
        args
    }

    /// `openssl dgst` arguments: `msg` hashed with `digest` (`-sha256`), signed with `key` into `out`.
    fn dgst<'a>(digest: &'a str, key: &'a str, out: &'a str) -> Vec<&'a str> {
        vec!["dgst", digest, "-sign", key, "-out", out, "msg"]
    }

    /// Keys and signatures made by openssl verify; a changed message or another key does not.
    #[test]
    fn openssl_keys_and_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("msg"), b"payload").unwrap();
        // Name, algorithm, key option, digest (none: Ed25519 signs the message itself).
        let kinds: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            (
                "p256",
                "EC",
                Some("ec_paramgen_curve:P-256"),
                Some("-sha256"),
            ),
            (
                "p384",
                "EC",
                Some("ec_paramgen_curve:P-384"),
                Some("-sha384"),
            ),
            ("rsa", "RSA", Some("rsa_keygen_bits:2048"), Some("-sha256")),
            ("ed", "ED25519", None, None),
        ];
        let mut keys = Vec::new();
        for (name, algorithm, opt, digest) in kinds {
            let key = format!("{name}.key");
            let pubf = format!("{name}.pub");
            let sig = format!("{name}.sig");
            if openssl(&genpkey(algorithm, *opt, &key), d).is_none() {
                assert!(!crate::util::require_all(), "openssl missing");
                return;
            }
            let sign = match digest {
                Some(digest) => dgst(digest, &key, &sig),
                None => vec![
                    "pkeyutl", "-sign", "-rawin", "-inkey", &key, "-in", "msg", "-out", &sig,
                ],
            };
            openssl(&sign, d).expect("sign");
            openssl(&["pkey", "-in", &key, "-pubout", "-out", &pubf], d).expect("pubout");
            let k = TrustedKey::load(&d.join(&pubf)).unwrap();
            let s = std::fs::read(d.join(&sig)).unwrap();
            assert!(k.verifies(b"payload", &s), "{name}");
            assert!(!k.verifies(b"payloaD", &s), "{name} tampered");
            keys.push((k, s));
        }
        // P-384 with SHA-256, as Sigstore's clients have signed too.
        openssl(&dgst("-sha256", "p384.key", "p384-256.sig"), d).expect("sign");
        let s = std::fs::read(d.join("p384-256.sig")).unwrap();
        assert!(keys[1].0.verifies(b"payload", &s), "p384 sha256");
        for (i, (k, _)) in keys.iter().enumerate() {
            for (j, (_, s)) in keys.iter().enumerate() {
                if i != j {
                    assert!(!k.verifies(b"payload", s));
                }
            }
        }
        assert!(
            TrustedKey::from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// A signing certificate's key is the signer's to choose: any bytes as a
            /// SubjectPublicKeyInfo, PEM or not, are parsed or refused, never a panic, and a
            /// key parsed from them never takes an arbitrary signature.
            #[test]
            fn any_key_bytes_parse_or_are_refused(
                der in proptest::collection::vec(any::<u8>(), 0..200),
                text in "[ -~\\n]{0,200}",
                signature in proptest::collection::vec(any::<u8>(), 0..128),
            ) {
                let pem = format!("-----BEGIN PUBLIC KEY-----\n{text}\n-----END PUBLIC KEY-----\n");
                for k in [
                    TrustedKey::from_spki_der(&der),
                    TrustedKey::from_pem(&der),
                    TrustedKey::from_pem(pem.as_bytes()),
                ]
                .into_iter()
                .flatten()
                {
                    prop_assert!(!k.verifies(b"payload", &signature));
                }
                let pem = format!("-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----\n");
                let certificates = crate::verify::keyless::parse_pem_certificates(pem.as_bytes());
                prop_assert!(certificates.map(|c| c.len() <= 1).unwrap_or(true));
            }
        }
    }
}
