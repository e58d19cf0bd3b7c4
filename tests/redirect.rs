//! `storage.redirect`: a stored blob's GET is answered `307` to a presigned URL of the object,
//! and the client reads the bytes from the store. Real parts: Distribution as the upstream,
//! SeaweedFS (S3) and Azurite (Azure Blob Storage) as the stores, skopeo as the client.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

const REDIRECTS: &str = "ocimirror_blob_redirects_total";

fn redirect_yaml(expiry: &str, except: &[&str]) -> String {
    let except: Vec<String> = except.iter().map(|e| q(e)).collect();
    format!(
        "  redirect:\n    enabled: true\n    expiry: {expiry}\n    except: [{}]\n",
        except.join(", ")
    )
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_a_redirecting_mirror_on_seaweedfs() {
    let Some(weed) = Weed::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("redir/app", "v1", 1501).await;
    let storage = weed.storage_yaml("/redirect");
    // Loopback is outside `except`: redirected. Pulls are recorded for expiry.
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_yaml(&(storage.clone() + &redirect_yaml("20m", &["10.0.0.0/8"])))
            .extra("expiry:\n  max_age: 30d\n  interval: 0s\n  min_idle: 1s\n"),
    )
    .await;

    // Cold: every blob is a miss, streamed through the mirror.
    pull_and_check_oci(&m.hostport(), &img, None).await;
    assert_eq!(m.metric(REDIRECTS, &[]).await, 0.0);
    let upstream_gets = reg.count_requests("GET", "/blobs/").await;

    // Warm: every blob is sent to the store, and the upstream is not asked again.
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let blobs = img.all_blobs();
    assert_eq!(m.metric(REDIRECTS, &[]).await, blobs.len() as f64);
    assert_eq!(reg.count_requests("GET", "/blobs/").await, upstream_gets);

    // The Location is a signature, never the secret; it reads the blob with no credentials.
    let layer = &img.layers[0];
    let url = location(&m, &img.name, &layer.digest).await;
    assert!(url.starts_with(&weed.endpoint), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let encoded: String = url::form_urlencoded::byte_serialize(S3_SECRET_KEY.as_bytes()).collect();
    assert!(
        !url.contains(S3_SECRET_KEY) && !url.contains(&encoded),
        "{url}"
    );
    assert_eq!(fetch(&url).await, (200, img.blob(&layer.digest).clone()));

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
    let other = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_yaml(&(storage.clone() + &redirect_yaml("20m", &[])))
            .extra("expiry:\n  max_age: 30d\n  interval: 0s\n  min_idle: 1s\n"),
    )
    .await;
    location(&other, &img.name, &layer.digest).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3.stat(&record).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no access record after a redirect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A short expiry: the URL reads the blob, then the store refuses it.
    let short = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_yaml(&(storage.clone() + &redirect_yaml("1s", &[]))),
    )
    .await;
    let url = location(&short, &img.name, &layer.digest).await;
    assert_eq!(fetch(&url).await.0, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fetch(&url).await.0, 403, "an expired URL still reads");

    // Loopback in `except`: served by the mirror, and skopeo pulls all the same.
    let excepted = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_yaml(&(storage + &redirect_yaml("20m", &["10.0.0.0/8", "127.0.0.1/32"]))),
    )
    .await;
    let whole = served(&excepted, excepted.get(&path), 200).await;
    assert_eq!(&whole, img.blob(&layer.digest));
    pull_and_check_oci(&excepted.hostport(), &img, None).await;
    assert_eq!(excepted.metric(REDIRECTS, &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_a_redirecting_mirror_on_azurite() {
    let Some(az) = Azurite::start().await else {
        return;
    };
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("redir/az", "v1", 1503).await;
    let m = Mirror::start(
        MirrorOpts::upstream(&reg.url())
            .tag_ttl("1h")
            .storage_yaml(&(az.storage_yaml("/redirect") + &redirect_yaml("20m", &[]))),
    )
    .await;
    pull_and_check_oci(&m.hostport(), &img, None).await;
    assert_eq!(m.metric(REDIRECTS, &[]).await, 0.0);
    pull_and_check_oci(&m.hostport(), &img, None).await;
    assert_eq!(m.metric(REDIRECTS, &[]).await, img.all_blobs().len() as f64);

    // A read-only SAS for the one blob: a signature, never the account key.
    let layer = &img.layers[0];
    let url = location(&m, &img.name, &layer.digest).await;
    assert!(url.starts_with(&az.endpoint), "{url}");
    assert!(url.contains("sig=") && url.contains("sp=r"), "{url}");
    let encoded: String = url::form_urlencoded::byte_serialize(AZURITE_KEY.as_bytes()).collect();
    assert!(
        !url.contains(AZURITE_KEY) && !url.contains(&encoded),
        "{url}"
    );
    assert_eq!(fetch(&url).await, (200, img.blob(&layer.digest).clone()));
    // The signature is for that blob alone.
    let config = url.replace(hex_of(&layer.digest), hex_of(&img.config.digest));
    assert_eq!(fetch(&config).await.0, 403);
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
