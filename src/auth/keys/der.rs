//! DER: the few encodings a SubjectPublicKeyInfo needs (written as Go writes them), and
//! reading what a verifier or issuer needs from X.509 certificates.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{KeyError, PublicKey};

/// Big-endian integer bytes without leading zeros.
pub(super) fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let skip = b.iter().take_while(|x| **x == 0).count();
    &b[skip..]
}

/// One DER element: tag, definite length, content.
pub(super) fn der(tag: u8, content: &[u8]) -> Vec<u8> {
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

pub(super) fn der_uint(v: &[u8]) -> Vec<u8> {
    let v = strip_leading_zeros(v);
    let mut content = Vec::with_capacity(v.len() + 1);
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(v);
    der(0x02, &content)
}

pub(super) fn der_bit_string(v: &[u8]) -> Vec<u8> {
    der(0x03, &[&[0u8][..], v].concat())
}

/// What a verifier or issuer needs from a certificate.
pub(super) struct CertInfo {
    pub(super) key: PublicKey,
    pub(super) not_before: i64,
    pub(super) not_after: i64,
}

pub(super) fn cert_info(der: &[u8], origin: &str) -> Result<CertInfo, KeyError> {
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

pub(super) fn parse_cert_pems(
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
