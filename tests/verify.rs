//! Signature verification at the mirror (`verify`), against signatures made outside ocimirror:
//! keys and signatures from the `openssl` CLI, simple-signing payloads, cosign signature
//! manifests and Sigstore bundles built here and pushed to a real Distribution the way cosign
//! lays them out; images pulled with skopeo. Keyless signatures come from a Fulcio-like CA made
//! here with rcgen (a root, an intermediate, short-lived code-signing leaves with Fulcio's
//! issuer extensions) and a Rekor-like log key from openssl signing the entries built here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use common::*;
use serde_json::{Value, json};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// Key pairs made with openssl in a temporary directory.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    /// None (skip) when openssl is missing and missing tools may be skipped.
    fn new() -> Option<Keys> {
        let found = Command::new("openssl").arg("version").output().is_ok();
        if !tool_or_skip(found, "openssl", "apt-get install openssl") {
            return None;
        }
        Some(Keys {
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new ECDSA P-256 key pair `name`; returns the public key file.
    fn ec(&self, name: &str) -> PathBuf {
        let key = format!("{name}.key");
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        self.openssl(&[
            "pkey",
            "-in",
            &key,
            "-pubout",
            "-out",
            &format!("{name}.pub"),
        ]);
        self.public(name)
    }

    fn public(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pub"))
    }

    /// The public key `name` as DER (its SubjectPublicKeyInfo), from openssl.
    fn public_der(&self, name: &str) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(["pkey", "-pubin", "-outform", "DER", "-in"])
            .arg(self.public(name))
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    /// `openssl dgst -sha256 -sign`: an ASN.1 ECDSA signature of `data`, as cosign makes them.
    fn sign(&self, name: &str, data: &[u8]) -> Vec<u8> {
        let input = self.dir.path().join("to-sign");
        std::fs::write(&input, data).unwrap();
        let out = self.dir.path().join("sig");
        self.openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            &format!("{name}.key"),
            "-out",
            out.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        std::fs::read(out).unwrap()
    }
}

/// The simple-signing payload cosign signs for `digest` of `reference`.
fn payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap()
}

/// Push cosign's signature manifest for `target` in `name`: one layer per (payload, signature
/// annotation), tagged `sha256-<hex>.sig`.
async fn push_signatures(p: &Pusher, name: &str, target: &str, sigs: &[(Vec<u8>, String)]) {
    let layers: Vec<(Vec<u8>, Value)> = sigs
        .iter()
        .map(|(payload, sig)| {
            let annotations = json!({"dev.cosignproject.cosign/signature": sig});
            (payload.clone(), annotations)
        })
        .collect();
    push_signature_layers(p, name, target, &layers).await;
}

/// Push cosign's signature manifest for `target` in `name`: one layer per (payload, its
/// annotations), tagged `sha256-<hex>.sig`.
async fn push_signature_layers(p: &Pusher, name: &str, target: &str, sigs: &[(Vec<u8>, Value)]) {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (payload, annotations) in sigs {
        let d = p.push_blob(name, Bytes::from(payload.clone())).await;
        diff_ids.push(d.clone());
        layers.push(json!({
            "mediaType": SIMPLE_SIGNING, "size": payload.len(), "digest": d,
            "annotations": annotations,
        }));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "", "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {},
    }))
    .unwrap();
    let cd = p.push_blob(name, Bytes::from(config.clone())).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": cd},
        "layers": layers,
    }))
    .unwrap();
    let tag = format!("sha256-{}.sig", hex_of(target));
    p.push_manifest(name, &tag, OCI_MANIFEST, &manifest).await;
}

/// Sign `target` of `name` with key `key` the way `cosign sign` does.
async fn cosign_sign(reg: &Registry, keys: &Keys, key: &str, name: &str, target: &str) {
    let pl = payload(&format!("{}/{name}", reg.hostport()), target);
    let sig = B64.encode(keys.sign(key, &pl));
    push_signatures(&reg.pusher(), name, target, &[(pl, sig)]).await;
}

/// Attach `bundle` to `subject` as a referrer, with the tag-schema index Distribution 2.8 needs.
/// An in-toto statement naming `img` (pushed as `name` to `reg`), its DSSE payload type and the
/// pre-authentication encoding a DSSE signature covers.
fn dsse_statement(reg: &Registry, name: &str, img: &Image) -> (Vec<u8>, &'static str, Vec<u8>) {
    let statement = serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": format!("{}/{name}", reg.hostport()), "digest": {"sha256": hex_of(&img.digest)}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }))
    .unwrap();
    let ptype = "application/vnd.in-toto+json";
    let pae = [
        format!("DSSEv1 {} {ptype} {} ", ptype.len(), statement.len()).into_bytes(),
        statement.clone(),
    ]
    .concat();
    (statement, ptype, pae)
}

async fn push_bundle(p: &Pusher, name: &str, subject: &Image, bundle: &Value) {
    let body = serde_json::to_vec(bundle).unwrap();
    let bd = p.push_blob(name, Bytes::from(body.clone())).await;
    p.push_blob(name, Bytes::from_static(b"{}")).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE,
        "config": {"mediaType": EMPTY, "digest": sha256_digest(b"{}"), "size": 2},
        "layers": [{"mediaType": BUNDLE, "digest": bd, "size": body.len()}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.manifest.len()},
    }))
    .unwrap();
    let md = sha256_digest(&manifest);
    p.push_manifest(name, &md, OCI_MANIFEST, &manifest).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": manifest.len(), "artifactType": BUNDLE}],
    }))
    .unwrap();
    let tag = format!("sha256-{}", hex_of(&subject.digest));
    p.push_manifest(name, &tag, OCI_INDEX, &index).await;
}

fn rule(pattern: &str, keys: &[&Path], mode: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| q(&k.display().to_string())).collect();
    format!(
        "  - match: {}\n    keys: [{}]\n    mode: {mode}\n",
        q(pattern),
        keys.join(", ")
    )
}

fn opts(reg: &Registry, rules: &[String]) -> MirrorOpts {
    MirrorOpts::upstream(&reg.url())
        .tag_ttl("1h")
        .extra(&format!("verify:\n{}", rules.concat()))
}

/// The manifest request is refused with 403 DENIED naming `reason`.
async fn denied(m: &Mirror, name: &str, reference: &str, reason: &str) {
    let r = m.get_manifest(name, reference).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 403, "{name}: {body}");
    assert_eq!(error_codes(body.as_bytes()), vec!["DENIED"], "{body}");
    assert!(
        body.contains(reason),
        "{name}: {body:?} does not say {reason:?}"
    );
}

/// Refused by tag and by digest, naming `reason`, and nothing of it is stored.
async fn refused(m: &Mirror, name: &str, img: &Image, reason: &str) {
    denied(m, name, &img.tag, reason).await;
    assert!(
        !blob_data_path(&m.storage_root(), &img.digest).exists(),
        "{name}: a refused manifest was stored"
    );
    denied(m, name, &img.digest, reason).await;
}

async fn pull(m: &Mirror, img: &Image) -> Result<(), String> {
    let out = tempfile::tempdir().unwrap();
    skopeo_copy(
        &format!("{}/{}:{}", m.hostport(), img.name, img.tag),
        &format!("oci:{}:t", out.path().display()),
        false,
        None,
    )
    .await
}

/// A signed image pulls, its signature is fetched once, and it keeps pulling after a restart
/// while the upstream is down (the signature is cached like content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_image_pulls_verified_once_and_survives_restart_and_outage() {
    let Some(keys) = Keys::new() else { return };
    let release = keys.ec("release");
    let mut reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let img = p.push_oci_image("myorg/app", "1.0", 1701).await;
    cosign_sign(&reg, &keys, "release", "myorg/app", &img.digest).await;
    let open = p.push_oci_image("other/app", "1.0", 1702).await;

    let mut m = Mirror::start(opts(&reg, &[rule("myorg/**", &[&release], "enforce")])).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    // No rule covers other/app: served without any check.
    pull_and_check_oci(&m.hostport(), &open, None).await;
    let sig_tag = format!("/manifests/sha256-{}.sig", hex_of(&img.digest));
    assert_eq!(reg.count_requests("GET", &sig_tag).await, 1, "one fetch");
    assert!(
        m.metric("ocimirror_verify_total", &["result=\"passed\""])
            .await
            >= 2.0
    );
    assert_eq!(
        m.metric("ocimirror_verify_total", &["result=\"unsigned\""])
            .await,
        0.0
    );

    let status = m.get("/status.json").send().await.unwrap();
    let status: Value = serde_json::from_slice(&status.bytes().await.unwrap()).unwrap();
    assert!(status["verify_passed"].as_u64().unwrap() >= 2, "{status}");
    assert_eq!(status["verify_failed"], 0, "{status}");

    m.restart(None).await;
    reg.stop();
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let r = m
        .get_manifest("myorg/app", &img.digest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Unsigned, wrongly keyed, tampered, another digest's, another repository's and malformed
/// signatures are each refused with their reason; warn mode serves and counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_reason_and_warn_mode_serves() {
    let Some(keys) = Keys::new() else { return };
    let release = keys.ec("release");
    keys.ec("stranger");
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let host = reg.hostport();

    let unsigned = p.push_oci_image("myorg/unsigned", "1", 1711).await;

    let wrong = p.push_oci_image("myorg/wrongkey", "1", 1712).await;
    cosign_sign(&reg, &keys, "stranger", "myorg/wrongkey", &wrong.digest).await;

    let tampered = p.push_oci_image("myorg/tampered", "1", 1713).await;
    let signed = payload(&format!("{host}/myorg/tampered"), &tampered.digest);
    let sig = B64.encode(keys.sign("release", &signed));
    let mut changed = signed.clone();
    let at = changed.len() - 2;
    changed.insert(at, b' ');
    push_signatures(&p, "myorg/tampered", &tampered.digest, &[(changed, sig)]).await;

    // A valid signature of another image, copied to this one's signature tag.
    let other = p.push_oci_image("myorg/otherdigest", "1", 1714).await;
    let elsewhere = p.push_oci_image("myorg/otherdigest", "2", 1715).await;
    let pl = payload(&format!("{host}/myorg/otherdigest"), &elsewhere.digest);
    let sig = B64.encode(keys.sign("release", &pl));
    push_signatures(&p, "myorg/otherdigest", &other.digest, &[(pl, sig)]).await;

    // Signed for the same digest, but in another repository.
    // The same image, signed for myorg/original, where it passes.
    let moved = p.push_oci_image("myorg/otherrepo", "1", 1716).await;
    let original = p.push_oci_image("myorg/original", "1", 1716).await;
    let pl = payload(&format!("{host}/myorg/original"), &moved.digest);
    let sig = B64.encode(keys.sign("release", &pl));
    push_signatures(
        &p,
        "myorg/otherrepo",
        &moved.digest,
        &[(pl.clone(), sig.clone())],
    )
    .await;
    push_signatures(&p, "myorg/original", &original.digest, &[(pl, sig)]).await;

    let malformed = p.push_oci_image("myorg/malformed", "1", 1717).await;
    let pl = payload(&format!("{host}/myorg/malformed"), &malformed.digest);
    push_signatures(
        &p,
        "myorg/malformed",
        &malformed.digest,
        &[(pl, "%%%".into())],
    )
    .await;

    let warned = p.push_oci_image("warnorg/app", "1", 1718).await;

    let m = Mirror::start(opts(
        &reg,
        &[
            rule("myorg/**", &[&release], "enforce"),
            rule("warnorg/*", &[&release], "warn"),
        ],
    ))
    .await;
    refused(&m, "myorg/unsigned", &unsigned, "no signature found").await;
    refused(&m, "myorg/wrongkey", &wrong, "verifies with a trusted key").await;
    refused(
        &m,
        "myorg/tampered",
        &tampered,
        "verifies with a trusted key",
    )
    .await;
    refused(&m, "myorg/otherdigest", &other, "another digest").await;
    // Verified under myorg/original first: that verdict is not one for myorg/otherrepo.
    // (The manifest is stored, for myorg/original.)
    pull_and_check_oci(&m.hostport(), &original, None).await;
    denied(&m, "myorg/otherrepo", &moved.tag, "another repository").await;
    denied(&m, "myorg/otherrepo", &moved.digest, "another repository").await;
    // Its signature manifest is content like any other; the refused manifest is not linked.
    let manifests = m
        .storage_root()
        .join("docker/registry/v2/repositories/myorg/otherrepo/_manifests");
    let revision = manifests.join(format!("revisions/sha256/{}", hex_of(&moved.digest)));
    assert!(!revision.exists(), "refused, yet linked");
    assert!(!manifests.join("tags/1").exists(), "refused, yet tagged");
    refused(&m, "myorg/malformed", &malformed, "malformed signature").await;
    let err = pull(&m, &unsigned).await.expect_err("skopeo refused");
    assert!(err.contains("no signature found"), "{err}");
    for result in [
        "unsigned",
        "untrusted",
        "other_digest",
        "other_repository",
        "malformed",
    ] {
        let label = format!("result=\"{result}\"");
        assert!(
            m.metric("ocimirror_verify_total", &[&label]).await >= 1.0,
            "{result} counted"
        );
    }

    let before = m
        .metric("ocimirror_verify_total", &["result=\"unsigned\""])
        .await;
    pull_and_check_oci(&m.hostport(), &warned, None).await;
    let after = m
        .metric("ocimirror_verify_total", &["result=\"unsigned\""])
        .await;
    assert!(after > before, "warn mode counts ({before} -> {after})");
    assert!(
        blob_data_path(&m.storage_root(), &warned.digest).exists(),
        "warn mode stores what it serves"
    );
    m.wait_log("the warning", |l| l.contains("warn mode")).await;
}

/// An index signed once serves every platform; its children alone are not signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_signed_once_serves_every_platform() {
    let Some(keys) = Keys::new() else { return };
    let release = keys.ec("release");
    let reg = Registry::start(RegistryOpts::default()).await;
    let idx = reg.pusher().push_index("myorg/multi", "1", 1721).await;
    cosign_sign(&reg, &keys, "release", "myorg/multi", &idx.digest).await;
    let m = Mirror::start(opts(&reg, &[rule("myorg/**", &[&release], "enforce")])).await;

    let child = &idx.children[0].digest;
    let r = m.get_manifest("myorg/multi", child).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "a child alone is not signed");
    pull_and_check_index(&m.hostport(), &idx, None).await;
    let r = m.get_manifest("myorg/multi", child).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "covered by its index now");

    // `ocimirror inspect` checks the stored signatures offline: the verdict and the key.
    let fingerprint = format!("SHA256:{}", sha256_hex(&keys.public_der("release")));
    let out = Command::new(ocimirror_bin())
        .args(["inspect", "myorg/multi:1", "--config"])
        .arg(m.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("signature verified, key {fingerprint}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("signature verified through index {}", idx.digest)),
        "{text}"
    );
}

/// Sigstore bundles among the referrers: a messageSignature over the manifest, and a DSSE
/// envelope with an in-toto statement; a bundle for another digest is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstore_bundles_in_the_referrers() {
    let Some(keys) = Keys::new() else { return };
    let release = keys.ec("release");
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();

    let plain = p.push_oci_image("myorg/bundled", "1", 1731).await;
    let sig = keys.sign("release", &plain.manifest);
    let digest = hex::decode(hex_of(&plain.digest)).unwrap();
    let bundle = json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": "release"}},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": B64.encode(&digest)},
            "signature": B64.encode(sig),
        },
    });
    push_bundle(&p, "myorg/bundled", &plain, &bundle).await;

    let attested = p.push_oci_image("myorg/dsse", "1", 1732).await;
    let (statement, ptype, pae) = dsse_statement(&reg, "myorg/dsse", &attested);
    let envelope = |sig: Vec<u8>| {
        json!({
            "mediaType": BUNDLE,
            "verificationMaterial": {"publicKey": {"hint": "release"}},
            "dsseEnvelope": {"payload": B64.encode(&statement), "payloadType": ptype,
                "signatures": [{"sig": B64.encode(sig), "keyid": ""}]},
        })
    };
    push_bundle(
        &p,
        "myorg/dsse",
        &attested,
        &envelope(keys.sign("release", &pae)),
    )
    .await;

    // A valid envelope for `attested`, attached to another image.
    let misplaced = p.push_oci_image("myorg/dsse", "2", 1733).await;
    push_bundle(
        &p,
        "myorg/dsse",
        &misplaced,
        &envelope(keys.sign("release", &pae)),
    )
    .await;

    let m = Mirror::start(opts(&reg, &[rule("myorg/**", &[&release], "enforce")])).await;
    pull_and_check_oci(&m.hostport(), &plain, None).await;
    pull_and_check_oci(&m.hostport(), &attested, None).await;
    refused(&m, "myorg/dsse", &misplaced, "another digest").await;
}

/// A key removed from the config stops passing after a reload (SIGHUP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_stops_passing_after_reload() {
    let Some(keys) = Keys::new() else { return };
    let release = keys.ec("release");
    let next = keys.ec("next");
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("myorg/app", "1", 1741).await;
    cosign_sign(&reg, &keys, "release", "myorg/app", &img.digest).await;
    let mut m = Mirror::start(opts(
        &reg,
        &[rule("myorg/**", &[&release, &next], "enforce")],
    ))
    .await;
    pull_and_check_oci(&m.hostport(), &img, None).await;

    let new = opts(&reg, &[rule("myorg/**", &[&next], "enforce")]);
    m.rewrite_config(new);
    let pid = m.pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut reloaded = 0.0;
    for _ in 0..200 {
        reloaded = m
            .metric("ocimirror_verify_reloads_total", &["result=\"ok\""])
            .await;
        if reloaded >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reloaded >= 1.0, "reloaded");
    denied(&m, "myorg/app", &img.tag, "verifies with a trusted key").await;
    denied(&m, "myorg/app", &img.digest, "verifies with a trusted key").await;
}

/// containerd pulls a signed image through the mirror (its hosts.toml recipe, the registry's
/// own server a closed port), and is refused an unsigned one of the same rule: nothing of it
/// lands in containerd's image store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_a_signed_image_and_is_refused_an_unsigned_one() {
    if !containerd_runs() {
        return;
    }
    let Some(keys) = Keys::new() else { return };
    let release = keys.ec("release");
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let signed = p
        .push_image("myorg/signed", "v1", &runnable_image(1741))
        .await;
    cosign_sign(&reg, &keys, "release", "myorg/signed", &signed.digest).await;
    let unsigned = p
        .push_image("myorg/unsigned", "v1", &runnable_image(1742))
        .await;
    let m = Mirror::start(opts(&reg, &[rule("myorg/**", &[&release], "enforce")])).await;

    let dir = tempfile::tempdir().unwrap();
    let ctrd = Containerd::start(dir.path());
    let hosts_dir = dir.path().join("certs.d");
    write_hosts(&hosts_dir, &reg.hostport(), &host_table(&m.url(), true));
    let pull = |name: &str| ctrd.pull(&hosts_dir, name);
    let signed_ref = format!("{}/myorg/signed:v1", reg.hostport());
    run(&mut pull(&signed_ref));
    let unsigned_ref = format!("{}/myorg/unsigned:v1", reg.hostport());
    let out = pull(&unsigned_ref).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "containerd pulled an unsigned image: {said}"
    );
    assert!(said.contains("403"), "containerd's error: {said}");

    let list = ctrd.assert_listed(&signed_ref, &signed.digest);
    assert!(
        !list.contains(&unsigned_ref),
        "the unsigned image is in containerd's store:\n{list}"
    );
    assert!(
        m.metric("ocimirror_verify_total", &["result=\"passed\""])
            .await
            >= 1.0
    );
    assert!(
        m.metric("ocimirror_verify_total", &["result=\"unsigned\""])
            .await
            >= 1.0
    );
    assert!(
        !blob_data_path(&m.storage_root(), &unsigned.digest).exists(),
        "the refused manifest was stored"
    );
}

/// A fleet verifies once: two replicas sharing a Redis (each with storage of its own), a signed
/// image pulled through the first, then the second. The second takes the verdict from the
/// shared descriptor cache: it asks the upstream for the image only, never for its signature
/// (neither the `.sig` tag, nor the signature manifest, nor the payload), and verifies nothing
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_verifies_an_image_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let Some(keys) = Keys::new() else { return };
    let release = keys.ec("release");
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let img = p.push_oci_image("myorg/fleet", "1.0", 1751).await;
    cosign_sign(&reg, &keys, "release", "myorg/fleet", &img.digest).await;
    // The payload cosign_sign signed: its blob is what a verification reads.
    let signed_payload = sha256_digest(&payload(
        &format!("{}/myorg/fleet", reg.hostport()),
        &img.digest,
    ));
    let o = opts(&reg, &[rule("myorg/**", &[&release], "enforce")]).extra(&redis.cache_yaml());
    let first = Mirror::start(o.clone()).await;
    let second = Mirror::start(o).await;

    pull_and_check_oci(&first.hostport(), &img, None).await;
    let sig_tag = format!("/manifests/sha256-{}.sig", hex_of(&img.digest));
    assert_eq!(reg.count_requests("GET", &sig_tag).await, 1);
    assert_eq!(
        reg.count_requests("GET", &format!("/blobs/{signed_payload}"))
            .await,
        1,
        "the first replica read the payload"
    );
    first
        .wait_log("the verification", |l| l.contains("signature verified"))
        .await;

    let before = reg.requests().await.len();
    pull_and_check_oci(&second.hostport(), &img, None).await;
    let fresh = reg.requests().await.split_off(before);
    assert!(
        fresh.iter().any(|(_, u)| {
            u.ends_with(&format!("/manifests/{}", img.digest))
                || u.ends_with(&format!("/manifests/{}", img.tag))
        }),
        "the second replica fetched the image itself (its own storage): {fresh:#?}"
    );
    let of_signature: Vec<_> = fresh
        .iter()
        .filter(|(_, u)| {
            let image_manifest = u.ends_with(&format!("/manifests/{}", img.digest))
                || u.ends_with(&format!("/manifests/{}", img.tag));
            (u.contains("/manifests/") && !image_manifest)
                || u.contains(&signed_payload)
                || u.contains("/referrers/")
        })
        .collect();
    assert!(
        of_signature.is_empty(),
        "the second replica fetched the signature again: {of_signature:#?}"
    );
    assert!(
        !second.log_text().contains("signature verified"),
        "the second replica verified the image again"
    );
    assert!(
        second
            .metric("ocimirror_verify_total", &["result=\"passed\""])
            .await
            >= 1.0,
        "the second replica's pull passed the policy"
    );
}

/// For a named upstream, a signature names the repository as that upstream calls it, without
/// the prefix the mirror stores it under: `cosign sign <registry>/owner/app` passes for
/// `b.example/owner/app` (the rule matching the stored name), and a payload naming the
/// prefixed name is a signature for another repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_upstreams_signatures_name_its_own_repository() {
    let Some(keys) = Keys::new() else { return };
    let release = keys.ec("release");
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let host = reg.hostport();
    let img = p.push_oci_image("owner/app", "1.0", 1761).await;
    cosign_sign(&reg, &keys, "release", "owner/app", &img.digest).await;
    let prefixed = p.push_oci_image("owner/prefixed", "1.0", 1762).await;
    let pl = payload(
        &format!("{host}/b.example/owner/prefixed"),
        &prefixed.digest,
    );
    let sig = B64.encode(keys.sign("release", &pl));
    push_signatures(&p, "owner/prefixed", &prefixed.digest, &[(pl, sig)]).await;

    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .extra(&format!(
                "upstreams:\n  - name: b.example\n    url: {}\n    tag_ttl: 1h\nverify:\n{}",
                q(&reg.url()),
                rule("b.example/owner/**", &[&release], "enforce")
            )),
    )
    .await;
    for reference in [&img.tag, &img.digest] {
        let r = m
            .get_manifest("b.example/owner/app", reference)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, img.manifest);
    }
    denied(
        &m,
        "b.example/owner/prefixed",
        &prefixed.tag,
        "another repository",
    )
    .await;
}

// Keyless signatures.

const GHA: &str = "https://token.actions.githubusercontent.com";
/// 2024-01-01T00:00:00Z: the leaves are valid for ten minutes from it, as Fulcio's are.
const T0: i64 = 1_704_067_200;

fn workflow(org_repo: &str) -> String {
    format!("https://github.com/{org_repo}/.github/workflows/release.yml@refs/heads/main")
}

/// A certificate authority (rcgen): its certificate and key.
struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

fn ec_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn ca(common_name: &str, parent: Option<&Ca>) -> Ca {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "sigstore.test");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = ec_key();
    let pem = match parent {
        None => {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
            params.self_signed(&key).unwrap().pem()
        }
        Some(parent) => {
            // Fulcio's intermediate: a CA for code signing only.
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
            let issuer = rcgen::Issuer::from_params(&parent.params, &parent.key);
            params.signed_by(&key, &issuer).unwrap().pem()
        }
    };
    Ca { params, key, pem }
}

/// A short-lived signing certificate; its key is `keys`' key pair `name` (for openssl).
struct Leaf {
    name: String,
    pem: String,
    der: Vec<u8>,
}

/// A Fulcio-like CA (a root and an intermediate) and a Rekor-like log (an openssl key pair),
/// named `name` among `keys`.
struct Sigstore<'k> {
    keys: &'k Keys,
    name: String,
    root: Ca,
    intermediate: Ca,
}

impl<'k> Sigstore<'k> {
    fn new(keys: &'k Keys, name: &str) -> Self {
        let root = ca(&format!("{name} root"), None);
        let intermediate = ca(&format!("{name} intermediate"), Some(&root));
        keys.ec(&format!("{name}-log"));
        Sigstore {
            keys,
            name: name.into(),
            root,
            intermediate,
        }
    }

    /// The CA chain as Fulcio publishes it (intermediate, then root), written to a file.
    fn chain_file(&self) -> PathBuf {
        let path = self
            .keys
            .dir
            .path()
            .join(format!("{}-chain.pem", self.name));
        std::fs::write(&path, self.chain_pem()).unwrap();
        path
    }

    fn chain_pem(&self) -> String {
        format!("{}{}", self.intermediate.pem, self.root.pem)
    }

    fn log_key(&self) -> String {
        format!("{}-log", self.name)
    }

    fn log_public(&self) -> PathBuf {
        self.keys.public(&self.log_key())
    }

    /// A code-signing certificate for `subject` (a SAN URI) from OIDC `issuer`, valid from
    /// `from` for ten minutes, with Fulcio's issuer extensions (v1 raw, v2 a UTF8String).
    fn leaf(&self, name: &str, issuer: &str, subject: &str, from: i64) -> Leaf {
        let key = ec_key();
        std::fs::write(
            self.keys.dir.path().join(format!("{name}.key")),
            key.serialize_pem(),
        )
        .unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(subject.try_into().unwrap())];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
        let mut v2 = vec![0x0c, issuer.len() as u8];
        v2.extend_from_slice(issuer.as_bytes());
        params.custom_extensions = vec![
            rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 57264, 1, 1],
                issuer.as_bytes().to_vec(),
            ),
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 8], v2),
        ];
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + std::time::Duration::from_secs(from as u64);
        params.not_after = epoch + std::time::Duration::from_secs(from as u64 + 600);
        let issuer = rcgen::Issuer::from_params(&self.intermediate.params, &self.intermediate.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            name: name.into(),
            pem: cert.pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A log entry body, its log's ID (hex) and the signed entry timestamp of it logged at `t`
    /// (integrated time) by log key `log_key`, over the RFC 8785 canonical form.
    fn logged(&self, log_key: &str, body: &Value, t: i64) -> (String, String, String) {
        let body = B64.encode(serde_json::to_vec(body).unwrap());
        let log_id = sha256_hex(&self.keys.public_der(log_key));
        let canonical = format!(
            r#"{{"body":"{body}","integratedTime":{t},"logID":"{log_id}","logIndex":1234}}"#
        );
        let set = B64.encode(self.keys.sign(log_key, canonical.as_bytes()));
        (body, log_id, set)
    }
}

/// A hashedrekord entry body: `signature` of an artifact with SHA-256 `hex` by `leaf`.
fn hashedrekord(hex: &str, signature: &[u8], leaf: &Leaf) -> Value {
    json!({
        "apiVersion": "0.0.1", "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hex}},
            "signature": {"content": B64.encode(signature), "publicKey": {"content": B64.encode(&leaf.pem)}},
        },
    })
}

/// The transparency-log proof a keyless signature carries.
enum Proof<'a> {
    None,
    /// Logged at this time by the CA's own log.
    At(i64),
    /// Logged at this time, vouched for by this log key.
    By(&'a str, i64),
}

/// Sign `target` of `name` keylessly the way `cosign sign` does: the payload signed with the
/// leaf's key, the certificate, chain and log entry in the layer's annotations.
async fn cosign_sign_keyless(
    reg: &Registry,
    fulcio: &Sigstore<'_>,
    leaf: &Leaf,
    name: &str,
    target: &str,
    proof: Proof<'_>,
) {
    let pl = payload(&format!("{}/{name}", reg.hostport()), target);
    let sig = fulcio.keys.sign(&leaf.name, &pl);
    let mut annotations = json!({
        "dev.cosignproject.cosign/signature": B64.encode(&sig),
        "dev.sigstore.cosign/certificate": leaf.pem,
        "dev.sigstore.cosign/chain": fulcio.chain_pem(),
    });
    let own = fulcio.log_key();
    let logged = match proof {
        Proof::None => None,
        Proof::At(t) => Some((own.as_str(), t)),
        Proof::By(key, t) => Some((key, t)),
    };
    if let Some((key, t)) = logged {
        let body = hashedrekord(&sha256_hex(&pl), &sig, leaf);
        let (body, log_id, set) = fulcio.logged(key, &body, t);
        let bundle = json!({
            "SignedEntryTimestamp": set,
            "Payload": {"body": body, "integratedTime": t, "logIndex": 1234, "logID": log_id},
        });
        annotations["dev.sigstore.cosign/bundle"] = bundle.to_string().into();
    }
    push_signature_layers(&reg.pusher(), name, target, &[(pl, annotations)]).await;
}

fn keyless_rule(pattern: &str, keys: &[&Path], fulcio: &Sigstore<'_>, subject: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| q(&k.display().to_string())).collect();
    format!(
        "  - match: {}\n    keys: [{}]\n    keyless:\n      roots: [{}]\n      tlog_keys: [{}]\n      issuer: {}\n      subject: {}\n",
        q(pattern),
        keys.join(", "),
        q(&fulcio.chain_file().display().to_string()),
        q(&fulcio.log_public().display().to_string()),
        q(GHA),
        q(subject),
    )
}

/// Keyless cosign signatures (tag scheme): a Fulcio-style certificate for the rule's identity
/// with a valid log proof passes, beside a key-based signature under the same rule; another
/// issuer, another subject, another CA, no log proof, a proof the log's key did not sign, and
/// a signature logged after the certificate expired are each refused with their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_cosign_signatures_pass_and_each_failure_names_its_reason() {
    let Some(keys) = Keys::new() else { return };
    let release = keys.ec("release");
    let fulcio = Sigstore::new(&keys, "fulcio");
    let stranger = Sigstore::new(&keys, "stranger");
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let sign = |repo: &str, from: &Sigstore, issuer: &str, subject: &str| {
        from.leaf(&repo.replace('/', "-"), issuer, subject, T0)
    };

    let good = p.push_oci_image("myorg/keyless", "1", 1801).await;
    let leaf = sign("myorg/keyless", &fulcio, GHA, &workflow("myorg/keyless"));
    cosign_sign_keyless(
        &reg,
        &fulcio,
        &leaf,
        "myorg/keyless",
        &good.digest,
        Proof::At(T0 + 60),
    )
    .await;

    let keyed = p.push_oci_image("myorg/keyed", "1", 1802).await;
    cosign_sign(&reg, &keys, "release", "myorg/keyed", &keyed.digest).await;

    let mut cases = Vec::new();
    for (repo, seed, from, issuer, subject, proof, reason) in [
        (
            "myorg/issuer",
            1803,
            &fulcio,
            "https://accounts.google.com",
            workflow("myorg/issuer"),
            Proof::At(T0 + 60),
            "names another identity",
        ),
        (
            "myorg/subject",
            1804,
            &fulcio,
            GHA,
            workflow("evil/subject"),
            Proof::At(T0 + 60),
            "names another identity",
        ),
        (
            "myorg/untrusted",
            1805,
            &stranger,
            GHA,
            workflow("myorg/untrusted"),
            Proof::By(&fulcio.log_key(), T0 + 60),
            "does not chain to a trusted root",
        ),
        (
            "myorg/nolog",
            1806,
            &fulcio,
            GHA,
            workflow("myorg/nolog"),
            Proof::None,
            "carries no transparency-log proof",
        ),
        (
            "myorg/badlog",
            1807,
            &fulcio,
            GHA,
            workflow("myorg/badlog"),
            Proof::By(&stranger.log_key(), T0 + 60),
            "transparency-log proof of the signature",
        ),
        (
            "myorg/expired",
            1808,
            &fulcio,
            GHA,
            workflow("myorg/expired"),
            Proof::At(T0 + 1200),
            "was not valid at signing time",
        ),
    ] {
        let img = p.push_oci_image(repo, "1", seed).await;
        let leaf = sign(repo, from, issuer, &subject);
        cosign_sign_keyless(&reg, from, &leaf, repo, &img.digest, proof).await;
        cases.push((repo, img, reason));
    }

    let m = Mirror::start(opts(
        &reg,
        &[keyless_rule(
            "myorg/**",
            &[&release],
            &fulcio,
            "https://github.com/myorg/**",
        )],
    ))
    .await;
    pull_and_check_oci(&m.hostport(), &good, None).await;
    pull_and_check_oci(&m.hostport(), &keyed, None).await;
    assert!(
        m.log_text().contains(&workflow("myorg/keyless")),
        "the verdict names the signer's identity"
    );
    // `ocimirror inspect`, offline from the stored signature: the signer's identity.
    let out = Command::new(ocimirror_bin())
        .args(["inspect", "myorg/keyless:1", "--config"])
        .arg(m.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let signer = format!("{} (issuer {GHA})", workflow("myorg/keyless"));
    assert!(
        text.contains(&format!("signature verified, key {signer}")),
        "{text}"
    );
    for (repo, img, reason) in &cases {
        refused(&m, repo, img, reason).await;
    }
    let err = pull(&m, &cases[0].1).await.expect_err("skopeo refused");
    assert!(err.contains("names another identity"), "{err}");
    for result in [
        "identity_mismatch",
        "untrusted_chain",
        "no_tlog_proof",
        "tlog_invalid",
        "expired_at_signing",
    ] {
        let label = format!("result=\"{result}\"");
        assert!(
            m.metric("ocimirror_verify_total", &[&label]).await >= 1.0,
            "{result} counted"
        );
    }
}

/// A Sigstore bundle v0.3 of `leaf`'s signature: its certificate, a log entry of `body` logged
/// at `t` (with its inclusion promise unless `promise` is false), and `content` (the
/// `messageSignature` or `dsseEnvelope` member).
fn keyless_bundle(
    fulcio: &Sigstore<'_>,
    leaf: &Leaf,
    body: &Value,
    t: i64,
    promise: bool,
    content: (&str, Value),
) -> Value {
    let (body, log_id, set) = fulcio.logged(&fulcio.log_key(), body, t);
    let kind = body_kind(&body);
    let mut entry = json!({
        "logIndex": "1234", "logId": {"keyId": B64.encode(hex::decode(log_id).unwrap())},
        "kindVersion": {"kind": kind, "version": "0.0.1"}, "integratedTime": t.to_string(),
        "canonicalizedBody": body,
    });
    if promise {
        entry["inclusionPromise"] = json!({"signedEntryTimestamp": set});
    }
    let mut bundle = json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {"certificate": {"rawBytes": B64.encode(&leaf.der)}, "tlogEntries": [entry]},
    });
    bundle[content.0] = content.1;
    bundle
}

fn body_kind(b64_body: &str) -> String {
    let body: Value = serde_json::from_slice(&B64.decode(b64_body).unwrap()).unwrap();
    body["kind"].as_str().unwrap().to_owned()
}

/// A keyless `messageSignature` bundle over `img`'s manifest by `leaf`, logged at `t`.
fn message_bundle(fulcio: &Sigstore<'_>, leaf: &Leaf, img: &Image, t: i64, promise: bool) -> Value {
    let sig = fulcio.keys.sign(&leaf.name, &img.manifest);
    let body = hashedrekord(hex_of(&img.digest), &sig, leaf);
    let digest = hex::decode(hex_of(&img.digest)).unwrap();
    let content = json!({
        "messageDigest": {"algorithm": "SHA2_256", "digest": B64.encode(&digest)},
        "signature": B64.encode(&sig),
    });
    keyless_bundle(
        fulcio,
        leaf,
        &body,
        t,
        promise,
        ("messageSignature", content),
    )
}

/// Keyless Sigstore bundles among the referrers: a `messageSignature` over the manifest and a
/// DSSE envelope (logged as a `dsse` entry) pass; a bundle for another subject, and one whose
/// log entry carries no inclusion promise, are refused with their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_sigstore_bundles_in_the_referrers() {
    let Some(keys) = Keys::new() else { return };
    let fulcio = Sigstore::new(&keys, "fulcio");
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();

    let plain = p.push_oci_image("myorg/bundled", "1", 1831).await;
    let leaf = fulcio.leaf("bundled", GHA, &workflow("myorg/bundled"), T0);
    let bundle = message_bundle(&fulcio, &leaf, &plain, T0 + 30, true);
    push_bundle(&p, "myorg/bundled", &plain, &bundle).await;

    let attested = p.push_oci_image("myorg/dsse", "1", 1832).await;
    let (statement, ptype, pae) = dsse_statement(&reg, "myorg/dsse", &attested);
    let leaf = fulcio.leaf("dsse", GHA, &workflow("myorg/dsse"), T0);
    let sig = keys.sign("dsse", &pae);
    let envelope = json!({"payload": B64.encode(&statement), "payloadType": ptype,
        "signatures": [{"sig": B64.encode(&sig), "keyid": ""}]});
    let body = json!({
        "apiVersion": "0.0.1", "kind": "dsse",
        "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": sha256_hex(&serde_json::to_vec(&envelope).unwrap())},
            "payloadHash": {"algorithm": "sha256", "value": sha256_hex(&statement)},
            "signatures": [{"signature": B64.encode(&sig), "verifier": B64.encode(&leaf.pem)}],
        },
    });
    let bundle = keyless_bundle(
        &fulcio,
        &leaf,
        &body,
        T0 + 30,
        true,
        ("dsseEnvelope", envelope),
    );
    push_bundle(&p, "myorg/dsse", &attested, &bundle).await;

    let other = p.push_oci_image("myorg/other", "1", 1833).await;
    let leaf = fulcio.leaf("other", GHA, &workflow("evil/other"), T0);
    let bundle = message_bundle(&fulcio, &leaf, &other, T0 + 30, true);
    push_bundle(&p, "myorg/other", &other, &bundle).await;

    let unpromised = p.push_oci_image("myorg/unpromised", "1", 1834).await;
    let leaf = fulcio.leaf("unpromised", GHA, &workflow("myorg/unpromised"), T0);
    let bundle = message_bundle(&fulcio, &leaf, &unpromised, T0 + 30, false);
    push_bundle(&p, "myorg/unpromised", &unpromised, &bundle).await;

    let m = Mirror::start(opts(
        &reg,
        &[keyless_rule(
            "myorg/**",
            &[],
            &fulcio,
            "https://github.com/myorg/**",
        )],
    ))
    .await;
    pull_and_check_oci(&m.hostport(), &plain, None).await;
    pull_and_check_oci(&m.hostport(), &attested, None).await;
    refused(&m, "myorg/other", &other, "names another identity").await;
    refused(
        &m,
        "myorg/unpromised",
        &unpromised,
        "carries no transparency-log proof",
    )
    .await;
}

/// `config check` names each problem of a keyless identity by its key.
#[test]
fn config_check_names_keyless_problems() {
    let Some(keys) = Keys::new() else { return };
    let rekor = keys.ec("rekor");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mirror.yaml");
    let text = format!(
        "upstream: {{url: \"http://127.0.0.1:1\"}}\nverify:\n  - match: \"myorg/**\"\n    keyless:\n      roots: [{}]\n      tlog_keys: [{}]\n      issuer: \"\"\n      subject: \"/[/\"\n",
        q(&rekor.display().to_string()),
        q(&rekor.display().to_string()),
    );
    std::fs::write(&file, text).unwrap();
    let (ok, said) = config_check(&file);
    assert!(!ok, "config check accepted it: {said}");
    for expected in [
        "verify.0.keyless.roots.0",
        "no PEM CERTIFICATE",
        "verify.0.keyless.issuer",
        "OIDC issuer",
        "verify.0.keyless.subject",
    ] {
        assert!(said.contains(expected), "{expected:?} not in:\n{said}");
    }
    assert!(!said.contains("tlog_keys"), "{said}");
}
