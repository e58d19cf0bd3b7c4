//! The transparency-log proof of a keyless signature, checked offline: a Rekor entry's signed
//! entry timestamp (SET, the log's "inclusion promise") verified with a configured log key over
//! the entry's canonical form, and the entry's body shown to record this very signature,
//! certificate and artifact. The SET is what makes the entry's integrated time trustworthy: the
//! time the certificate must have been valid at.
//!
//! The entries come in two shapes: cosign's `dev.sigstore.cosign/bundle` annotation
//! (`{"SignedEntryTimestamp", "Payload": {"body", "integratedTime", "logIndex", "logID"}}`) and
//! a Sigstore bundle's `verificationMaterial.tlogEntries`. Both are signed as the RFC 8785
//! canonical JSON of `{"body", "integratedTime", "logID", "logIndex"}` (the body base64, the
//! log ID hex). No inclusion proof against a checkpoint is checked, and the log is never asked.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

use super::keys::TrustedKey;

/// One log entry, as both shapes carry it.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The entry's body (canonical JSON of the logged record), decoded.
    body: Vec<u8>,
    integrated_time: i64,
    log_index: i64,
    /// Hex, as the SET covers it.
    log_id: String,
    /// The signed entry timestamp; None when the entry carries none.
    set: Option<Vec<u8>>,
}

/// What was signed, as the log records it.
#[derive(Debug, Clone, Copy)]
pub enum Signed<'a> {
    /// A signature over these bytes (a `hashedrekord` entry records their SHA-256).
    Message(&'a [u8]),
    /// A DSSE envelope's signature over `pae` (a `dsse` entry records the payload's SHA-256).
    Dsse { payload: &'a [u8], pae: &'a [u8] },
}

impl Signed<'_> {
    /// The bytes the signature is over.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Signed::Message(m) => m,
            Signed::Dsse { pae, .. } => pae,
        }
    }
}

/// Why no entry proves the signature was logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlogFailure {
    /// No entry with a signed entry timestamp.
    Missing,
    Invalid(String),
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(s.trim())
        .map_err(|e| format!("{field} is not base64: {e}"))
}

/// protobuf's JSON writes 64-bit integers as strings; older writers as numbers.
fn int(field: &str, v: &serde_json::Value) -> Result<i64, String> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{field} is not an integer: {v}"))
}

#[derive(Deserialize)]
struct CosignBundle {
    #[serde(rename = "SignedEntryTimestamp", default)]
    set: Option<String>,
    #[serde(rename = "Payload")]
    payload: CosignPayload,
}

#[derive(Deserialize)]
struct CosignPayload {
    body: String,
    #[serde(rename = "integratedTime")]
    integrated_time: serde_json::Value,
    #[serde(rename = "logIndex")]
    log_index: serde_json::Value,
    #[serde(rename = "logID")]
    log_id: String,
}

/// A Sigstore bundle's `tlogEntries[]` item.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    log_index: serde_json::Value,
    log_id: LogId,
    integrated_time: serde_json::Value,
    #[serde(default)]
    inclusion_promise: Option<Promise>,
    canonicalized_body: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogId {
    key_id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Promise {
    signed_entry_timestamp: String,
}

impl LogEntry {
    /// cosign's `dev.sigstore.cosign/bundle` annotation.
    pub fn from_cosign_annotation(json: &str) -> Result<LogEntry, String> {
        let b: CosignBundle =
            serde_json::from_str(json).map_err(|e| format!("cosign bundle annotation: {e}"))?;
        let p = b.payload;
        Ok(LogEntry {
            body: b64("log entry body", &p.body)?,
            integrated_time: int("integratedTime", &p.integrated_time)?,
            log_index: int("logIndex", &p.log_index)?,
            log_id: p.log_id.to_ascii_lowercase(),
            set: b.set.map(|s| b64("SignedEntryTimestamp", &s)).transpose()?,
        })
    }

    pub fn from_bundle_entry(e: &BundleEntry) -> Result<LogEntry, String> {
        Ok(LogEntry {
            body: b64("canonicalizedBody", &e.canonicalized_body)?,
            integrated_time: int("integratedTime", &e.integrated_time)?,
            log_index: int("logIndex", &e.log_index)?,
            log_id: hex::encode(b64("logId.keyId", &e.log_id.key_id)?),
            set: e
                .inclusion_promise
                .as_ref()
                .map(|p| b64("signedEntryTimestamp", &p.signed_entry_timestamp))
                .transpose()?,
        })
    }

    /// What the SET signs: RFC 8785 canonical JSON, which for these four members (keys in
    /// UTF-16 order, integers, base64 and hex strings that need no escaping) is exactly this.
    fn canonical(&self) -> String {
        format!(
            r#"{{"body":"{}","integratedTime":{},"logID":"{}","logIndex":{}}}"#,
            STANDARD.encode(&self.body),
            self.integrated_time,
            self.log_id,
            self.log_index
        )
    }
}

/// The integrated time (seconds since the epoch) of the first entry whose SET verifies with
/// one of `keys` and whose body records `signature` over `signed` by `certificate` (DER).
pub fn integrated_time(
    entries: &[LogEntry],
    keys: &[TrustedKey],
    signed: Signed<'_>,
    signature: &[u8],
    certificate: &[u8],
) -> Result<i64, TlogFailure> {
    let mut first_problem = None;
    for e in entries {
        let Some(set) = &e.set else { continue };
        let problem = if !keys
            .iter()
            .any(|k| k.verifies(e.canonical().as_bytes(), set))
        {
            "its signed entry timestamp does not verify with a configured log key".to_owned()
        } else if e.integrated_time <= 0 {
            format!("integrated time {}", e.integrated_time)
        } else {
            match records(&e.body, signed, signature, certificate) {
                Ok(()) => return Ok(e.integrated_time),
                Err(p) => p,
            }
        };
        first_problem.get_or_insert(problem);
    }
    Err(first_problem.map_or(TlogFailure::Missing, TlogFailure::Invalid))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    kind: String,
    api_version: String,
    spec: serde_json::Value,
}

#[derive(Deserialize)]
struct HashedRekord {
    data: HashedData,
    signature: HashedSignature,
}

#[derive(Deserialize)]
struct HashedData {
    hash: Hash,
}

#[derive(Deserialize)]
struct Hash {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HashedSignature {
    content: String,
    public_key: PublicKey,
}

#[derive(Deserialize)]
struct PublicKey {
    content: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dsse {
    payload_hash: Hash,
    signatures: Vec<DsseSignature>,
}

#[derive(Deserialize)]
struct DsseSignature {
    signature: String,
    verifier: String,
}

/// Whether a logged key or certificate (base64 of PEM, as Rekor stores it) is `certificate`.
fn same_certificate(logged: &str, certificate: &[u8]) -> bool {
    let Ok(bytes) = STANDARD.decode(logged.trim()) else {
        return false;
    };
    match CertificateDer::from_pem_slice(&bytes) {
        Ok(der) => der.as_ref() == certificate,
        Err(_) => bytes == certificate,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b))
}

fn same_hash(h: &Hash, of: &[u8]) -> bool {
    h.algorithm == "sha256" && h.value.eq_ignore_ascii_case(&sha256_hex(of))
}

/// Whether the entry body records this signature: otherwise a valid SET of some other entry
/// could vouch for it.
fn records(
    body: &[u8],
    signed: Signed<'_>,
    signature: &[u8],
    certificate: &[u8],
) -> Result<(), String> {
    let b: Body = serde_json::from_slice(body).map_err(|e| format!("log entry body: {e}"))?;
    let spec = |e: serde_json::Error| format!("{} log entry: {e}", b.kind);
    let sig_is = |s: &str| STANDARD.decode(s.trim()).is_ok_and(|s| s == signature);
    match (b.kind.as_str(), b.api_version.as_str(), signed) {
        ("hashedrekord", "0.0.1", Signed::Message(message)) => {
            let h: HashedRekord = serde_json::from_value(b.spec).map_err(spec)?;
            if !same_hash(&h.data.hash, message) {
                return Err("the log entry is for another artifact".into());
            }
            if !sig_is(&h.signature.content) {
                return Err("the log entry records another signature".into());
            }
            if !same_certificate(&h.signature.public_key.content, certificate) {
                return Err("the log entry records another certificate".into());
            }
            Ok(())
        }
        ("dsse", "0.0.1", Signed::Dsse { payload, .. }) => {
            let d: Dsse = serde_json::from_value(b.spec).map_err(spec)?;
            if !same_hash(&d.payload_hash, payload) {
                return Err("the log entry is for another payload".into());
            }
            if !d
                .signatures
                .iter()
                .any(|s| sig_is(&s.signature) && same_certificate(&s.verifier, certificate))
            {
                return Err("the log entry records another signature or certificate".into());
            }
            Ok(())
        }
        (kind, version, _) => Err(format!(
            "a {kind} {version} log entry cannot record this signature (hashedrekord 0.0.1 \
             records message signatures, dsse 0.0.1 DSSE envelopes)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_orders_members_as_rfc8785() {
        let e = LogEntry {
            body: b"{}".to_vec(),
            integrated_time: 1700000000,
            log_index: 7,
            log_id: "ab".into(),
            set: None,
        };
        assert_eq!(
            e.canonical(),
            r#"{"body":"e30=","integratedTime":1700000000,"logID":"ab","logIndex":7}"#
        );
        let parsed = LogEntry::from_cosign_annotation(
            r#"{"SignedEntryTimestamp":"AA==","Payload":{"body":"e30=","integratedTime":1700000000,"logIndex":7,"logID":"AB"}}"#,
        )
        .unwrap();
        assert_eq!(parsed.canonical(), e.canonical());
        let entry: BundleEntry = serde_json::from_str(
            r#"{"logIndex":"7","logId":{"keyId":"qw=="},"integratedTime":"1700000000","canonicalizedBody":"e30="}"#,
        )
        .unwrap();
        let parsed = LogEntry::from_bundle_entry(&entry).unwrap();
        assert_eq!(parsed.canonical(), e.canonical());
        assert!(parsed.set.is_none());
    }

    #[test]
    fn an_entry_without_a_set_is_no_proof() {
        let e = LogEntry {
            body: b"{}".to_vec(),
            integrated_time: 1,
            log_index: 1,
            log_id: String::new(),
            set: None,
        };
        assert_eq!(
            integrated_time(&[e], &[], Signed::Message(b"x"), b"s", b"c"),
            Err(TlogFailure::Missing)
        );
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A cosign bundle annotation (a transparency-log entry) of any text parses or is
        /// refused, never a panic.
        #[test]
        fn any_annotation_parses_or_is_refused(text in "\\PC{0,300}", json in "[ -~]{0,300}") {
            let _ = LogEntry::from_cosign_annotation(&text);
            let _ = LogEntry::from_cosign_annotation(&format!(r#"{{"SignedEntryTimestamp":"{json}","Payload":{json}}}"#));
        }
    }
}
