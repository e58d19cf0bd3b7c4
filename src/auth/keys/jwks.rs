//! The JWKS document the token service publishes (`<auth.path>/jwks.json`, `ocimirror keygen
//! --jwks`): the signing key and, during a rotation, the earlier ones whose tokens are still
//! valid, each under its RFC 7638 thumbprint, the `kid` Distribution 3 looks keys up by.

use std::path::Path;

use serde_json::{Value, json};

use super::der::{cert_info, parse_cert_pems};
use super::{EcCurve, KeyError, PublicKey, read_file};

/// The JWS `alg` a verifier should expect from this key: what [`super::SigningKey`] signs with.
fn alg(key: &PublicKey) -> &'static str {
    match key {
        PublicKey::Rsa { .. } => "RS256",
        PublicKey::Ec {
            curve: EcCurve::P256,
            ..
        } => "ES256",
        PublicKey::Ec {
            curve: EcCurve::P384,
            ..
        } => "ES384",
    }
}

/// One key's public JWK with `alg`, `use` and its thumbprint as `kid`.
pub fn public_jwk(key: &PublicKey) -> Value {
    let mut jwk = key.to_jwk();
    jwk["alg"] = alg(key).into();
    jwk["use"] = "sig".into();
    jwk["kid"] = key.thumbprint().into();
    jwk
}

/// A JWKS document of these keys, in order, each once.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a PublicKey>) -> Value {
    let mut seen: Vec<&PublicKey> = Vec::new();
    for k in keys {
        if !seen.contains(&k) {
            seen.push(k);
        }
    }
    json!({ "keys": seen.into_iter().map(public_jwk).collect::<Vec<_>>() })
}

/// The public keys of the certificates in a PEM file (an earlier signing certificate).
pub fn certificate_keys(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let origin = path.display().to_string();
    let pem = read_file(path)?;
    parse_cert_pems(&pem, &origin)?
        .iter()
        .map(|c| cert_info(c, &origin).map(|i| i.key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::{SigningKey, TrustStore, jwk_thumbprint};
    use super::*;

    #[test]
    fn every_key_once_under_its_thumbprint() {
        let rsa = SigningKey::from_pem(RSA_PKCS1_KEY.as_bytes(), RSA_CERT.as_bytes()).unwrap();
        let ec = SigningKey::from_pem(EC_SEC1_KEY.as_bytes(), EC_CERT.as_bytes()).unwrap();
        let doc = jwks([rsa.public_key(), ec.public_key(), rsa.public_key()]);
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kid"], RSA_THUMBPRINT);
        assert_eq!(keys[0]["alg"], "RS256");
        assert_eq!(keys[1]["kid"], EC_THUMBPRINT);
        assert_eq!(keys[1]["alg"], "ES256");
        for k in keys {
            assert_eq!(k["use"], "sig");
            assert_eq!(jwk_thumbprint(k).unwrap(), k["kid"].as_str().unwrap());
            assert!(k.get("d").is_none());
        }
        // What a verifier reads back is the same keys.
        let mut t = TrustStore::new();
        assert_eq!(t.add_jwks(doc.to_string().as_bytes(), "doc").unwrap(), 2);
        assert_eq!(t.key_by_kid(RSA_THUMBPRINT), Some(rsa.public_key()));
        assert_eq!(t.key_by_kid(EC_LIBTRUST), Some(ec.public_key()));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.crt");
        std::fs::write(&p, format!("{RSA_CERT}{EC_CERT}")).unwrap();
        let ks = certificate_keys(&p).unwrap();
        assert_eq!(ks, vec![rsa.public_key().clone(), ec.public_key().clone()]);
        std::fs::write(&p, "nothing").unwrap();
        assert!(certificate_keys(&p).is_err());
    }
}
