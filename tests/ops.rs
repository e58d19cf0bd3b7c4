//! The operator commands against real parts: `ocimirror warm` through a running mirror and
//! straight into storage (a real Distribution registry as upstream; the warmed content is then
//! pulled with zero upstream requests, or by an offline mirror), a missing image failing the
//! command, and `ls` / `inspect` reporting what was warmed.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// Run the binary; (success, stdout, stderr).
async fn ocimirror(args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(common::ocimirror_bin());
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("OCIMIRROR_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().await.expect("run ocimirror");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the binary, expect success, parse its JSON output.
async fn ocimirror_json(args: &[&str]) -> Value {
    let (ok, out, err) = ocimirror(args).await;
    assert!(ok, "ocimirror {args:?} failed:\n{err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A config for in-process runs: storage under `dir`, `reg` as upstream.
fn write_config(dir: &Path, upstream: &str, extra: &str) -> PathBuf {
    let cfg = dir.join("ocimirror.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: {}\nstorage:\n  backend: filesystem\n  filesystem:\n    root: {}\nupstream:\n  url: {}\n  tag_ttl: 1h\n{extra}",
            q(&dir.join("data").display().to_string()),
            q(&dir.join("storage").display().to_string()),
            q(upstream),
        ),
    )
    .unwrap();
    cfg
}

/// Pull an image's manifest (by `reference`) and every blob over HTTP, checking the bytes.
async fn pull_http(m: &Mirror, name: &str, reference: &str, img: &Image) {
    let r = m
        .get_manifest(name, reference)
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for d in img.all_blobs() {
        let r = m.get_blob(name, &d.digest).send().await.unwrap();
        assert_eq!(r.status(), 200, "blob {}", d.digest);
        let body = r.bytes().await.unwrap();
        assert_eq!(sha256_digest(&body), d.digest);
    }
}

async fn wait_for_files(root: &Path, digests: &[String]) {
    for _ in 0..600 {
        if digests.iter().all(|d| blob_data_path(root, d).is_file()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("blobs were never committed under {}", root.display());
}

fn image_bytes(img: &Image) -> u64 {
    img.manifest.len() as u64 + img.all_blobs().iter().map(|d| d.size).sum::<u64>()
}

fn blob_sizes(img: &Image) -> u64 {
    img.all_blobs().iter().map(|d| d.size).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_through_a_mirror_then_a_pull_needs_no_upstream() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("team/app", "v1", 4101).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).tag_ttl("1h")).await;

    let report = ocimirror_json(&["warm", "--mirror", &m.url(), "team/app:v1", "--json"]).await;
    let r = &report[0];
    assert_eq!(r["image"], "team/app:v1");
    assert_eq!(r["digest"], img.digest.as_str());
    assert_eq!(r["error"], Value::Null);
    assert_eq!(r["platforms"], serde_json::json!(["linux/amd64"]));
    assert_eq!(r["blobs"], 4);
    assert_eq!(r["blobs_fetched"], 4, "{r}");
    assert_eq!(r["blobs_cached"], 0);
    assert_eq!(r["bytes"], blob_sizes(&img));
    assert_eq!(r["bytes_fetched"], blob_sizes(&img));
    for d in img.all_blobs() {
        assert_eq!(
            reg.count_requests("GET", &format!("/blobs/{}", d.digest))
                .await,
            1
        );
    }

    // Every blob was read to the end, so the mirror committed it: a pull is answered from cache.
    let digests: Vec<String> = img.all_blobs().into_iter().map(|d| d.digest).collect();
    wait_for_files(&m.storage_root(), &digests).await;
    let before = reg.requests().await.len();
    pull_http(&m, "team/app", "v1", &img).await;
    let mut pulled = img.clone();
    pulled.name = "team/app".into();
    pull_and_check_oci(&m.hostport(), &pulled, None).await;
    assert_eq!(
        reg.requests().await.len(),
        before,
        "the pull after warm reached the upstream"
    );

    // Warming again finds everything cached (text report).
    let (ok, out, err) = ocimirror(&["warm", "--mirror", &m.url(), "team/app:v1"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&img.digest), "{out}");
    assert!(out.contains("0 fetched, 4 already cached"), "{out}");
    // Not a terminal: plain lines, one per blob.
    for d in &digests {
        assert!(err.contains(&format!("blob {d}")), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_one_platform_of_an_index_through_a_mirror() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let idx = reg.pusher().push_index("team/multi", "v1", 4102).await;
    let (amd64, arm64) = (&idx.children[0], &idx.children[1]);
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).tag_ttl("1h")).await;

    let report = ocimirror_json(&[
        "warm",
        "--mirror",
        &m.url(),
        "--platform",
        "linux/arm64",
        "team/multi:v1",
        "--json",
    ])
    .await;
    let r = &report[0];
    assert_eq!(r["digest"], idx.digest.as_str());
    assert_eq!(r["platforms"], serde_json::json!(["linux/arm64"]));
    assert_eq!(r["manifests"], 2);
    assert_eq!(r["blobs"], arm64.all_blobs().len());
    assert_eq!(r["bytes"], blob_sizes(arm64));

    // Only arm64's manifest and blobs were fetched upstream.
    for d in arm64.all_blobs() {
        assert_eq!(
            reg.count_requests("GET", &format!("/blobs/{}", d.digest))
                .await,
            1,
            "arm64 blob {}",
            d.digest
        );
    }
    let reads = |path: String| {
        let reg = &reg;
        async move { reg.count_requests("GET", &path).await + reg.count_requests("HEAD", &path).await }
    };
    for d in amd64.all_blobs() {
        let n = reads(format!("/blobs/{}", d.digest)).await;
        assert_eq!(n, 0, "amd64 blob {}", d.digest);
    }
    assert_eq!(reads(format!("/manifests/{}", amd64.digest)).await, 0);

    // Pulling the arm64 image (the index by tag, then its manifest by digest) needs nothing
    // more from the upstream.
    let digests: Vec<String> = arm64.all_blobs().into_iter().map(|d| d.digest).collect();
    wait_for_files(&m.storage_root(), &digests).await;
    let before = reg.requests().await.len();
    pull_http(&m, "team/multi", "v1", arm64).await;
    pull_http(&m, "team/multi", &arm64.digest, arm64).await;
    assert_eq!(reg.requests().await.len(), before);

    // inspect tells which platform is there, and ls sums what is stored.
    let cfg = m.config_path();
    let cfg = cfg.to_str().unwrap();
    let d = ocimirror_json(&["inspect", "team/multi:v1", "--config", cfg, "--json"]).await;
    assert_eq!(d["repository"], "team/multi");
    assert_eq!(d["tags"]["v1"], idx.digest.as_str());
    assert_eq!(d["pulls_recorded"], false);
    let ms = d["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{d}");
    assert_eq!(ms[0]["digest"], idx.digest.as_str());
    assert_eq!(ms[0]["media_type"], OCI_INDEX);
    assert_eq!(ms[0]["tags"], serde_json::json!(["v1"]));
    let platforms: Vec<(String, String, bool)> = ms[0]["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["platform"].as_str().unwrap().to_owned(),
                p["digest"].as_str().unwrap().to_owned(),
                p["present"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        vec![
            ("linux/amd64".into(), amd64.digest.clone(), false),
            ("linux/arm64".into(), arm64.digest.clone(), true),
        ]
    );
    assert_eq!(ms[1]["digest"], arm64.digest.as_str());
    assert_eq!(ms[1]["media_type"], OCI_MANIFEST);
    let blobs = ms[1]["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), arm64.all_blobs().len());
    for (b, want) in blobs.iter().zip(arm64.all_blobs()) {
        assert_eq!(b["digest"], want.digest.as_str());
        assert_eq!(b["size"], want.size);
        assert_eq!(b["stored_size"], want.size);
        assert_eq!(b["present"], true);
        assert_eq!(b["last_pull"], Value::Null, "no expiry section: no records");
        assert!(b["committed"].is_string());
    }
    assert_eq!(d["missing"], 1, "amd64's manifest is not stored");
    let arm64_bytes = idx.manifest.len() as u64 + image_bytes(arm64);
    assert_eq!(d["bytes"], arm64_bytes);

    let (ok, text, err) = ocimirror(&["inspect", "team/multi:v1", "--config", cfg]).await;
    assert!(ok, "{err}");
    assert!(
        text.contains(&format!("tag v1 -> {}", idx.digest)),
        "{text}"
    );
    assert!(
        text.contains(&format!("platform linux/amd64  {}  MISSING", amd64.digest)),
        "{text}"
    );
    assert!(text.contains("never recorded (committed "), "{text}");

    let l = ocimirror_json(&["ls", "--config", cfg, "--json"]).await;
    let repos = l["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 1, "{l}");
    assert_eq!(repos[0]["name"], "team/multi");
    assert_eq!(repos[0]["tags"]["v1"], idx.digest.as_str());
    assert_eq!(repos[0]["manifests"], 2);
    assert_eq!(repos[0]["bytes"], arm64_bytes);
    assert_eq!(repos[0]["last_pull"], Value::Null);
    assert!(repos[0]["last_commit"].is_string());
    assert_eq!(l["stored_bytes"], arm64_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_into_storage_then_an_offline_mirror_serves_it() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("team/app", "v1", 4103).await;
    let idx = reg.pusher().push_index("team/multi", "v2", 4104).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &reg.url(), "expiry:\n  interval: 0s\n");
    let cfg = cfg.to_str().unwrap();

    let report = ocimirror_json(&[
        "warm",
        "--config",
        cfg,
        "team/app:v1",
        "team/multi:v2",
        "--json",
    ])
    .await;
    assert_eq!(report[0]["digest"], img.digest.as_str());
    assert_eq!(report[0]["blobs_fetched"], 4);
    assert_eq!(report[0]["bytes_fetched"], blob_sizes(&img));
    assert_eq!(report[1]["digest"], idx.digest.as_str());
    assert_eq!(
        report[1]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(report[1]["manifests"], 3);
    let idx_blobs: u64 = idx.children.iter().map(blob_sizes).sum();
    assert_eq!(report[1]["bytes_fetched"], idx_blobs);

    // Warming again into the same storage fetches no blob.
    let before = reg.requests().await.len();
    let again = ocimirror_json(&["warm", "--config", cfg, "team/app:v1", "--json"]).await;
    assert_eq!(again[0]["blobs_cached"], 4);
    assert_eq!(again[0]["blobs_fetched"], 0);
    let after: Vec<_> = reg.requests().await.split_off(before);
    assert!(
        after.iter().all(|(_, uri)| !uri.contains("/blobs/")),
        "{after:?}"
    );

    // An offline mirror on that storage (its upstream a closed port) serves both.
    let storage = dir.path().join("storage");
    let m = Mirror::start(MirrorOpts::default().mode("offline").storage_root(&storage)).await;
    let before = reg.requests().await.len();
    pull_and_check_oci(&m.hostport(), &img, None).await;
    pull_and_check_index(&m.hostport(), &idx, None).await;
    assert_eq!(reg.requests().await.len(), before);

    // ls: both repositories, their tags and sizes; pulls recorded (expiry section).
    let l = ocimirror_json(&["ls", "--config", cfg, "--json"]).await;
    assert_eq!(l["pulls_recorded"], true);
    let repos = l["repositories"].as_array().unwrap();
    let names: Vec<&str> = repos.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["team/app", "team/multi"]);
    assert_eq!(repos[0]["tags"]["v1"], img.digest.as_str());
    assert_eq!(repos[0]["manifests"], 1);
    assert_eq!(repos[0]["bytes"], image_bytes(&img));
    assert!(repos[0]["last_pull"].is_string(), "{l}");
    assert_eq!(repos[1]["tags"]["v2"], idx.digest.as_str());
    assert_eq!(repos[1]["manifests"], 3);
    let multi_bytes = idx.manifest.len() as u64 + idx.children.iter().map(image_bytes).sum::<u64>();
    assert_eq!(repos[1]["bytes"], multi_bytes);
    assert_eq!(l["stored_bytes"], image_bytes(&img) + multi_bytes);

    let (ok, text, err) = ocimirror(&["ls", "--config", cfg]).await;
    assert!(ok, "{err}");
    assert!(text.contains("team/app  1 manifests"), "{text}");
    assert!(text.contains(&format!("  v2 -> {}", idx.digest)), "{text}");
    assert!(!text.contains("never recorded"), "{text}");

    // inspect of the whole repository: every manifest, every blob present, pulls on record.
    let d = ocimirror_json(&["inspect", "team/multi", "--config", cfg, "--json"]).await;
    assert_eq!(d["missing"], 0);
    assert_eq!(d["bytes"], multi_bytes);
    let ms = d["manifests"].as_array().unwrap();
    let mut got: Vec<&str> = ms.iter().map(|m| m["digest"].as_str().unwrap()).collect();
    got.sort();
    let mut want: Vec<&str> = std::iter::once(idx.digest.as_str())
        .chain(idx.children.iter().map(|c| c.digest.as_str()))
        .collect();
    want.sort();
    assert_eq!(got, want);
    for m in ms {
        assert_eq!(m["present"], true);
        assert!(m["last_pull"].is_string(), "{m}");
        for b in m["blobs"].as_array().unwrap() {
            assert_eq!(b["present"], true);
            assert_eq!(b["stored_size"], b["size"]);
            assert!(b["last_pull"].is_string(), "{b}");
        }
    }
    let (ok, _, err) = ocimirror(&["inspect", "team/nothing", "--config", cfg]).await;
    assert!(!ok);
    assert!(err.contains("no repository team/nothing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_with_a_missing_image_fails_and_names_it() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("team/app", "v1", 4105).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).tag_ttl("1h")).await;

    let (ok, out, err) = ocimirror(&[
        "warm",
        "--mirror",
        &m.url(),
        "team/app:v1",
        "team/app:nope",
        "--platform",
        "linux/arm64",
    ])
    .await;
    assert!(!ok, "{out}");
    assert!(err.contains("error: team/app:nope:"), "{err}");
    assert!(err.contains("MANIFEST_UNKNOWN"), "{err}");
    // The good image was warmed all the same (a single image ignores --platform).
    assert!(out.contains(&img.digest), "{out}");
    assert!(!err.contains("error: team/app:v1"), "{err}");

    // Straight into storage too.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &reg.url(), "");
    let (ok, _, err) =
        ocimirror(&["warm", "--config", cfg.to_str().unwrap(), "missing/image"]).await;
    assert!(!ok);
    assert!(err.contains("error: missing/image:"), "{err}");
    assert!(err.contains("not found upstream"), "{err}");

    // A platform the index does not have.
    let idx = reg.pusher().push_index("team/multi", "v1", 4106).await;
    let (ok, _, err) = ocimirror(&[
        "warm",
        "--mirror",
        &m.url(),
        "--platform",
        "linux/s390x",
        "team/multi:v1",
    ])
    .await;
    assert!(!ok);
    assert!(
        err.contains("no manifest for linux/s390x in the index (it has linux/amd64, linux/arm64)"),
        "{err}"
    );
    assert_eq!(
        reg.count_requests(
            "GET",
            &format!("/blobs/{}", idx.children[0].layers[0].digest)
        )
        .await,
        0
    );
}

/// Run the binary with `env` (and no other `OCIMIRROR_*` variable); (success, stdout, stderr).
async fn ocimirror_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(common::ocimirror_bin());
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("OCIMIRROR_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().await.expect("run ocimirror");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `examples/seed.yaml` served (its ACL: the named user may do everything, anonymous users pull
/// `myorg/**`), with an `admin` whose password the test knows and tokens living `token_ttl`.
async fn seed_mirror(reg: &Registry, dir: &Path, token_ttl: &str) -> Mirror {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed.yaml");
    let (key, cert) = ocimirror_keygen(dir);
    let users = format!(
        "{{\"\": {{}}, admin: {{password: \"{}\"}}}}",
        ocimirror_hash_password("warm-pw-0001")
    );
    Mirror::start(
        MirrorOpts::cli(&[
            "--config",
            &example.display().to_string(),
            "--upstream",
            &reg.url(),
        ])
        .env("OCIMIRROR_AUTH__KEY", &key)
        .env("OCIMIRROR_AUTH__CERTIFICATE", &cert)
        .env("OCIMIRROR_AUTH__USERS", &users)
        .env("OCIMIRROR_AUTH__TOKEN_TTL", token_ttl)
        .env(
            "OCIMIRROR_STORAGE__FILESYSTEM__ROOT",
            &dir.join("storage").display().to_string(),
        ),
    )
    .await
}

/// `warm --mirror` through a mirror with `auth`: anonymous tokens where the ACL allows them, a
/// refused scope reported for its image alone, and credentials from --password-file or the
/// environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_through_a_mirror_with_auth() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let open = reg.pusher().push_oci_image("myorg/app", "v1", 4601).await;
    // seed.yaml's upstream allow-list has library/* and myorg/**; its ACL gives anonymous
    // users myorg/** only.
    let closed = reg.pusher().push_oci_image("library/app", "v1", 4602).await;
    let dir = tempfile::tempdir().unwrap();
    let m = seed_mirror(&reg, dir.path(), "5m").await;

    // Anonymous: myorg/app is warmed, library/app is refused, each reported for itself.
    let (ok, out, err) = ocimirror_with_env(
        &[
            "warm",
            "--mirror",
            &m.url(),
            "--json",
            "myorg/app:v1",
            "library/app:v1",
        ],
        &[],
    )
    .await;
    assert!(!ok, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["error"], Value::Null, "{report}");
    assert_eq!(report[0]["digest"], open.digest.as_str());
    assert_eq!(report[0]["blobs_fetched"], 4, "{report}");
    let refused = report[1]["error"].as_str().unwrap();
    assert!(refused.contains("DENIED"), "{refused}");
    assert!(refused.contains("repository:library/app:pull"), "{refused}");
    assert!(err.contains("library/app:v1"), "{err}");
    assert_eq!(reg.count_requests("GET", "/v2/library/app/").await, 0);

    // The named user, password from a file.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "warm-pw-0001\n").unwrap();
    let (ok, out, err) = ocimirror_with_env(
        &[
            "warm",
            "--mirror",
            &m.url(),
            "--username",
            "admin",
            "--password-file",
            &pw.display().to_string(),
            "library/app:v1",
        ],
        &[],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains(&closed.digest), "{out}");
    assert!(out.contains("4 fetched"), "{out}");

    // The password from the environment; a wrong one is named as such.
    let args = [
        "warm",
        "--mirror",
        &m.url(),
        "--username",
        "admin",
        "library/app:v1",
    ];
    let (ok, out, err) =
        ocimirror_with_env(&args, &[("OCIMIRROR_WARM__PASSWORD", "warm-pw-0001")]).await;
    assert!(ok, "{err}");
    assert!(out.contains("4 already cached"), "{out}");
    let (ok, _, err) = ocimirror_with_env(&args, &[("OCIMIRROR_WARM__PASSWORD", "wrong")]).await;
    assert!(!ok);
    assert!(
        err.contains("refused the credentials of \"admin\""),
        "{err}"
    );
    let (ok, _, err) = ocimirror_with_env(&args, &[]).await;
    assert!(!ok);
    assert!(err.contains("OCIMIRROR_WARM__PASSWORD"), "{err}");
}

/// A token is used until shortly before it expires, then a new one is obtained: with tokens
/// living 3 s (renewed 0.3 s early), a request after 3.5 s needs a second token, and one made at
/// once does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_renews_an_expired_token() {
    use ocimirror::ops::auth::{Credentials, MirrorAuth};
    let reg = Registry::start(RegistryOpts::default()).await;
    reg.pusher().push_oci_image("library/app", "v1", 4603).await;
    let dir = tempfile::tempdir().unwrap();
    let m = seed_mirror(&reg, dir.path(), "3s").await;
    let auth = MirrorAuth::new(Some(Credentials {
        username: "admin".into(),
        password: "warm-pw-0001".into(),
    }));
    let c = client();
    let name = ocimirror::oci::RepoName::parse("library/app").unwrap();
    let url = format!("{}/v2/library/app/manifests/v1", m.url());
    let get = || {
        c.get(url.as_str())
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
    };
    let r = auth.send(&c, Some(&name), get).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(auth.tokens_obtained(), 1);
    let r = auth.send(&c, Some(&name), get).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(auth.tokens_obtained(), 1, "a fresh token is reused");
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let r = auth.send(&c, Some(&name), get).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(auth.tokens_obtained(), 2, "an expired token is replaced");
}
