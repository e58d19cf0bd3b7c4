//! The OCI referrers API through the mirror: from a real Distribution 2.8 (which lacks the API,
//! so the tag-schema fallback is used), cached like a tag, filtered by `artifactType`; and from
//! an upstream that has the API (the shared fake upstream, since Distribution 2.8 does not).

mod common;

use common::*;
use serde_json::{Value, json};

const SBOM: &str = "application/vnd.example.sbom.v1";
const SIG: &str = "application/vnd.example.signature.v1";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// Push an artifact manifest whose subject is `subject`; returns its descriptor.
async fn push_artifact(
    p: &Pusher,
    name: &str,
    subject: &Image,
    artifact_type: &str,
    seed: u8,
) -> Value {
    p.push_blob(name, bytes::Bytes::from_static(b"{}")).await;
    let payload = bytes::Bytes::from(vec![seed; 64]);
    p.push_blob(name, payload.clone()).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": sha256_digest(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256_digest(&payload), "size": 64}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.manifest.len()},
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    p.push_manifest(name, &digest, OCI_MANIFEST, &manifest)
        .await;
    json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(), "artifactType": artifact_type})
}

async fn referrers(m: &Mirror, path: &str) -> (u16, Option<String>, Value) {
    let r = m.get(path).send().await.unwrap();
    let status = r.status().as_u16();
    let filtered = r
        .headers()
        .get("oci-filters-applied")
        .map(|v| v.to_str().unwrap().to_owned());
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "application/vnd.oci.image.index.v1+json");
    let body = r.bytes().await.unwrap();
    (status, filtered, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_schema_fallback_cached_and_filtered() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let img = p.push_oci_image("team/app", "v1", 1101).await;
    let sbom = push_artifact(&p, "team/app", &img, SBOM, 1).await;
    let sig = push_artifact(&p, "team/app", &img, SIG, 2).await;
    // What an OCI client pushes for a registry without the API: an index under `sha256-<hex>`.
    let fallback = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [sbom, sig],
    }))
    .unwrap();
    let tag = format!("sha256-{}", hex_of(&img.digest));
    p.push_manifest(
        "team/app",
        &tag,
        "application/vnd.oci.image.index.v1+json",
        &fallback,
    )
    .await;

    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).tag_ttl("1h")).await;
    let path = format!("/v2/team/app/referrers/{}", img.digest);
    let (s, filtered, index) = referrers(&m, &path).await;
    assert_eq!(s, 200);
    assert_eq!(filtered, None);
    assert_eq!(
        index_digests(&index),
        vec![
            sbom["digest"].as_str().unwrap(),
            sig["digest"].as_str().unwrap()
        ]
    );
    assert!(
        reg.count_requests("GET", &format!("/manifests/{tag}"))
            .await
            >= 1,
        "fallback used"
    );

    let (s, filtered, index) = referrers(&m, &format!("{path}?artifactType={SBOM}")).await;
    assert_eq!(s, 200);
    assert_eq!(filtered.as_deref(), Some("artifactType"));
    assert_eq!(
        index_digests(&index),
        vec![sbom["digest"].as_str().unwrap()]
    );

    // Cached within tag_ttl: no more upstream requests.
    let before = reg.count_requests("", "/v2/team/app/").await;
    let (s, _, again) = referrers(&m, &path).await;
    assert_eq!(s, 200);
    assert_eq!(index_digests(&again).len(), 2);
    assert_eq!(reg.count_requests("", "/v2/team/app/").await, before);

    // A digest nobody refers to: the empty index.
    let other = p.push_oci_image("team/app", "v2", 1102).await;
    let (s, _, index) = referrers(&m, &format!("/v2/team/app/referrers/{}", other.digest)).await;
    assert_eq!(s, 200);
    assert!(index_digests(&index).is_empty());

    // Offline, what was fetched is still there.
    let mut m = m;
    m.restart(Some(MirrorOpts::upstream(&reg.url()).mode("offline")))
        .await;
    let (s, _, index) = referrers(&m, &path).await;
    assert_eq!(s, 200);
    assert_eq!(index_digests(&index).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_referrers_api_is_proxied() {
    let subject = format!("sha256:{}", "ab".repeat(32));
    let index = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "cd".repeat(32)), "size": 10, "artifactType": SIG}],
    });
    let f = FakeUpstream::start().await;
    f.add_referrers("team/app", &subject, &serde_json::to_vec(&index).unwrap());

    let m = Mirror::start(MirrorOpts::upstream(&f.url()).tag_ttl("0s")).await;
    let (s, _, got) = referrers(&m, &format!("/v2/team/app/referrers/{subject}")).await;
    assert_eq!(s, 200);
    assert_eq!(got, index);
    assert_eq!(
        f.count("GET", &format!("/v2/team/app/referrers/{subject}")),
        1,
        "the API itself, not the fallback"
    );
    assert_eq!(
        f.count_route(Route::Manifest, ""),
        0,
        "no fallback tag asked for"
    );
    // Malformed digests are refused before anything else.
    let r = m
        .get("/v2/team/app/referrers/sha256:xyz")
        .send()
        .await
        .unwrap();
    expect_oci_error(r, 400, &["DIGEST_INVALID"]).await;
}
