//! The two key-ID formats registries look keys up by: libtrust's (Distribution 2.x,
//! docker_auth) and the RFC 7638 JWK thumbprint (Distribution 3.x).

use aws_lc_rs::digest;
use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use serde_json::Value;

use super::KeyError;

/// The libtrust key ID of a public key given as DER SubjectPublicKeyInfo: SHA-256 of exactly
/// these bytes, first 30 bytes (240 bits), base32 (RFC 4648 alphabet) without padding, 12 groups
/// of 4 characters joined by `:`. Go's libtrust hashes the SPKI as `x509.MarshalPKIXPublicKey`
/// writes it; [`super::PublicKey::libtrust_kid`] re-encodes the key that way first.
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
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::PublicKey;
    use super::super::tests::*;
    use super::*;

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
}
