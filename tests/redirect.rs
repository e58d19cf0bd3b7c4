//! `storage.redirect`: a stored blob's GET is answered `307` to a presigned URL of the object,
//! and the client reads the bytes from the store. Real parts: Distribution as the upstream,
//! SeaweedFS (S3), fake-gcs-server (Google Cloud Storage) and Azurite (Azure Blob Storage) as
//! the stores, skopeo and containerd as the clients.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

const REDIRECTS: &str = "ocimirror_blob_redirects_total";

/// The `307` for a blob GET, and its `Location`.
async fn location(m: &Mirror, name: &str, digest: &str) -> String {
    let r = m.get_blob(name, digest).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 307, "{}", m.log_text());
    assert_eq!(header(r.headers(), "docker-content-digest"), digest);
    assert_eq!(header(r.headers(), "cache-control"), "no-store");
    header(r.headers(), "location").to_owned()
}

/// GET `url` with a plain client: (status, body).
async fn fetch(url: &str) -> (u16, Bytes) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}

/// Without the redirect: the bytes come from the mirror.
async fn served(m: &Mirror, req: reqwest::RequestBuilder, status: u16) -> Bytes {
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "{}", m.log_text());
    assert!(r.headers().get("location").is_none());
    r.bytes().await.unwrap()
}

/// A mirror of `reg` on `storage` (the lines under `storage:`), redirecting with URLs valid for
/// `expiry`, but for clients in `except`.
fn redirecting(reg: &Registry, storage: &str, expiry: &str, except: &[&str]) -> MirrorOpts {
    let except: Vec<String> = except.iter().map(|e| q(e)).collect();
    MirrorOpts::upstream(&reg.url())
        .tag_ttl("1h")
        .storage_yaml(&format!(
            "{storage}  redirect:\n    enabled: true\n    expiry: {expiry}\n    except: [{}]\n",
            except.join(", ")
        ))
}

/// `ctr images pull` of `img` from `reg` through the mirror `m` (containerd's `hosts.toml`
/// recipe, the registry itself unreachable), by a containerd of its own.
fn containerd_pull(m: &Mirror, reg: &Registry, img: &Image) {
    let dir = tempfile::tempdir().unwrap();
    let ctrd = Containerd::start(dir.path());
    let hosts_dir = dir.path().join("certs.d");
    mirror_hosts_toml(&hosts_dir, &reg.hostport(), &m.url(), "");
    let name = format!("{}/{}:{}", reg.hostport(), img.name, img.tag);
    run(&mut ctrd.pull(&hosts_dir, &name));
    let list = run(&mut ctrd.ctr(&["images", "ls"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with(&name) && l.contains(&img.digest)),
        "{list}"
    );
}

on_backends!(skopeo_and_containerd_pull_through_a_redirecting_mirror: seaweedfs, fake_gcs, azurite);

/// A mirror redirecting to its store: a cold skopeo pull is served by the mirror; a warm one
/// and a containerd pull have every blob sent to the store, and the upstream is not asked
/// again. The `Location` is at the store, never carries the store's secret, and reads the blob
/// with no credentials; where the store checks signatures (not fake-gcs-server, whose URLs are
/// unsigned: the mirror holds no credential for it), the URL reads that blob alone and stops
/// reading once expired.
async fn skopeo_and_containerd_pull_through_a_redirecting_mirror(backend: Backend) {
    if !containerd_runs() {
        return;
    }
    let Some(store) = Store::start(backend).await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg
        .pusher()
        .push_image("redir/app", "v1", &runnable_image(1503))
        .await;
    let storage = store.storage_yaml("/redirect");
    let m = Mirror::start(redirecting(&reg, &storage, "20m", &[])).await;
    let blobs = img.all_blobs().len() as f64;

    // Cold: every blob is a miss, streamed through the mirror.
    pull_and_check_oci(&m.hostport(), &img, None).await;
    assert_eq!(m.metric(REDIRECTS, &[]).await, 0.0);
    let upstream_gets = reg.count_requests("GET", "/blobs/").await;
    // Warm: every blob is sent to the store, for skopeo and for containerd.
    pull_and_check_oci(&m.hostport(), &img, None).await;
    assert_eq!(m.metric(REDIRECTS, &[]).await, blobs);
    containerd_pull(&m, &reg, &img);
    assert_eq!(m.metric(REDIRECTS, &[]).await, 2.0 * blobs);
    assert_eq!(reg.count_requests("GET", "/blobs/").await, upstream_gets);

    let layer = &img.layers[0];
    let url = location(&m, &img.name, &layer.digest).await;
    assert!(url.starts_with(store.endpoint()), "{url}");
    assert!(url.contains(&blob_key(&layer.digest)), "{url}");
    if let Some(secret) = store.secret() {
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        assert!(!url.contains(secret) && !url.contains(&encoded), "{url}");
    }
    assert_eq!(fetch(&url).await, (200, img.blob(&layer.digest).clone()));
    if !store.checks_signatures() {
        assert!(!url.contains('?'), "an unsigned URL: {url}");
        return;
    }
    // The signature is for that blob alone: the config's key in its place is refused.
    let config = url.replace(&blob_key(&layer.digest), &blob_key(&img.config.digest));
    assert_eq!(fetch(&config).await.0, 403, "{config}");
    // A short expiry: the URL reads the blob, then the store refuses it. (Valid for one second
    // from a whole second on: a URL the loaded machine did not use in time is asked again.)
    let short = Mirror::start(redirecting(&reg, &storage, "1s", &[])).await;
    let mut tries = 0;
    let url = loop {
        let url = location(&short, &img.name, &layer.digest).await;
        let status = fetch(&url).await.0;
        if status == 200 {
            break url;
        }
        tries += 1;
        assert!(tries < 10, "no 1s URL read the blob; the last: {status}");
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fetch(&url).await.0, 403, "an expired URL still reads");
}

/// A GCS redirect with a service account key (`gcs.credential_file`) is a V4 signed URL of the
/// object at the configured endpoint, naming the account and carrying a signature, never the
/// key. The storage layer is asked for the URL directly: a mirror holding a key cannot run
/// against fake-gcs-server, as its storage requests trade the key for a token at Google's OAuth
/// endpoint. fake-gcs-server checks neither signatures nor expiry, so that the URL reads the
/// object there says only that it names the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_signed_urls_name_the_object_and_never_the_key() {
    use ocimirror::storage::{GcsConfig, ObjectStorage, Storage};
    let Some(gcs) = FakeGcs::start().await else {
        return;
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let pem = key.serialize_pem();
    let account = "mirror@ocimirror-test.iam.gserviceaccount.com";
    let dir = tempfile::tempdir().unwrap();
    let credential_file = dir.path().join("gcs.json");
    std::fs::write(
        &credential_file,
        serde_json::json!({
            "type": "service_account",
            "project_id": "ocimirror-test",
            "client_email": account,
            "private_key": pem,
        })
        .to_string(),
    )
    .unwrap();
    let store = ObjectStorage::gcs(&GcsConfig {
        bucket: S3_BUCKET.into(),
        root: "/signed".into(),
        endpoint: Some(gcs.endpoint.clone()),
        credential_file: Some(credential_file),
    })
    .unwrap();
    let data = Bytes::from(pseudo_random_bytes(1504, 4096));
    let object = blob_key(&sha256_digest(&data));
    gcs.operator("/signed")
        .write(&object, data.clone())
        .await
        .unwrap();

    let url = store
        .presign_read(&object, Duration::from_secs(1200))
        .await
        .unwrap()
        .expect("a GCS store with a key signs");
    assert!(
        url.starts_with(&format!("{}/{S3_BUCKET}/signed/{object}?", gcs.endpoint)),
        "{url}"
    );
    let query: Vec<(String, String)> = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let param = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k} in {url}"))
    };
    assert_eq!(param("X-Goog-Algorithm"), "GOOG4-RSA-SHA256");
    assert!(param("X-Goog-Credential").starts_with(&format!("{account}/")));
    assert_eq!(param("X-Goog-Expires"), "1200");
    assert!(!param("X-Goog-Signature").is_empty());
    // No part of the key: none of the PEM's lines, raw or encoded.
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        let encoded: String = url::form_urlencoded::byte_serialize(line.as_bytes()).collect();
        assert!(!url.contains(line) && !url.contains(&encoded), "{url}");
    }
    assert_eq!(fetch(&url).await, (200, data));
}

/// What a redirect changes and what it leaves to the mirror, on SeaweedFS: HEAD, a Range and
/// the opt-out header go through the mirror; a miss is served by the mirror, then redirected
/// once stored; a blob not confirmed under a repository is refused there; a redirected pull is
/// recorded for expiry; clients in `except` are served by the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_leaves_heads_ranges_misses_and_excepted_clients_to_the_mirror() {
    let Some(weed) = Weed::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("redir/app", "v1", 1501).await;
    let storage = weed.storage_yaml("/redirect");
    let expiry = "expiry:\n  max_age: 30d\n  interval: 0s\n  min_idle: 1s\n";
    // Loopback is outside `except`: redirected. Pulls are recorded for expiry.
    let m = Mirror::start(redirecting(&reg, &storage, "20m", &["10.0.0.0/8"]).extra(expiry)).await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let layer = &img.layers[0];
    location(&m, &img.name, &layer.digest).await;

    // HEAD, a Range and the opt-out header go through the mirror.
    let path = format!("/v2/{}/blobs/{}", img.name, layer.digest);
    let r = m.head(&path).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(r.headers(), "content-length"),
        layer.size.to_string()
    );
    let part = served(&m, m.get(&path).header("range", "bytes=0-9"), 206).await;
    assert_eq!(part, img.blob(&layer.digest).slice(0..10));
    let whole = served(&m, m.get(&path).header("ocimirror-no-redirect", "1"), 200).await;
    assert_eq!(&whole, img.blob(&layer.digest));

    // A miss is fetched and served by the mirror; stored, the next GET is redirected.
    let data = Bytes::from(pseudo_random_bytes(1502, 4096));
    let digest = reg.pusher().push_blob(&img.name, data.clone()).await;
    assert_eq!(served(&m, m.get_blob(&img.name, &digest), 200).await, data);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = m.get_blob(&img.name, &digest).send().await.unwrap();
        if r.status().as_u16() == 307 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the filled blob is never redirected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A blob stored but never confirmed under another repository is refused there, redirect
    // or not: the redirect only changes how the bytes of an answer travel.
    let r = m
        .get_blob("redir/other", &layer.digest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // A redirected pull is recorded for expiry: the record, removed here, is written again by a
    // replica that redirects a GET of it.
    let s3 = s3_operator(&weed.endpoint, "/redirect");
    let record = format!("ocimirror/access/sha256/{}", hex_of(&layer.digest));
    s3.stat(&record).await.expect("the cold pull's record");
    s3.delete(&record).await.unwrap();
    let other = Mirror::start(redirecting(&reg, &storage, "20m", &[]).extra(expiry)).await;
    location(&other, &img.name, &layer.digest).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3.stat(&record).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no access record after a redirect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Loopback in `except`: served by the mirror, and skopeo pulls all the same.
    let excepted = Mirror::start(redirecting(
        &reg,
        &storage,
        "20m",
        &["10.0.0.0/8", "127.0.0.1/32"],
    ))
    .await;
    let whole = served(&excepted, excepted.get(&path), 200).await;
    assert_eq!(&whole, img.blob(&layer.digest));
    pull_and_check_oci(&excepted.hostport(), &img, None).await;
    assert_eq!(excepted.metric(REDIRECTS, &[]).await, 0.0);
}

/// The config check refuses a redirect the backend cannot do, saying why.
#[test]
fn config_check_refuses_redirect_on_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yml");
    std::fs::write(
        &file,
        "storage:\n  backend: filesystem\n  redirect:\n    enabled: true\n    except: [nonsense]\n",
    )
    .unwrap();
    let (ok, out) = config_check(&file);
    assert!(!ok, "{out}");
    assert!(
        out.contains("storage.redirect.enabled") && out.contains("filesystem backend"),
        "{out}"
    );
    assert!(out.contains("storage.redirect.except.0"), "{out}");
}

/// `examples/gcs.yaml` and `examples/azure.yaml` pass `config check` once the secret files they
/// name exist (here: made for the test, the paths rewritten to them).
#[test]
fn cloud_examples_pass_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("gcs-credentials.json"), "{}\n").unwrap();
    std::fs::write(
        secrets.join("azure-account-key"),
        format!("{AZURITE_KEY}\n"),
    )
    .unwrap();
    for name in ["gcs.yaml", "azure.yaml"] {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let text = std::fs::read_to_string(&example).unwrap();
        assert!(text.contains("redirect:"), "{name} shows storage.redirect");
        let text = text
            .replace("/run/secrets/ocimirror", &secrets.display().to_string())
            .replace(
                "/var/lib/ocimirror",
                &dir.path().join("data").display().to_string(),
            );
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let (ok, out) = config_check(&file);
        assert!(ok, "{name}: {out}");
    }
}
