//! Keyless signatures (Sigstore's Fulcio certificates with a Rekor log proof), verified offline
//! against what a rule configures: trusted CA certificates, the log's public keys, and the
//! identity (OIDC issuer, subject pattern) the signer must have. The leaf certificate must chain
//! to a configured root for code signing (rustls-webpki), name the issuer in its Fulcio extension
//! and a matching subject in its SAN (x509-parser), hold the key the signature verifies with
//! (aws-lc-rs), and have been valid at the time the log integrated the signature (`tlog.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::keys::TrustedKey;
use super::tlog::{self, LogEntry, Signed, TlogFailure};
use crate::auth::acl::NamePattern;

/// Fulcio's OIDC issuer extension (a DER UTF8String), and its deprecated predecessor (the raw
/// string as the extension's value).
const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
/// id-kp-codeSigning, DER-encoded without tag and length (what rustls-webpki compares).
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// Chains from signatures longer than this are not looked at.
const MAX_CHAIN: usize = 8;

/// A rule's keyless trust: whom it trusts to certify which identity.
#[derive(Clone)]
pub struct Keyless {
    issuer: String,
    subject_source: String,
    subject: Arc<NamePattern>,
    anchors: Vec<TrustAnchor<'static>>,
    /// Configured certificates that are not self-signed: a chain may pass through them.
    intermediates: Vec<CertificateDer<'static>>,
    tlog_keys: Vec<TrustedKey>,
    /// SHA-256 of every configured certificate and the log keys' fingerprints, sorted.
    fingerprints: Vec<String>,
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for Keyless {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyless")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject_source)
            .field("roots", &self.anchors.len())
            .field("intermediates", &self.intermediates.len())
            .field("tlog_keys", &self.tlog_keys)
            .finish()
    }
}

/// How a keyless signature failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeylessFailure {
    Malformed(String),
    UntrustedChain(String),
    IdentityMismatch(String),
    /// The signature does not verify with the certificate's key.
    BadSignature,
    NoTlogProof,
    TlogInvalid(String),
    NotValidAtSigningTime(String),
}

/// A keyless signature and what vouches for it.
pub struct Evidence<'a> {
    /// The leaf certificate, DER.
    pub certificate: &'a [u8],
    /// Certificates that came with the signature (DER): candidates for the path, trusted only
    /// through a configured root.
    pub chain: &'a [Vec<u8>],
    pub signature: &'a [u8],
    pub signed: Signed<'a>,
    pub log: &'a [LogEntry],
}

/// Every certificate of a PEM file, DER; an error when there is none.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = parse_pem_certificates(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM CERTIFICATE in it", path.display()));
    }
    Ok(certs)
}

pub fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustedRoot {
    media_type: String,
    #[serde(default)]
    tlogs: Vec<TrustedLog>,
    #[serde(default)]
    certificate_authorities: Vec<TrustedCa>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustedLog {
    public_key: RawBytes,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustedCa {
    cert_chain: CertChain,
}

#[derive(serde::Deserialize)]
struct CertChain {
    certificates: Vec<RawBytes>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

/// The CA certificates and transparency-log keys of a Sigstore `trusted_root.json` (what
/// Sigstore's TUF repository publishes, and `cosign initialize` caches), or of several, one per
/// line (`gh attestation trusted-root`). Their `validFor` windows are not looked at; CT logs and
/// timestamp authorities are not used; log keys of a kind not supported are left out.
pub fn read_trusted_root(
    path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, Vec<TrustedKey>), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let at = |m: String| format!("{}: {m}", path.display());
    let roots: Vec<TrustedRoot> = match serde_json::from_slice(&text) {
        Ok(root) => vec![root],
        Err(whole) => text
            .split(|&b| b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
            .map(serde_json::from_slice)
            .collect::<Result<_, _>>()
            .map_err(|_| at(format!("not a trusted root: {whole}")))?,
    };
    let raw = |what: &str, r: &RawBytes| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(r.raw_bytes.trim())
            .map_err(|e| at(format!("{what} is not base64: {e}")))
    };
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for root in &roots {
        if !root
            .media_type
            .starts_with("application/vnd.dev.sigstore.trustedroot")
        {
            return Err(at(format!(
                "media type {:?} is not a Sigstore trusted root",
                root.media_type
            )));
        }
        for ca in &root.certificate_authorities {
            for c in &ca.cert_chain.certificates {
                certs.push(CertificateDer::from(raw("a CA certificate", c)?));
            }
        }
        for t in &root.tlogs {
            // A log whose key is of a kind not supported here vouches for nothing, rather than
            // making the whole root unusable.
            if let Ok(k) = TrustedKey::from_spki_der(&raw("a log key", &t.public_key)?) {
                keys.push(k);
            }
        }
    }
    if certs.is_empty() || keys.is_empty() {
        return Err(at(
            "needs at least one certificate authority and one transparency log".into(),
        ));
    }
    Ok((certs, keys))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b))
}

fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Keyless {
    /// `certificates` are the trusted CA certificates: the self-signed ones are the roots, the
    /// others intermediates a chain may pass through (or, when none is self-signed, roots
    /// themselves: a CA trusted as given). `files` are what they were read from (watched for
    /// reloads).
    pub fn new(
        issuer: String,
        subject: &str,
        certificates: Vec<CertificateDer<'static>>,
        tlog_keys: Vec<TrustedKey>,
        files: Vec<PathBuf>,
    ) -> Result<Keyless, String> {
        let subject_pattern = NamePattern::compile(subject)?;
        let mut roots = Vec::new();
        let mut intermediates = Vec::new();
        for c in certificates {
            let (_, x) = X509Certificate::from_der(c.as_ref())
                .map_err(|e| format!("not an X.509 certificate: {e}"))?;
            if x.subject().as_raw() == x.issuer().as_raw() {
                roots.push(c);
            } else {
                intermediates.push(c);
            }
        }
        if roots.is_empty() {
            roots = std::mem::take(&mut intermediates);
        }
        let mut anchors = Vec::new();
        for r in &roots {
            let a = webpki::anchor_from_trusted_cert(r)
                .map_err(|e| format!("a certificate unusable as a root: {e}"))?;
            anchors.push(a.to_owned());
        }
        let mut fingerprints: Vec<String> = roots
            .iter()
            .chain(&intermediates)
            .map(|c| format!("cert:{}", sha256_hex(c.as_ref())))
            .chain(
                tlog_keys
                    .iter()
                    .map(|k| format!("tlog:{}", k.fingerprint())),
            )
            .collect();
        fingerprints.sort_unstable();
        fingerprints.dedup();
        Ok(Keyless {
            issuer,
            subject_source: subject.to_owned(),
            subject: Arc::new(subject_pattern),
            anchors,
            intermediates,
            tlog_keys,
            fingerprints,
            files,
        })
    }

    /// What a verdict under this trust depends on, for the rule's identity.
    pub fn id_input(&self) -> String {
        format!(
            "issuer {}\nsubject {}\n{}",
            self.issuer,
            self.subject_source,
            self.fingerprints.join("\n")
        )
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Check a keyless signature; what a verdict names as the signer: the certificate's subject
    /// and issuer.
    pub fn verify(&self, ev: &Evidence<'_>) -> Result<String, KeylessFailure> {
        use KeylessFailure as F;
        let (_, leaf) = X509Certificate::from_der(ev.certificate)
            .map_err(|e| F::Malformed(format!("signing certificate: {e}")))?;
        let not_before = leaf.validity().not_before.timestamp();
        let not_after = leaf.validity().not_after.timestamp();
        // The chain first, at a time the leaf was valid (when it was logged is checked below,
        // once the log's word for it is verified).
        self.chain(ev, not_before)
            .map_err(|e| F::UntrustedChain(e.to_string()))?;
        let code_signing = matches!(leaf.extended_key_usage(), Ok(Some(e)) if e.value.code_signing);
        if !code_signing {
            return Err(F::UntrustedChain(
                "the certificate is not for code signing (extended key usage)".into(),
            ));
        }
        let (issuer, subjects) = identity(&leaf)?;
        if issuer != self.issuer {
            return Err(F::IdentityMismatch(format!(
                "issuer {issuer:?}, the rule trusts {:?}",
                self.issuer
            )));
        }
        let Some(subject) = subjects.iter().find(|s| self.subject.matches(s)) else {
            return Err(F::IdentityMismatch(match subjects.first() {
                Some(s) => format!("subject {s:?} does not match {:?}", self.subject_source),
                None => "the certificate names no URI or email subject".into(),
            }));
        };
        let key = TrustedKey::from_spki_der(leaf.public_key().raw)
            .map_err(|e| F::Malformed(format!("signing certificate's key: {e}")))?;
        if !key.verifies(ev.signed.bytes(), ev.signature) {
            return Err(F::BadSignature);
        }
        let t = tlog::integrated_time(
            ev.log,
            &self.tlog_keys,
            ev.signed,
            ev.signature,
            ev.certificate,
        )
        .map_err(|f| match f {
            TlogFailure::Missing => F::NoTlogProof,
            TlogFailure::Invalid(m) => F::TlogInvalid(m),
        })?;
        if t < not_before {
            return Err(F::NotValidAtSigningTime(format!(
                "logged at {}, before it was valid (from {})",
                rfc3339(t),
                rfc3339(not_before)
            )));
        }
        if t > not_after {
            return Err(F::NotValidAtSigningTime(format!(
                "logged at {}, after it expired ({})",
                rfc3339(t),
                rfc3339(not_after)
            )));
        }
        // Its issuers too, at that time.
        self.chain(ev, t).map_err(|e| match e {
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                F::NotValidAtSigningTime(format!(
                    "logged at {}, when an issuing certificate was not valid",
                    rfc3339(t)
                ))
            }
            e => F::UntrustedChain(e.to_string()),
        })?;
        Ok(format!("{subject} (issuer {issuer})"))
    }

    fn chain(&self, ev: &Evidence<'_>, at: i64) -> Result<(), webpki::Error> {
        let leaf = CertificateDer::from(ev.certificate);
        let ee = webpki::EndEntityCert::try_from(&leaf)?;
        let intermediates: Vec<CertificateDer<'_>> = ev
            .chain
            .iter()
            .take(MAX_CHAIN)
            .map(|c| CertificateDer::from(c.as_slice()))
            .chain(self.intermediates.iter().cloned())
            .collect();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            UnixTime::since_unix_epoch(Duration::from_secs(at.max(0) as u64)),
            // The leaf's own usage is checked by the caller: this lets CA certificates without
            // an extended key usage issue code-signing certificates.
            webpki::KeyUsage::required_if_present(EKU_CODE_SIGNING),
            None,
            None,
        )
        .map(|_| ())
    }
}

/// The certificate's OIDC issuer (Fulcio's extension) and its subjects (SAN URIs and emails).
fn identity(leaf: &X509Certificate<'_>) -> Result<(String, Vec<String>), KeylessFailure> {
    let ext = |oid: &str| {
        leaf.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == oid)
            .map(|e| e.value)
    };
    let issuer = if let Some(v) = ext(OID_ISSUER_V2) {
        x509_parser::der_parser::der::parse_der_utf8string(v)
            .ok()
            .and_then(|(_, o)| o.as_str().ok().map(str::to_owned))
            .ok_or_else(|| {
                KeylessFailure::Malformed(
                    "the certificate's OIDC issuer is not a UTF8String".into(),
                )
            })?
    } else if let Some(v) = ext(OID_ISSUER_V1) {
        String::from_utf8(v.to_vec()).map_err(|_| {
            KeylessFailure::Malformed("the certificate's OIDC issuer is not UTF-8".into())
        })?
    } else {
        return Err(KeylessFailure::IdentityMismatch(
            "the certificate names no OIDC issuer".into(),
        ));
    };
    let subjects = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(s) | GeneralName::RFC822Name(s) => Some((*s).to_owned()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(KeylessFailure::Malformed(format!(
                "the certificate's subject alternative name: {e}"
            )));
        }
    };
    Ok((issuer, subjects))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SigningKey,
    };
    use serde_json::json;

    use super::*;

    const GHA: &str = "https://token.actions.githubusercontent.com";
    const WORKFLOW: &str =
        "https://github.com/myorg/app/.github/workflows/release.yml@refs/heads/main";
    /// 2024-01-01T00:00:00Z: leaves are valid for ten minutes from it, as Fulcio's are.
    const T0: i64 = 1_704_067_200;

    fn valid(p: &mut CertificateParams, from: i64, to: i64) {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        p.not_before = epoch + Duration::from_secs(from as u64);
        p.not_after = epoch + Duration::from_secs(to as u64);
    }

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        der: Vec<u8>,
    }

    fn key() -> KeyPair {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn root(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = key();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Ca { params, key, der }
    }

    fn intermediate(root: &Ca) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let key = key();
        let issuer = Issuer::from_params(&root.params, &root.key);
        let der = params.signed_by(&key, &issuer).unwrap().der().to_vec();
        Ca { params, key, der }
    }

    /// DER UTF8String, as Fulcio's v2 extensions hold their values.
    fn utf8(s: &str) -> Vec<u8> {
        assert!(s.len() < 128);
        [vec![0x0c, s.len() as u8], s.as_bytes().to_vec()].concat()
    }

    struct Leaf {
        der: Vec<u8>,
        key: KeyPair,
    }

    fn leaf(ca: &Ca, issuer_ext: CustomExtension, san: SanType, code_signing: bool) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![san];
        params.custom_extensions = vec![issuer_ext];
        if code_signing {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        }
        valid(&mut params, T0, T0 + 600);
        let key = key();
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let der = params.signed_by(&key, &issuer).unwrap().der().to_vec();
        Leaf { der, key }
    }

    fn v2(issuer: &str) -> CustomExtension {
        CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 8], utf8(issuer))
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn pem_b64(der: &[u8]) -> String {
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(der)
        );
        STANDARD.encode(pem)
    }

    /// cosign's bundle annotation for `signature` of `message` by `leaf`, logged at `t` and
    /// vouched for by `log`.
    fn logged(log: &KeyPair, message: &[u8], signature: &[u8], leaf: &[u8], t: i64) -> LogEntry {
        let body = json!({
            "apiVersion": "0.0.1", "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": sha256_hex(message)}},
                "signature": {"content": STANDARD.encode(signature), "publicKey": {"content": pem_b64(leaf)}},
            },
        });
        let body = STANDARD.encode(serde_json::to_vec(&body).unwrap());
        let log_id = sha256_hex(&log.subject_public_key_info());
        let canonical =
            format!(r#"{{"body":"{body}","integratedTime":{t},"logID":"{log_id}","logIndex":42}}"#);
        let set = STANDARD.encode(log.sign(canonical.as_bytes()).unwrap());
        let annotation = json!({
            "SignedEntryTimestamp": set,
            "Payload": {"body": body, "integratedTime": t, "logIndex": 42, "logID": log_id},
        });
        LogEntry::from_cosign_annotation(&annotation.to_string()).unwrap()
    }

    struct World {
        root: Ca,
        intermediate: Ca,
        log: KeyPair,
    }

    impl World {
        fn new() -> World {
            let root = root("fulcio root");
            let intermediate = intermediate(&root);
            World {
                root,
                intermediate,
                log: key(),
            }
        }

        fn trust(&self, subject: &str) -> Keyless {
            let log = TrustedKey::from_spki_der(&self.log.subject_public_key_info()).unwrap();
            Keyless::new(
                GHA.into(),
                subject,
                vec![
                    CertificateDer::from(self.root.der.clone()),
                    CertificateDer::from(self.intermediate.der.clone()),
                ],
                vec![log],
                Vec::new(),
            )
            .unwrap()
        }

        fn leaf(&self, issuer: CustomExtension, san: SanType) -> Leaf {
            leaf(&self.intermediate, issuer, san, true)
        }
    }

    fn check(
        k: &Keyless,
        leaf: &Leaf,
        message: &[u8],
        log: &[LogEntry],
    ) -> Result<String, KeylessFailure> {
        let signature = leaf.key.sign(message).unwrap();
        k.verify(&Evidence {
            certificate: &leaf.der,
            chain: &[],
            signature: &signature,
            signed: Signed::Message(message),
            log,
        })
    }

    /// A signature and its log entry at `t`.
    fn signed(w: &World, leaf: &Leaf, message: &[u8], t: i64) -> (Vec<u8>, Vec<LogEntry>) {
        let signature = leaf.key.sign(message).unwrap();
        let entry = logged(&w.log, message, &signature, &leaf.der, t);
        (signature, vec![entry])
    }

    fn verify_at(k: &Keyless, w: &World, leaf: &Leaf, t: i64) -> Result<String, KeylessFailure> {
        let (signature, log) = signed(w, leaf, b"payload", t);
        k.verify(&Evidence {
            certificate: &leaf.der,
            chain: &[],
            signature: &signature,
            signed: Signed::Message(b"payload"),
            log: &log,
        })
    }

    #[test]
    fn a_fulcio_style_certificate_with_a_log_proof_passes() {
        let w = World::new();
        let k = w.trust("https://github.com/myorg/**");
        let good = w.leaf(v2(GHA), uri(WORKFLOW));
        assert_eq!(
            verify_at(&k, &w, &good, T0 + 60),
            Ok(format!("{WORKFLOW} (issuer {GHA})"))
        );
        // The deprecated issuer extension (the raw string), and an email subject.
        let v1 = CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 57264, 1, 1],
            GHA.as_bytes().to_vec(),
        );
        let old = w.leaf(v1, uri(WORKFLOW));
        assert!(verify_at(&k, &w, &old, T0 + 60).is_ok());
        let k = w.trust("*@example.com");
        let email = w.leaf(
            v2(GHA),
            SanType::Rfc822Name("dev@example.com".try_into().unwrap()),
        );
        assert!(verify_at(&k, &w, &email, T0 + 60).is_ok());
        // Trusting the root alone, with the intermediate from the signature.
        let log = TrustedKey::from_spki_der(&w.log.subject_public_key_info()).unwrap();
        let k = Keyless::new(
            GHA.into(),
            "**",
            vec![CertificateDer::from(w.root.der.clone())],
            vec![log],
            Vec::new(),
        )
        .unwrap();
        let (signature, log) = signed(&w, &good, b"payload", T0 + 60);
        let mut ev = Evidence {
            certificate: &good.der,
            chain: &[],
            signature: &signature,
            signed: Signed::Message(b"payload"),
            log: &log,
        };
        assert!(matches!(
            k.verify(&ev),
            Err(KeylessFailure::UntrustedChain(_))
        ));
        let chain = [w.intermediate.der.clone(), w.root.der.clone()];
        ev.chain = &chain;
        assert!(k.verify(&ev).is_ok());
    }

    #[test]
    fn each_failure_names_its_reason() {
        use KeylessFailure as F;
        let w = World::new();
        let k = w.trust("https://github.com/myorg/**");
        let mismatch = |r| matches!(r, Err(F::IdentityMismatch(_)));
        let other_issuer = w.leaf(v2("https://accounts.google.com"), uri(WORKFLOW));
        assert!(mismatch(verify_at(&k, &w, &other_issuer, T0 + 60)));
        let other_subject = w.leaf(
            v2(GHA),
            uri("https://github.com/evil/app/x.yml@refs/heads/main"),
        );
        assert!(mismatch(verify_at(&k, &w, &other_subject, T0 + 60)));
        let elsewhere = leaf(
            &intermediate(&root("another ca")),
            v2(GHA),
            uri(WORKFLOW),
            true,
        );
        assert!(matches!(
            verify_at(&k, &w, &elsewhere, T0 + 60),
            Err(F::UntrustedChain(_))
        ));
        let no_code_signing = leaf(&w.intermediate, v2(GHA), uri(WORKFLOW), false);
        assert!(matches!(
            verify_at(&k, &w, &no_code_signing, T0 + 60),
            Err(F::UntrustedChain(_))
        ));

        let good = w.leaf(v2(GHA), uri(WORKFLOW));
        assert_eq!(check(&k, &good, b"payload", &[]), Err(F::NoTlogProof));
        // Vouched for by another log's key.
        let stranger = World::new();
        let (signature, log) = signed(&stranger, &good, b"payload", T0 + 60);
        let ev = Evidence {
            certificate: &good.der,
            chain: &[],
            signature: &signature,
            signed: Signed::Message(b"payload"),
            log: &log,
        };
        assert!(matches!(k.verify(&ev), Err(F::TlogInvalid(m)) if m.contains("does not verify")));
        // A valid entry for another signature of the same certificate.
        let (_, other_log) = signed(&w, &good, b"other payload", T0 + 60);
        let ev = Evidence {
            log: &other_log,
            ..ev
        };
        assert!(matches!(k.verify(&ev), Err(F::TlogInvalid(m)) if m.contains("another artifact")));
        // A tampered payload.
        let ev = Evidence {
            signed: Signed::Message(b"payloaD"),
            ..ev
        };
        assert_eq!(k.verify(&ev), Err(F::BadSignature));

        for t in [T0 - 1, T0 + 601] {
            assert!(
                matches!(
                    verify_at(&k, &w, &good, t),
                    Err(F::NotValidAtSigningTime(_))
                ),
                "{t}"
            );
        }
        assert!(verify_at(&k, &w, &good, T0 + 600).is_ok());
    }

    /// One trust, leaf, signature and log entry, made once for the properties below (key
    /// generation is the slow part).
    struct Signed1 {
        k: Keyless,
        leaf: Vec<u8>,
        intermediate: Vec<u8>,
        signature: Vec<u8>,
        log: Vec<LogEntry>,
    }

    fn signed_once() -> &'static Signed1 {
        static ONE: std::sync::OnceLock<Signed1> = std::sync::OnceLock::new();
        ONE.get_or_init(|| {
            let w = World::new();
            let good = w.leaf(v2(GHA), uri(WORKFLOW));
            let (signature, log) = signed(&w, &good, b"payload", T0 + 60);
            Signed1 {
                k: w.trust("https://github.com/myorg/**"),
                leaf: good.der,
                intermediate: w.intermediate.der.clone(),
                signature,
                log,
            }
        })
    }

    fn verify_parts(
        one: &Signed1,
        leaf: &[u8],
        chain: &[Vec<u8>],
        signature: &[u8],
        message: &[u8],
    ) -> Result<String, KeylessFailure> {
        one.k.verify(&Evidence {
            certificate: leaf,
            chain,
            signature,
            signed: Signed::Message(message),
            log: &one.log,
        })
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// A signature's certificate, chain and signature are the signer's to send: any
            /// changed byte, cut or appended junk is refused (never a panic), and only the
            /// signature as made passes.
            #[test]
            fn any_change_to_what_a_signer_sends_is_refused(
                at in any::<prop::sample::Index>(),
                flip in 1u8..,
                cut in any::<prop::sample::Index>(),
                junk in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let one = signed_once();
                prop_assert!(verify_parts(one, &one.leaf, &[], &one.signature, b"payload").is_ok());

                let mut leaf = one.leaf.clone();
                let i = at.index(leaf.len());
                leaf[i] ^= flip;
                prop_assert!(verify_parts(one, &leaf, &[], &one.signature, b"payload").is_err());
                let cut_leaf = &one.leaf[..cut.index(one.leaf.len())];
                prop_assert!(verify_parts(one, cut_leaf, &[], &one.signature, b"payload").is_err());
                let mut long = one.leaf.clone();
                long.extend_from_slice(&junk);
                if !junk.is_empty() {
                    prop_assert!(verify_parts(one, &long, &[], &one.signature, b"payload").is_err());
                }
                prop_assert!(verify_parts(one, &junk, &[], &one.signature, b"payload").is_err());

                let mut signature = one.signature.clone();
                let i = at.index(signature.len());
                signature[i] ^= flip;
                prop_assert!(verify_parts(one, &one.leaf, &[], &signature, b"payload").is_err());
                let mut message = b"payload".to_vec();
                let i = at.index(message.len());
                message[i] ^= flip;
                prop_assert!(verify_parts(one, &one.leaf, &[], &one.signature, &message).is_err());

                // Junk beside the real intermediate in the chain changes nothing; junk alone
                // (or a damaged intermediate) is never a path to the root.
                let mut intermediate = one.intermediate.clone();
                let i = at.index(intermediate.len());
                intermediate[i] ^= flip;
                let chain = [junk.clone(), intermediate, one.intermediate.clone()];
                prop_assert!(verify_parts(one, &one.leaf, &chain, &one.signature, b"payload").is_ok());
                prop_assert!(verify_parts(one, &junk, &chain, &one.signature, b"payload").is_err());
            }
        }
    }
}
