//! The OCI distribution-spec conformance suite's pull workflow (v1.1.1, `01_pull_test.go`), its
//! checks made here in Rust: the suite is Go and cannot be fetched in this environment. As with
//! the suite run against a registry that takes no pushes (`OCI_TAG_NAME`, `OCI_MANIFEST_DIGEST`
//! and `OCI_BLOB_DIGEST` set, so its own set-up and tear-down are skipped), the content is
//! pushed to the upstream first. The same checks run against the Distribution registry itself,
//! which passes the suite, so a check that is wrong here fails there too.

mod common;

use common::*;
use reqwest::Method;

const NAME: &str = "conformance/pull";
/// The suite's reference for a manifest that does not exist: neither a tag nor a digest.
const NONEXISTENT_MANIFEST: &str = ".INVALID_MANIFEST_NAME";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The error codes the spec defines (`errorCodes` in the suite).
const ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// One request of the workflow: `what` fails unless the status is `status` and, when `digest` is
/// given, its Docker-Content-Digest is absent or `digest`.
async fn check(
    failures: &mut Vec<String>,
    what: &str,
    req: reqwest::RequestBuilder,
    status: u16,
    digest: Option<&str>,
) {
    let r = req.send().await.unwrap();
    if r.status() != status {
        failures.push(format!("{what} is {status}: got {}", r.status()));
    }
    if let Some(want) = digest {
        let got = header(r.headers(), "docker-content-digest");
        if !(got.is_empty() || got == want) {
            failures.push(format!("{what}'s Docker-Content-Digest: got {got}"));
        }
    }
}

/// Every check of the pull workflow against the registry at `base`; returns the failures.
async fn pull_workflow(base: &str, tag: &str, manifest_digest: &str, blob: &str) -> Vec<String> {
    let c = client();
    let mut failures = Vec::new();
    let f = &mut failures;
    let req = |method: Method, path: String| c.request(method, format!("{base}/v2/{NAME}/{path}"));
    let dummy = sha256_digest(b"a blob no registry holds");

    // Pull blobs.
    for method in [Method::HEAD, Method::GET] {
        let what = format!("{method} nonexistent blob");
        check(
            f,
            &what,
            req(method.clone(), format!("blobs/{dummy}")),
            404,
            None,
        )
        .await;
        let what = format!("{method} existing blob");
        let head = method == Method::HEAD;
        let digest = head.then_some(blob);
        check(
            f,
            &what,
            req(method.clone(), format!("blobs/{blob}")),
            200,
            digest,
        )
        .await;
    }

    // Pull manifests.
    for method in [Method::HEAD, Method::GET] {
        let what = format!("{method} nonexistent manifest");
        let path = format!("manifests/{NONEXISTENT_MANIFEST}");
        check(f, &what, req(method.clone(), path), 404, None).await;
        let what = format!("{method} manifest by digest");
        let r = req(method.clone(), format!("manifests/{manifest_digest}"));
        check(
            f,
            &what,
            r.header("accept", OCI_MANIFEST),
            200,
            Some(manifest_digest),
        )
        .await;
        // The suite's "HEAD request to manifest path (tag)" is a GET.
        let r = req(Method::GET, format!("manifests/{tag}")).header("accept", OCI_MANIFEST);
        check(f, "GET manifest by tag", r, 200, Some(manifest_digest)).await;
    }
    let mut expect = |what: &str, ok: bool, got: String| {
        if !ok {
            failures.push(format!("{what}: got {got}"));
        }
    };

    // Error codes: a 400 carries the spec's error JSON.
    let r = req(Method::PUT, "manifests/sha256:totallywrong".into())
        .header("content-type", OCI_MANIFEST)
        .body("blablabla")
        .send()
        .await
        .unwrap();
    let status = r.status();
    expect(
        "PUT manifest sha256:totallywrong is 400 or 404",
        status == 400 || status == 404,
        status.to_string(),
    );
    if status == 400 {
        let codes = error_codes(&r.bytes().await.unwrap());
        expect(
            "the 400's first error code is one the spec defines",
            codes
                .first()
                .is_some_and(|c| ERROR_CODES.contains(&c.as_str())),
            format!("{codes:?}"),
        );
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_workflow_passes_against_the_mirror_and_the_registry() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image(NAME, "tagtest0", 1101).await;
    let config = img.all_blobs()[0].digest.clone();
    let failures = pull_workflow(&reg.url(), "tagtest0", &img.digest, &config).await;
    assert!(
        failures.is_empty(),
        "the registry itself fails: {failures:#?}"
    );

    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let failures = pull_workflow(&m.url(), "tagtest0", &img.digest, &config).await;
    assert!(failures.is_empty(), "the mirror fails: {failures:#?}");
    // A reference that is neither a tag nor a digest is answered without the upstream: every
    // manifest request the mirror made upstream found its manifest.
    let t = m.metrics().await;
    let upstream = |op: &str, status: &str| {
        metric_sum(
            &t,
            "ocimirror_upstream_requests_total",
            &[&format!("op=\"{op}\""), &format!("status=\"{status}\"")],
        )
    };
    assert!(upstream("manifest_get", "200") >= 1.0, "{t}");
    for op in ["manifest_head", "manifest_get"] {
        assert_eq!(upstream(op, "404"), 0.0, "{t}");
    }
    // The nonexistent blob was asked of the upstream (it might have had it).
    assert!(
        upstream("blob_head", "404") + upstream("blob_get", "404") >= 1.0,
        "{t}"
    );
}

/// What a reference that cannot name a manifest gets, and what stays 400: a reference that
/// claims to be a digest but is malformed, and an invalid repository name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_that_cannot_exist_are_404_and_malformed_digests_400() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    for (path, status, code) in [
        (
            format!("/v2/{NAME}/manifests/.INVALID_MANIFEST_NAME"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/{NAME}/manifests/-leading-dash"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/{NAME}/manifests/{}", "t".repeat(129)),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/{NAME}/manifests/sha256:xyz"),
            400,
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/{NAME}/manifests/sha256:{}", "0".repeat(63)),
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/UPPER/case/manifests/latest".to_owned(),
            400,
            "NAME_INVALID",
        ),
    ] {
        for method in ["GET", "HEAD"] {
            let r = raw_request(&m.hostport(), method, &path).await;
            assert_eq!(r.status, status, "{method} {path}");
            if method == "GET" {
                assert_eq!(error_codes(&r.body), vec![code.to_owned()], "{path}");
            }
        }
    }
    // None of them reached the upstream.
    assert_eq!(reg.count_requests("", &format!("/v2/{NAME}/")).await, 0);
}
