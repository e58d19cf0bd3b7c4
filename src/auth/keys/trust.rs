//! What a token verifier trusts: keys by key ID (from certificates and JWKS files) and the
//! certificates `x5c` chains must lead to.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::Value;

use super::der::{cert_info, parse_cert_pems};
use super::{KeyError, PublicKey, SigningKey, read_file};
use crate::util::unix_secs;

/// Longest `x5c` chain a verifier looks at.
pub const MAX_CHAIN_LEN: usize = 5;

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
        self.add_certificate(
            key.certificate_chain()[0].clone(),
            "the token signing certificate",
        )
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
mod tests {
    use data_encoding::BASE64URL_NOPAD;
    use serde_json::json;

    use super::super::der::cert_info;
    use super::super::tests::*;
    use super::*;

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
