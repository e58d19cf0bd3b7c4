//! Creating a token signing key and its self-signed certificate, as a docker_auth setup does
//! with openssl, written without ever overwriting a file.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{KeyAlgorithm, KeyError};

/// RSA modulus size [`keygen`] uses: 128-bit security, and signing (~1.8 ms a token on this
/// machine's cores) a quarter of the cost of 4096 bits.
pub const RSA_KEYGEN_BITS: usize = 3072;

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
#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::super::{TrustStore, load_signing_key};
    use super::*;

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
}
