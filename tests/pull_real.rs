//! ocimirror in front of a real Distribution registry (docker-registry 2.8) as its upstream.
//! Each test starts its own registry and mirror, so tests run in parallel.
//!
//! The 256 MiB test is `big_blob_concurrent_cold_gets_one_upstream_fetch`; run it alone with
//! `cargo nextest run --test pull_real big_blob` (size override: OCIMIRROR_TEST_BIG_MIB).

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;

async fn setup() -> (Registry, Pusher) {
    let reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    (reg, p)
}

/// Requests the upstream received under `/v2/<name>/` (anything but the `/v2/` ping).
async fn upstream_count(reg: &Registry, name: &str) -> usize {
    reg.count_requests("", &format!("/v2/{name}/")).await
}

// ---------------------------------------------------------------------------------------------
// Harness sanity: the registry, seeder and skopeo checks work without the mirror.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_registry_roundtrip_without_mirror() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("h/oci", "v1", 1).await;
    let dimg = p.push_docker_image("h/docker", "v1", 2).await;
    let idx = p.push_index("h/index", "v1", 3).await;
    pull_and_check_oci(&reg.hostport(), &img, None).await;
    pull_and_check_docker(&reg.hostport(), &dimg, None).await;
    pull_and_check_index(&reg.hostport(), &idx, None).await;
    // The log parser sees what skopeo did.
    assert!(reg.count_requests("GET", "/v2/h/oci/manifests/v1").await >= 1);
    assert_eq!(
        reg.count_requests("GET", &format!("/v2/h/oci/blobs/{}", img.layers[2].digest))
            .await,
        1
    );
    assert_eq!(reg.count_requests("DELETE", "/v2/").await, 0);
}

// ---------------------------------------------------------------------------------------------
// Pulls through the mirror
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_oci_image() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("team/app", "v1", 10).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let raw = skopeo_inspect_raw(&format!("{}/team/app:v1", m.hostport()), None)
        .await
        .unwrap();
    assert_eq!(raw, img.manifest);
    // By digest too.
    let out = tempfile::TempDir::new().unwrap();
    skopeo_copy(
        &format!("{}/team/app@{}", m.hostport(), img.digest),
        &format!("oci:{}:t", out.path().display()),
        false,
        None,
    )
    .await
    .unwrap();
    let layout = read_oci_layout(out.path());
    assert_image_in(&layout, &img);
    // Every blob was fetched from the upstream once at most.
    for d in img.all_blobs() {
        let n = reg
            .count_requests("GET", &format!("/blobs/{}", d.digest))
            .await;
        assert!(n <= 1, "blob {} fetched {n} times from upstream", d.digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_docker_schema2_image() {
    let (reg, p) = setup().await;
    let img = p.push_docker_image("library/dock", "latest", 20).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull_and_check_docker(&m.hostport(), &img, None).await;
    let r = m
        .get_manifest("library/dock", "latest")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(r.headers(), "content-type"), DOCKER_MANIFEST);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_multiarch_index_with_all() {
    let (reg, p) = setup().await;
    let idx = p.push_index("multi/arch", "latest", 30).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;
    let raw = skopeo_inspect_raw(&format!("{}/multi/arch:latest", m.hostport()), None)
        .await
        .unwrap();
    assert_eq!(raw, idx.manifest, "index must be served unchanged");
    let r = m.get_manifest("multi/arch", "latest").send().await.unwrap();
    assert_eq!(header(r.headers(), "content-type"), OCI_INDEX);
    assert_eq!(header(r.headers(), "docker-content-digest"), idx.digest);
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

fn assert_common_headers(h: &reqwest::header::HeaderMap, digest: &str, len: u64) {
    assert_eq!(header(h, "docker-distribution-api-version"), "registry/2.0");
    assert_eq!(header(h, "docker-content-digest"), digest);
    assert_eq!(header(h, "content-length"), len.to_string());
    assert_eq!(header(h, "etag"), format!("\"{digest}\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_and_blob_headers_head_and_get() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("hdr/oci", "v1", 40).await;
    let dimg = p.push_docker_image("hdr/docker", "v1", 41).await;
    let idx = p.push_index("hdr/index", "v1", 42).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;

    let r = m.get("/healthz").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "ok");
    let r = m.get("/v2/").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(r.headers(), "docker-distribution-api-version"),
        "registry/2.0"
    );

    for (name, digest, mt, bytes) in [
        ("hdr/oci", &img.digest, OCI_MANIFEST, &img.manifest),
        ("hdr/docker", &dimg.digest, DOCKER_MANIFEST, &dimg.manifest),
        ("hdr/index", &idx.digest, OCI_INDEX, &idx.manifest),
    ] {
        // HEAD first (cold), then GET by tag, then GET/HEAD by digest.
        let path = format!("/v2/{name}/manifests/v1");
        let r = m
            .head(&path)
            .header("accept", ACCEPT_MANIFESTS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "HEAD {path}");
        assert_common_headers(r.headers(), digest, bytes.len() as u64);
        assert_eq!(header(r.headers(), "content-type"), mt);
        assert!(r.bytes().await.unwrap().is_empty(), "HEAD has no body");

        for reference in ["v1", digest.as_str()] {
            let r = m.get_manifest(name, reference).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "GET {name}:{reference}");
            assert_common_headers(r.headers(), digest, bytes.len() as u64);
            assert_eq!(header(r.headers(), "content-type"), mt);
            assert_eq!(&r.bytes().await.unwrap()[..], &bytes[..]);
        }
        let r = m
            .head(&format!("/v2/{name}/manifests/{digest}"))
            .header("accept", ACCEPT_MANIFESTS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_common_headers(r.headers(), digest, bytes.len() as u64);
    }

    // Blobs: HEAD cold, then GET, then HEAD warm.
    for d in img.all_blobs() {
        let path = format!("/v2/hdr/oci/blobs/{}", d.digest);
        let r = m.head(&path).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "HEAD {path}");
        assert_common_headers(r.headers(), &d.digest, d.size);
        assert!(r.headers().contains_key("content-type"));
        assert!(r.bytes().await.unwrap().is_empty());

        let r = m.get(&path).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "GET {path}");
        assert_common_headers(r.headers(), &d.digest, d.size);
        assert_eq!(r.bytes().await.unwrap(), img.blob(&d.digest));

        let r = m.head(&path).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_common_headers(r.headers(), &d.digest, d.size);
    }

    // Errors carry the API version header too, and a JSON body.
    let r = m.get_manifest("hdr/oci", "nope").send().await.unwrap();
    assert_eq!(
        header(r.headers(), "docker-distribution-api-version"),
        "registry/2.0"
    );
    expect_oci_error(r, 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]).await;
    let missing = sha256_digest(b"not pushed anywhere");
    let r = m.get_blob("hdr/oci", &missing).send().await.unwrap();
    expect_oci_error(r, 404, &["BLOB_UNKNOWN"]).await;

    let text = m.metrics().await;
    let ep = |e: &str, extra: &[&str]| {
        let mut l = vec![format!("endpoint=\"{e}\"")];
        l.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = l.iter().map(|s| s.as_str()).collect();
        metric_sum(&text, "ocimirror_http_requests_total", &refs)
    };
    assert!(
        ep("manifest", &["method=\"GET\"", "status=\"200\""]) >= 6.0,
        "{text}"
    );
    assert!(ep("manifest", &["method=\"HEAD\""]) >= 6.0, "{text}");
    assert!(ep("blob", &["method=\"GET\""]) >= 4.0, "{text}");
    assert!(ep("blob", &["status=\"404\""]) >= 1.0, "{text}");
    assert!(ep("base", &[]) >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_on_cold_and_warm_blobs() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("rng/app", "v1", 50).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let layer = img.biggest_layer();
    let data = img.blob(&layer.digest).clone();
    let size = layer.size;
    let path = format!("/v2/rng/app/blobs/{}", layer.digest);

    // Cold: the first request for the blob is a Range request.
    for round in ["cold", "warm"] {
        let cases: Vec<(String, u64, u64)> = vec![
            ("bytes=100-199".into(), 100, 199),
            (format!("bytes={}-", size - 1000), size - 1000, size - 1),
            ("bytes=-500".into(), size - 500, size - 1),
            (format!("bytes=0-{}", size + 100), 0, size - 1),
            ("bytes=1048576-2097151".into(), 1 << 20, (2 << 20) - 1),
        ];
        for (range, start, end) in cases {
            let r = m.get(&path).header("range", &range).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 206, "{round} {range}");
            let h = r.headers().clone();
            assert_eq!(
                header(&h, "content-range"),
                format!("bytes {start}-{end}/{size}"),
                "{round} {range}"
            );
            assert_eq!(header(&h, "content-length"), (end - start + 1).to_string());
            assert_eq!(header(&h, "docker-content-digest"), layer.digest);
            let body = r.bytes().await.unwrap();
            assert_eq!(
                &body[..],
                &data[start as usize..=end as usize],
                "{round} {range}"
            );
        }
        for range in [
            format!("bytes={size}-"),
            format!("bytes={}-{}", size + 10, size + 20),
        ] {
            let r = m.get(&path).header("range", &range).send().await.unwrap();
            let h = expect_oci_error(r, 416, &["RANGE_INVALID"]).await;
            assert_eq!(header(&h, "content-range"), format!("bytes */{size}"));
        }
        // A full GET still works.
        let r = m.get(&path).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap(), data);
    }
    assert!(
        reg.count_requests("GET", &format!("/blobs/{}", layer.digest))
            .await
            <= 1,
        "the blob must be fetched from the upstream at most once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_paginates_with_link() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("tags/repo", "t1", 60).await;
    for t in ["t2", "t3", "t4", "t5"] {
        p.push_manifest("tags/repo", t, &img.media_type, &img.manifest)
            .await;
    }
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;

    let r = m.get("/v2/tags/repo/tags/list").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(r.headers(), "docker-distribution-api-version"),
        "registry/2.0"
    );
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["name"], "tags/repo");
    // Distribution 2.8 lists tags in directory order; the mirror may relay that order.
    let mut all: Vec<&str> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, vec!["t1", "t2", "t3", "t4", "t5"]);

    let mut pages = Vec::new();
    let mut path = "/v2/tags/repo/tags/list?n=2".to_string();
    loop {
        let r = m.get(&path).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let link = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_string());
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let tags: Vec<String> = v["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        pages.push(tags.clone());
        match link {
            Some(l) => {
                assert!(l.contains("rel=\"next\""), "Link: {l}");
                let last = tags.last().expect("a page with Link has tags");
                assert!(l.contains(&format!("last={last}")), "Link: {l}");
                let start = l.find('<').unwrap() + 1;
                let end = l.find('>').unwrap();
                path = l[start..end].to_string();
                if path.starts_with("http") {
                    path = path[path.find("/v2/").unwrap()..].to_string();
                }
            }
            None => break,
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(pages[0], vec!["t1", "t2"]);
    assert_eq!(pages[1], vec!["t3", "t4"]);
    assert_eq!(pages.concat(), vec!["t1", "t2", "t3", "t4", "t5"]);

    let r = m
        .get("/v2/tags/repo/tags/list?n=2&last=t2")
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["t3", "t4"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lists_pulled_repositories() {
    let (reg, p) = setup().await;
    let a = p.push_oci_image("cat/one", "v1", 70).await;
    let b = p.push_docker_image("cat/two", "v1", 71).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull_and_check_oci(&m.hostport(), &a, None).await;
    pull_and_check_docker(&m.hostport(), &b, None).await;

    let r = m.get("/v2/_catalog").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let repos: Vec<&str> = v["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(repos.contains(&"cat/one"), "{repos:?}");
    assert!(repos.contains(&"cat/two"), "{repos:?}");
    let mut sorted = repos.clone();
    sorted.sort();
    assert_eq!(repos, sorted, "catalog is sorted");

    let r = m.get("/v2/_catalog?n=1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let link = r
        .headers()
        .get("link")
        .expect("Link on a full page")
        .to_str()
        .unwrap()
        .to_string();
    assert!(link.contains("rel=\"next\""), "{link}");
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["repositories"].as_array().unwrap().len(), 1);
    let first = v["repositories"][0].as_str().unwrap().to_string();
    let r = m
        .get(&format!("/v2/_catalog?n=100&last={first}"))
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let rest: Vec<&str> = v["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(!rest.contains(&first.as_str()));
    assert!(rest.iter().all(|r| *r > first.as_str()));
}

// ---------------------------------------------------------------------------------------------
// Caching: what reaches the upstream
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_pull_makes_no_upstream_requests() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("warm/app", "v1", 80).await;
    let idx = p.push_index("warm/multi", "v1", 81).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).tag_ttl("1h")).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;
    let before_a = upstream_count(&reg, "warm/app").await;
    let before_b = upstream_count(&reg, "warm/multi").await;
    assert!(before_a > 0 && before_b > 0, "the cold pull went upstream");

    pull_and_check_oci(&m.hostport(), &img, None).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;
    for d in img.all_blobs() {
        let r = m.get_blob("warm/app", &d.digest).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), img.blob(&d.digest));
        let r = m
            .head(&format!("/v2/warm/app/blobs/{}", d.digest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    for reference in ["v1", img.digest.as_str()] {
        let r = m.get_manifest("warm/app", reference).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), img.manifest);
    }
    let r = m
        .get_manifest("warm/multi", &idx.children[1].digest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), idx.children[1].manifest);

    assert_eq!(
        upstream_count(&reg, "warm/app").await,
        before_a,
        "warm pull of warm/app reached the upstream: {:?}",
        reg.requests().await
    );
    assert_eq!(upstream_count(&reg, "warm/multi").await, before_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_ttl_zero_revalidates_with_head_never_get() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("ttl/app", "v1", 90).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).tag_ttl("0s")).await;
    let r = m.get_manifest("ttl/app", "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);

    let gets0 = reg.count_requests("GET", "/v2/ttl/app/manifests/").await;
    let heads0 = reg.count_requests("HEAD", "/v2/ttl/app/manifests/").await;
    for _ in 0..3 {
        let r = m.get_manifest("ttl/app", "v1").send().await.unwrap();
        assert_eq!(header(r.headers(), "docker-content-digest"), img.digest);
        assert_eq!(r.bytes().await.unwrap(), img.manifest);
    }
    let r = m
        .head("/v2/ttl/app/manifests/v1")
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let gets1 = reg.count_requests("GET", "/v2/ttl/app/manifests/").await;
    let heads1 = reg.count_requests("HEAD", "/v2/ttl/app/manifests/").await;
    assert_eq!(
        gets1, gets0,
        "a tag revalidation must never GET the manifest upstream"
    );
    assert!(
        heads1 - heads0 >= 4,
        "tag_ttl 0s: each of 4 tag requests HEADs the upstream (saw {})",
        heads1 - heads0
    );
    // Manifest by digest never goes upstream once cached.
    let before = upstream_count(&reg, "ttl/app").await;
    let r = m.get_manifest("ttl/app", &img.digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(upstream_count(&reg, "ttl/app").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_update_upstream_is_seen_with_ttl_zero() {
    let (reg, p) = setup().await;
    let old = p.push_oci_image("upd/app", "latest", 100).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).tag_ttl("0s")).await;
    let long = Mirror::start(MirrorOpts::upstream(&reg.url()).tag_ttl("1h")).await;
    pull_and_check_oci(&m.hostport(), &old, None).await;
    pull_and_check_oci(&long.hostport(), &old, None).await;

    let new = p.push_oci_image("upd/app", "latest", 101).await;
    assert_ne!(old.digest, new.digest);
    let r = m.get_manifest("upd/app", "latest").send().await.unwrap();
    assert_eq!(header(r.headers(), "docker-content-digest"), new.digest);
    assert_eq!(r.bytes().await.unwrap(), new.manifest);
    pull_and_check_oci(&m.hostport(), &new, None).await;
    // The old content is still there by digest.
    let r = m.get_manifest("upd/app", &old.digest).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), old.manifest);

    // With a 1h ttl the tag is not revalidated: the old digest is still served.
    let r = long.get_manifest("upd/app", "latest").send().await.unwrap();
    assert_eq!(header(r.headers(), "docker-content-digest"), old.digest);
}

// ---------------------------------------------------------------------------------------------
// Upstream auth
// ---------------------------------------------------------------------------------------------

async fn auth_registry() -> (Registry, Image, Index) {
    let reg = Registry::start(RegistryOpts {
        auth: Some(("puller".into(), "s3cret-pass".into())),
        ..Default::default()
    })
    .await;
    // The upstream really requires credentials.
    let r = client()
        .get(format!("{}/v2/", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let p = reg.pusher();
    let img = p.push_oci_image("priv/app", "v1", 110).await;
    let idx = p.push_index("priv/multi", "v1", 111).await;
    (reg, img, idx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream_with_password_file() {
    let (reg, img, idx) = auth_registry().await;
    let dir = tempfile::TempDir::new().unwrap();
    let pw = dir.path().join("upstream-password");
    std::fs::write(&pw, "s3cret-pass").unwrap();
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .up("username", "puller")
            .up("password_file", &q(&pw.display().to_string())),
    )
    .await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;

    // Without credentials the same mirror setup cannot fill.
    let anon = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let r = anon.get_manifest("priv/app", "v1").send().await.unwrap();
    assert_ne!(
        r.status().as_u16(),
        200,
        "anonymous mirror must not get private content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream_with_password_from_env() {
    let (reg, img, _idx) = auth_registry().await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .up("username", "puller")
            .env("OCIMIRROR_UPSTREAM__PASSWORD", "s3cret-pass"),
    )
    .await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    assert!(
        !m.log_text().contains("s3cret-pass"),
        "password leaked into the log"
    );
}

// ---------------------------------------------------------------------------------------------
// Offline, unreachable upstream, and on-disk compatibility
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_and_unreachable_upstream_serve_cache() {
    let (reg, p) = setup().await;
    let a = p.push_oci_image("off/a", "v1", 120).await;
    let idx = p.push_index("off/multi", "v1", 121).await;
    let b = p.push_oci_image("off/b", "v1", 122).await; // never pulled
    let mut m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull_and_check_oci(&m.hostport(), &a, None).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;
    let upstream_url = reg.url();
    drop(reg); // the upstream is gone for good

    // Offline mode, restarted on the same data dir while the upstream is down.
    m.restart(Some(MirrorOpts::upstream(&upstream_url).mode("offline")))
        .await;
    pull_and_check_oci(&m.hostport(), &a, None).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;
    let r = m.get_manifest("off/a", &a.digest).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), a.manifest);
    let r = m.get_manifest("off/b", "v1").send().await.unwrap();
    let st = r.status().as_u16();
    assert!(st == 404 || st == 503, "offline uncached manifest: {st}");
    expect_oci_error(r, st, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN", "UNAVAILABLE"]).await;
    let r = m
        .get_blob("off/b", &b.layers[0].digest)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    assert!(st == 404 || st == 503, "offline uncached blob: {st}");
    expect_oci_error(r, st, &["BLOB_UNKNOWN", "NAME_UNKNOWN", "UNAVAILABLE"]).await;

    // Online, upstream at a closed port, tag_ttl 0s: cached tag served stale.
    m.restart(Some(MirrorOpts::upstream(&closed_url()).tag_ttl("0s")))
        .await;
    pull_and_check_oci(&m.hostport(), &a, None).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;
    assert!(
        m.metric("ocimirror_stale_served_total", &[]).await >= 1.0,
        "stale tags were served"
    );
    let r = m.get_manifest("off/b", "v1").send().await.unwrap();
    expect_oci_error(r, 503, &["UNAVAILABLE"]).await;
    let r = m
        .get_blob("off/b", &b.layers[0].digest)
        .send()
        .await
        .unwrap();
    expect_oci_error(r, 503, &["UNAVAILABLE"]).await;
}

async fn distribution_written_cache() -> (Registry, Image, Image, Index) {
    let (mut reg, p) = setup().await;
    let img = p.push_oci_image("disk/oci", "v1", 130).await;
    let dimg = p.push_docker_image("disk/docker", "v1", 131).await;
    let idx = p.push_index("disk/multi", "v1", 132).await;
    reg.stop();
    (reg, img, dimg, idx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_distribution_written_storage_as_is() {
    let (reg, img, dimg, idx) = distribution_written_cache().await;
    let m = Mirror::start(
        MirrorOpts::upstream(&closed_url())
            .mode("offline")
            .storage_root(reg.root()),
    )
    .await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    pull_and_check_docker(&m.hostport(), &dimg, None).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;
    let r = m.get("/v2/disk/oci/tags/list").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_not_served_under_repository_without_link() {
    let (reg, img, dimg, _idx) = distribution_written_cache().await;
    let m = Mirror::start(
        MirrorOpts::upstream(&closed_url())
            .mode("offline")
            .storage_root(reg.root()),
    )
    .await;
    let layer = &img.layers[0].digest;
    assert!(blob_data_path(reg.root(), layer).exists());
    let r = m.get_blob("disk/oci", layer).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.blob(layer));

    // Same blob under a repository that does not reference it (existing and not).
    for name in ["disk/docker", "disk/nothere"] {
        let r = m.get_blob(name, layer).send().await.unwrap();
        expect_oci_error(r, 404, &["BLOB_UNKNOWN"]).await;
        let r = m
            .head(&format!("/v2/{name}/blobs/{layer}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "HEAD {name}");
        let r = m.get_manifest(name, &img.digest).send().await.unwrap();
        expect_oci_error(r, 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]).await;
    }
    let r = m
        .get_blob("disk/docker", &dimg.layers[0].digest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_under_other_repository_asks_upstream_online() {
    let (reg, p) = setup().await;
    let a = p.push_oci_image("lnk/a", "v1", 140).await;
    let _b = p.push_oci_image("lnk/b", "v1", 141).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull_and_check_oci(&m.hostport(), &a, None).await;
    let layer = &a.layers[1].digest;
    // Cached under lnk/a, but lnk/b does not reference it: the upstream decides (404 there).
    let r = m.get_blob("lnk/b", layer).send().await.unwrap();
    expect_oci_error(r, 404, &["BLOB_UNKNOWN"]).await;
    assert!(
        reg.count_requests("", &format!("/v2/lnk/b/blobs/{layer}"))
            .await
            >= 1,
        "the upstream must be asked"
    );
}

// ---------------------------------------------------------------------------------------------
// Input validation and push methods
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_digests_tags_are_400() {
    let (reg, _p) = setup().await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let hp = m.hostport();
    let long_name = format!("{}/{}", "a".repeat(128), "b".repeat(127)); // 256 chars
    let hex63 = "a".repeat(63);
    let hex_upper = "A".repeat(64);
    let long_tag = "t".repeat(129);
    let cases: Vec<(String, &[&str])> = vec![
        ("/v2/Upper/app/manifests/latest".into(), &["NAME_INVALID"]),
        ("/v2/a/../b/manifests/latest".into(), &["NAME_INVALID"]),
        ("/v2/../../etc/manifests/latest".into(), &["NAME_INVALID"]),
        ("/v2/a/%2e%2e/b/manifests/latest".into(), &["NAME_INVALID"]),
        ("/v2/a/%2E%2E/manifests/latest".into(), &["NAME_INVALID"]),
        ("/v2/a//b/manifests/latest".into(), &["NAME_INVALID"]),
        ("/v2/a_/manifests/latest".into(), &["NAME_INVALID"]),
        ("/v2/a%2Fb/manifests/latest".into(), &["NAME_INVALID"]),
        (
            format!("/v2/{long_name}/manifests/latest"),
            &["NAME_INVALID"],
        ),
        (
            "/v2/Upper/blobs/sha256:".to_string() + &"a".repeat(64),
            &["NAME_INVALID"],
        ),
        ("/v2/Upper/tags/list".into(), &["NAME_INVALID"]),
        ("/v2/a/blobs/sha256:xyz".into(), &["DIGEST_INVALID"]),
        (format!("/v2/a/blobs/sha256:{hex63}"), &["DIGEST_INVALID"]),
        (
            format!("/v2/a/blobs/sha256:{hex_upper}"),
            &["DIGEST_INVALID"],
        ),
        ("/v2/a/blobs/latest".into(), &["DIGEST_INVALID"]),
        ("/v2/a/manifests/sha256:xyz".into(), &["DIGEST_INVALID"]),
    ];
    // A reference that is neither a tag nor a digest names a manifest that cannot exist: 404, as
    // the distribution spec's conformance suite expects.
    let impossible = [
        "/v2/a/manifests/-bad".to_owned(),
        "/v2/a/manifests/.bad".into(),
        "/v2/a/manifests/bad%20tag".into(),
        format!("/v2/a/manifests/{long_tag}"),
    ];
    for path in &impossible {
        let r = raw_request(&hp, "GET", path).await;
        assert_eq!(r.status, 404, "GET {path}");
        assert_eq!(error_codes(&r.body), vec!["MANIFEST_UNKNOWN"], "GET {path}");
        assert_eq!(
            raw_request(&hp, "HEAD", path).await.status,
            404,
            "HEAD {path}"
        );
    }
    for (path, codes) in &cases {
        let r = raw_request(&hp, "GET", path).await;
        assert_eq!(
            r.status,
            400,
            "GET {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.header("content-type").unwrap_or("").contains("json"),
            "GET {path}: error is JSON"
        );
        let found = error_codes(&r.body);
        assert!(
            found.iter().any(|c| codes.contains(&c.as_str())),
            "GET {path}: expected {codes:?}, got {found:?}"
        );
        let r = raw_request(&hp, "HEAD", path).await;
        assert_eq!(r.status, 400, "HEAD {path}");
    }
    // None of that reached the upstream.
    let reached: Vec<_> = reg
        .requests()
        .await
        .into_iter()
        .filter(|(_, u)| u != "/v2/")
        .collect();
    assert!(
        reached.is_empty(),
        "invalid requests reached the upstream: {reached:?}"
    );

    // Boundaries that are valid: 255-char name, 128-char tag, every separator kind.
    let name255 = format!("{}/{}", "a".repeat(128), "b".repeat(126));
    assert_eq!(name255.len(), 255);
    let valid = [
        format!("/v2/{name255}/manifests/latest"),
        format!("/v2/a/manifests/{}", "t".repeat(128)),
        "/v2/x.y/a__b/c-d--e/manifests/_under.score-Tag".to_string(),
    ];
    for path in valid {
        let r = raw_request(&hp, "GET", &path).await;
        assert_ne!(r.status, 400, "GET {path} is valid");
        assert_eq!(r.status, 404, "GET {path}: unknown upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_methods_are_unsupported_405() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("ro/app", "v1", 150).await;
    let seeded = reg.requests().await.len();
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let c = client();
    let layer = &img.layers[0].digest;
    let cases = [
        ("PUT", "/v2/ro/app/manifests/v2".to_string()),
        ("PUT", format!("/v2/ro/app/manifests/{}", img.digest)),
        ("DELETE", format!("/v2/ro/app/manifests/{}", img.digest)),
        ("DELETE", format!("/v2/ro/app/blobs/{layer}")),
        ("POST", "/v2/ro/app/blobs/uploads/".to_string()),
        (
            "POST",
            format!("/v2/ro/app/blobs/uploads/?mount={layer}&from=other"),
        ),
        (
            "PATCH",
            "/v2/ro/app/blobs/uploads/0b5f2a3c-1111-2222-3333-444455556666".to_string(),
        ),
        (
            "PUT",
            format!("/v2/ro/app/blobs/uploads/0b5f2a3c-1111-2222-3333-444455556666?digest={layer}"),
        ),
    ];
    for (method, path) in &cases {
        let r = c
            .request(method.parse().unwrap(), format!("{}{}", m.url(), path))
            .header("content-type", OCI_MANIFEST)
            .body(img.manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(r.headers(), "docker-distribution-api-version"),
            "registry/2.0"
        );
        expect_oci_error(r, 405, &["UNSUPPORTED"]).await;
    }
    let after = reg.requests().await;
    assert_eq!(
        after[seeded..]
            .iter()
            .filter(|(m, _)| m != "GET" && m != "HEAD")
            .collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "push methods reached the upstream"
    );
    // And the content is untouched.
    let r = m.get_manifest("ro/app", "v1").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
}

// ---------------------------------------------------------------------------------------------
// Read-only storage, graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_storage_writes_nothing() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("rdo/app", "v1", 160).await;
    let idx = p.push_index("rdo/multi", "v1", 161).await;
    let root_dir = tempfile::TempDir::new().unwrap();
    let root = root_dir.path().join("storage");
    std::fs::create_dir_all(&root).unwrap();
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .storage_root(&root)
            .read_only(),
    )
    .await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let r = m
        .get_blob("rdo/app", &img.layers[2].digest)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 200 | 206));
    let files = files_under(&root);
    assert!(files.is_empty(), "read_only storage was written: {files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_restart_keeps_cache() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("term/app", "v1", 170).await;
    let mut m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let status = m.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM: graceful exit 0, got {status}"
    );
    for d in img.all_blobs() {
        assert!(
            blob_data_path(&m.storage_root(), &d.digest).exists(),
            "blob {} stored in Distribution layout",
            d.digest
        );
    }
    let hex = hex_of(&img.digest);
    let repo = m
        .storage_root()
        .join("docker/registry/v2/repositories/term/app");
    assert!(
        repo.join(format!("_manifests/revisions/sha256/{hex}/link"))
            .exists()
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("_manifests/tags/v1/current/link"))
            .unwrap()
            .trim(),
        img.digest
    );
    assert!(
        repo.join(format!("_manifests/tags/v1/index/sha256/{hex}/link"))
            .exists()
    );
    for d in &img.layers {
        assert!(
            repo.join(format!("_layers/sha256/{}/link", hex_of(&d.digest)))
                .exists()
        );
    }
    let before = upstream_count(&reg, "term/app").await;
    m.restart(None).await;
    let r = m
        .get_manifest("term/app", &img.digest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    for d in img.all_blobs() {
        let r = m.get_blob("term/app", &d.digest).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), img.blob(&d.digest));
    }
    assert_eq!(upstream_count(&reg, "term/app").await, before);
}

// ---------------------------------------------------------------------------------------------
// Big blob: one upstream fetch for many concurrent cold clients; disconnects do not cancel.
// ---------------------------------------------------------------------------------------------

fn big_size(default_mib: u64) -> u64 {
    std::env::var("OCIMIRROR_TEST_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_mib)
        << 20
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_blob_concurrent_cold_gets_one_upstream_fetch() {
    let size = big_size(256);
    let (reg, p) = setup().await;
    let (img, big) = p.push_big_image("big/blob", "v1", size, 7).await;
    let digest = img.layers[0].digest.clone();
    assert_eq!(digest, big.digest());
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;

    let mut tasks = Vec::new();
    for i in 0..16 {
        let req = m.get_blob("big/blob", &digest);
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "client {i}");
            if let Some(cl) = r.headers().get("content-length") {
                assert_eq!(cl.to_str().unwrap(), size.to_string());
            }
            stream_hash(r).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let res = t.await.unwrap();
        assert_eq!(
            res,
            Ok((size, digest.clone())),
            "client {i} got wrong bytes"
        );
    }
    assert_eq!(
        reg.count_requests("GET", &format!("/blobs/{digest}")).await,
        1,
        "16 concurrent cold GETs must cause exactly one upstream GET"
    );
    let data = blob_data_path(&m.storage_root(), &digest);
    assert_eq!(std::fs::metadata(&data).unwrap().len(), size);
    assert_eq!(
        m.metric("ocimirror_upstream_requests_total", &["op=\"blob_get\""])
            .await,
        1.0,
        "metrics: one upstream blob GET"
    );
    assert_eq!(m.metric("ocimirror_fills_started_total", &[]).await, 1.0);
    let r = m.get_blob("big/blob", &digest).send().await.unwrap();
    assert_eq!(stream_hash(r).await, Ok((size, digest.clone())));
    assert_eq!(
        reg.count_requests("GET", &format!("/blobs/{digest}")).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_dropping_mid_blob_still_commits() {
    let size = big_size(64);
    let (reg, p) = setup().await;
    let (img, big) = p.push_big_image("half/blob", "v1", size, 8).await;
    let digest = img.layers[0].digest.clone();
    // Fills nobody reads are finished for the cache, as Distribution does (by default they
    // are abandoned after 10 s, which a slow machine might reach here).
    let m =
        Mirror::start(MirrorOpts::upstream(&reg.url()).up("abandon_fills_after", "never")).await;

    let r = m.get_blob("half/blob", &digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut s = r.bytes_stream();
    let mut n = 0u64;
    let mut off = 0u64;
    while n < size / 2 {
        let b = s.next().await.expect("body ended early").unwrap();
        // Spot-check the bytes against the generator, chunk by chunk.
        let chunk = big.chunk(off / BigBlob::CHUNK);
        let in_chunk = (off % BigBlob::CHUNK) as usize;
        let k = b.len().min(chunk.len() - in_chunk);
        assert_eq!(&b[..k], &chunk[in_chunk..in_chunk + k]);
        n += b.len() as u64;
        off += b.len() as u64;
    }
    drop(s);

    // The fill goes on and commits.
    let data = blob_data_path(&m.storage_root(), &digest);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !data.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "blob never committed after the client went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = m.get_blob("half/blob", &digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(stream_hash(r).await, Ok((size, digest.clone())));
    assert_eq!(
        reg.count_requests("GET", &format!("/blobs/{digest}")).await,
        1,
        "the later GET must be served from the committed blob"
    );
}

// ---------------------------------------------------------------------------------------------
// Offline never dials; CLI flags; config check; library/ prefix
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mode_never_contacts_a_live_upstream() {
    let (reg, p) = setup().await;
    let a = p.push_oci_image("offl/a", "v1", 180).await;
    let b = p.push_oci_image("offl/b", "v1", 181).await;
    let mut m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    pull_and_check_oci(&m.hostport(), &a, None).await;

    for opts in [
        MirrorOpts::upstream(&reg.url()).mode("offline"),
        MirrorOpts::upstream(&reg.url()).env("OCIMIRROR_MODE", "offline"),
    ] {
        m.restart(Some(opts.tag_ttl("0s"))).await;
        let before = reg.requests().await.len();
        pull_and_check_oci(&m.hostport(), &a, None).await;
        let r = m.get_manifest("offl/b", "v1").send().await.unwrap();
        let st = r.status().as_u16();
        assert!(st == 404 || st == 503, "offline uncached manifest: {st}");
        let r = m
            .get_blob("offl/b", &b.layers[0].digest)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        assert!(st == 404 || st == 503, "offline uncached blob: {st}");
        let r = m.get("/v2/offl/b/tags/list").send().await.unwrap();
        assert_ne!(
            r.status().as_u16(),
            200,
            "offline tags/list of an uncached repo"
        );
        let after = reg.requests().await;
        assert_eq!(
            &after[before..],
            &[] as &[(String, String)],
            "offline mode contacted the upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_flags_without_config_file() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("cli/app", "v1", 190).await;
    let other = p.push_oci_image("cli/other", "v1", 191).await;
    let url = reg.url();
    let mut m = Mirror::start(MirrorOpts::cli(&["--upstream", &url, "--tag-ttl", "0s"])).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    for d in img.all_blobs() {
        assert!(
            blob_data_path(&m.data_dir().join("storage"), &d.digest).exists(),
            "storage defaults to <data-dir>/storage"
        );
    }
    let heads = reg.count_requests("HEAD", "/v2/cli/app/manifests/v1").await;
    let r = m.get_manifest("cli/app", "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        reg.count_requests("HEAD", "/v2/cli/app/manifests/v1").await > heads,
        "--tag-ttl 0s revalidates"
    );

    m.restart(Some(MirrorOpts::cli(&["--upstream", &url, "--offline"])))
        .await;
    let before = reg.requests().await.len();
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let r = m.get_manifest("cli/other", "v1").send().await.unwrap();
    assert_ne!(
        r.status().as_u16(),
        200,
        "--offline: uncached is not fetched"
    );
    assert_eq!(
        reg.requests().await.len(),
        before,
        "--offline contacted the upstream"
    );

    m.restart(Some(MirrorOpts::cli(&["--upstream", &url, "--read-only"])))
        .await;
    pull_and_check_oci(&m.hostport(), &other, None).await;
    assert!(
        !blob_data_path(&m.data_dir().join("storage"), &other.layers[0].digest).exists(),
        "--read-only wrote a blob"
    );
}

#[test]
fn config_check_accepts_valid_and_reports_problems() {
    let dir = tempfile::TempDir::new().unwrap();
    let run = |yaml: &str| {
        let f = dir.path().join("c.yml");
        std::fs::write(&f, yaml).unwrap();
        let out = std::process::Command::new(common::ocimirror_bin())
            .args(["config", "check"])
            .arg(&f)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(
        "listen: \"127.0.0.1:5000\"\nmode: offline\nupstream:\n  url: \"http://127.0.0.1:9\"\n  tag_ttl: 0s\n",
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok"), "{text}");

    // Two problems on lines 3 and 5: both reported, with their line numbers.
    let (code, text) =
        run("listen: \"127.0.0.1:5000\"\nupstream:\n  bogus_key: 1\nstorage:\n  backend: nosuch\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("bogus_key"), "{text}");
    assert!(text.contains('3'), "line number of the unknown key: {text}");
    assert!(
        text.contains("nosuch") || text.contains("backend"),
        "{text}"
    );
    assert!(text.contains('5'), "line number of the bad backend: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_prefix_true_maps_single_component_names() {
    let (reg, p) = setup().await;
    let img = p.push_oci_image("library/alpine", "v1", 200).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).up("library_prefix", "true")).await;
    let mut short = img.clone();
    short.name = "alpine".into();
    pull_and_check_oci(&m.hostport(), &short, None).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let reqs = reg.requests().await;
    assert!(
        reqs.iter().all(|(_, u)| !u.starts_with("/v2/alpine/")),
        "the upstream must only see library/alpine: {reqs:?}"
    );
    for d in img.all_blobs() {
        assert!(
            reg.count_requests("GET", &format!("/blobs/{}", d.digest))
                .await
                <= 1,
            "alpine and library/alpine are one repository: blob fetched twice"
        );
    }
    // Without the prefix, `alpine` is its own (unknown) repository upstream.
    let plain = Mirror::start(MirrorOpts::upstream(&reg.url()).up("library_prefix", "false")).await;
    let r = plain.get_manifest("alpine", "v1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
