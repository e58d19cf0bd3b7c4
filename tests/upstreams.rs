//! Several upstreams behind one endpoint, with two real Distribution registries holding
//! different images under the same repository name: the default answers plain requests, the
//! named one answers its path prefix and containerd's `?ns=`, and their content never mixes.

mod common;

use common::*;

async fn two_upstreams() -> (Registry, Registry, Image, Image, Mirror) {
    let a = Registry::start(RegistryOpts::default()).await;
    let b = Registry::start(RegistryOpts::default()).await;
    let img_a = a.pusher().push_oci_image("team/app", "v1", 1001).await;
    let img_b = b.pusher().push_oci_image("team/app", "v1", 1002).await;
    let m = Mirror::start(MirrorOpts::upstream(&a.url()).tag_ttl("1h").extra(&format!(
        "upstreams:\n  - name: b.example\n    url: {}\n    tag_ttl: 0s\n",
        q(&b.url())
    )))
    .await;
    (a, b, img_a, img_b, m)
}

async fn manifest(m: &Mirror, path: &str) -> (u16, Vec<u8>) {
    let r = m.get_accepting(path).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_and_ns_reach_the_named_upstream_and_content_never_mixes() {
    let (a, b, img_a, img_b, m) = two_upstreams().await;
    assert_ne!(img_a.digest, img_b.digest);

    for (path, img) in [
        // Plain: the default upstream.
        ("/v2/team/app/manifests/v1".to_string(), &img_a),
        // Path prefix (containerd's override_path, skopeo, podman): the named upstream.
        ("/v2/b.example/team/app/manifests/v1".to_string(), &img_b),
        // containerd's ns, by name or by the upstream's host:port.
        ("/v2/team/app/manifests/v1?ns=b.example".to_string(), &img_b),
        (
            format!("/v2/team/app/manifests/v1?ns={}", b.hostport()),
            &img_b,
        ),
        // containerd with override_path to the prefix sends both: the prefix is not doubled.
        (
            "/v2/b.example/team/app/manifests/v1?ns=b.example".to_string(),
            &img_b,
        ),
        // ns naming the default upstream.
        (
            format!("/v2/team/app/manifests/v1?ns={}", a.hostport()),
            &img_a,
        ),
    ] {
        let (s, body) = manifest(&m, &path).await;
        assert_eq!((s, body), (200, img.manifest.clone()), "{path}");
    }

    // Blobs follow the same routes, and one upstream's blob is not served under the other's
    // repository even though the name is the same.
    let layer_b = &img_b.layers[2].digest;
    let r = m
        .get(&format!("/v2/team/app/blobs/{layer_b}?ns=b.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img_b.blob(layer_b));
    let r = m
        .get(&format!("/v2/team/app/blobs/{layer_b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a blob of b is not a blob of a's team/app");

    // Separate in storage too: b's repository lives under its name.
    let repos = m.storage_root().join("docker/registry/v2/repositories");
    assert!(repos.join("b.example/team/app/_manifests").is_dir());
    assert!(repos.join("team/app/_manifests").is_dir());

    // Each upstream was asked only for its own.
    assert!(a.count_requests("GET", "/v2/team/app/manifests/v1").await >= 1);
    assert_eq!(
        a.count_requests("GET", &format!("/blobs/{layer_b}")).await,
        0
    );
    assert_eq!(
        b.count_requests("GET", &format!("/blobs/{layer_b}")).await,
        1
    );

    // Metrics carry the upstream, never the repository.
    let metrics = m.metrics().await;
    assert!(metrics.contains("upstream=\"b.example\""), "{metrics}");
    assert!(metrics.contains("upstream=\"default\""));
    assert!(!metrics.contains("team/app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ns_is_refused_and_nothing_is_dialled() {
    let (_a, _b, _img_a, _img_b, m) = two_upstreams().await;
    for ns in [
        "evil.example",
        "169.254.169.254",
        "127.0.0.1:1",
        "localhost",
    ] {
        let r = m
            .get_accepting(&format!("/v2/team/app/manifests/v1?ns={ns}"))
            .send()
            .await
            .unwrap();
        let h = expect_oci_error(r, 404, &["NAME_UNKNOWN"]).await;
        drop(h);
    }
    let metrics = m.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "ocimirror_upstream_requests_total", &[]),
        0.0,
        "no upstream was contacted"
    );
}

/// A mirror of a mirror: the default upstream is a plain registry declared `ns: [docker.io]`, so
/// containerd's `?ns=docker.io` reaches it, and the answer names the `ns` used in
/// `OCI-Namespace`. Its own host is no longer an `ns` of it (the list replaces the defaults), and
/// a request without `ns` carries no such header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_ns_reaches_the_upstream_and_is_named_in_the_answer() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("library/app", "v1", 1301).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).up("ns", "[docker.io]")).await;
    for (path, ns) in [
        (
            "/v2/library/app/manifests/v1?ns=docker.io",
            Some("docker.io"),
        ),
        (
            "/v2/library/app/manifests/v1?ns=Docker.IO",
            Some("docker.io"),
        ),
        ("/v2/library/app/manifests/v1", None),
    ] {
        let r = m.get_accepting(path).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(
            r.headers()
                .get("oci-namespace")
                .map(|v| v.to_str().unwrap()),
            ns,
            "{path}"
        );
        assert_eq!(header(r.headers(), "docker-content-digest"), img.digest);
    }
    let layer = img.all_blobs()[1].digest.clone();
    let r = m
        .get(&format!("/v2/library/app/blobs/{layer}?ns=docker.io"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(r.headers(), "oci-namespace"), "docker.io");
    let r = m
        .get(&format!(
            "/v2/library/app/manifests/v1?ns={}",
            reg.hostport()
        ))
        .send()
        .await
        .unwrap();
    let h = expect_oci_error(r, 404, &["NAME_UNKNOWN"]).await;
    assert!(h.get("oci-namespace").is_none());
}

#[test]
fn config_check_refuses_an_ns_on_two_upstreams() {
    let (ok, err) = config_check_yaml(
        "upstream:\n  url: https://mirror.gcr.io\n  ns: [docker.io]\nupstreams:\n  - name: hub\n    url: https://registry-1.docker.io\n    ns: [docker.io, index.docker.io]\n",
    );
    assert!(!ok);
    assert!(err.contains("upstreams.0.ns"), "{err}");
    assert!(
        err.contains("\"docker.io\" is also an ns of upstream"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_from_both_upstreams_through_one_endpoint() {
    let (_a, _b, img_a, img_b, m) = two_upstreams().await;
    let mut a = img_a.clone();
    a.name = "team/app".into();
    pull_and_check_oci(&m.hostport(), &a, None).await;
    let mut b = img_b.clone();
    b.name = "b.example/team/app".into();
    pull_and_check_oci(&m.hostport(), &b, None).await;
}

#[test]
fn config_check_refuses_bad_upstream_names() {
    let (ok, err) = config_check_yaml(
        "upstreams:\n  - name: Bad/Name\n    url: https://ghcr.io\n  - name: quay.io\n    url: ftp://quay.io\n  - name: quay.io\n",
    );
    assert!(!ok);
    assert!(err.contains("upstreams.0.name"), "{err}");
    assert!(err.contains("upstreams.1.url"), "{err}");
    assert!(err.contains("\"quay.io\" is used twice"), "{err}");
}

#[test]
fn the_multi_upstream_example_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/multi-upstream.yaml");
    let mut text = std::fs::read_to_string(&example).unwrap();
    for secret in ["dockerhub", "ecr"] {
        std::fs::write(dir.path().join(secret), "token\n").unwrap();
        text = text.replace(
            &format!("/run/secrets/{secret}"),
            &dir.path().join(secret).display().to_string(),
        );
    }
    let cfg = dir.path().join("multi.yaml");
    std::fs::write(&cfg, text).unwrap();
    let (ok, err) = config_check(&cfg);
    assert!(ok, "{err}");
}
