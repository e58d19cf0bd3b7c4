//! The client recipes of docs/clients.md, run for real against ocimirror in front of a local
//! Distribution registry: registries.conf mirrors (skopeo, podman), containerd's hosts.toml
//! (plain, and with `override_path`), and logging in to the token service. Each client is told
//! about the mirror only through the recipe's file, and the registry it would otherwise use is
//! a closed loopback port, so a pull that succeeds went through the mirror.
//!
//! podman and containerd are installed by scripts/test.sh; without them these tests skip, or
//! fail under OCIMIRROR_REQUIRE_ALL.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The registries.conf recipe of docs/clients.md for `prefix`, with the mirror at `mirror`.
/// The recipe's `location = "docker.io"` is a closed loopback port here, so that nothing can
/// be fetched around the mirror.
fn registries_conf(dir: &Path, prefix: &str, mirror: &str) -> PathBuf {
    let p = dir.join("registries.conf");
    fs::write(
        &p,
        format!(
            "unqualified-search-registries = []\n\n\
             [[registry]]\n\
             prefix = \"{prefix}\"\n\
             location = \"{closed}\"\n\
             insecure = true\n\n\
             [[registry.mirror]]\n\
             location = \"{mirror}\"\n\
             insecure = true\n",
            closed = closed_url().trim_start_matches("http://"),
        ),
    )
    .unwrap();
    p
}

/// A registry holding `name:v1`, a runnable image from `seed`.
async fn registry_with(name: &str, seed: u64) -> (Registry, Image) {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg
        .pusher()
        .push_image(name, "v1", &runnable_image(seed))
        .await;
    (reg, img)
}

async fn mirror_of_image(name: &str, seed: u64) -> (Registry, Mirror, Image) {
    let (reg, img) = registry_with(name, seed).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    (reg, m, img)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_follows_a_registries_conf_mirror() {
    let (reg, m, img) = mirror_of_image("library/viaconf", 701).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = registries_conf(dir.path(), "docker.io", &m.hostport());
    let dest = dir.path().join("layout");
    run(Command::new("skopeo").args([
        "--registries-conf",
        conf.to_str().unwrap(),
        "--insecure-policy",
        "copy",
        "--preserve-digests",
        "docker://docker.io/library/viaconf:v1",
        &format!("oci:{}:v1", dest.display()),
    ]));
    assert_image_in(&read_oci_layout(&dest), &img);
    assert!(
        reg.count_requests("GET", "/v2/library/viaconf/manifests/")
            .await
            >= 1,
        "the mirror fetched it from the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_a_registries_conf_mirror() {
    if !tool_or_skip(
        have("podman") && is_root(),
        "podman, run as root",
        "apt-get install podman",
    ) {
        return;
    }
    let (reg, m, img) = mirror_of_image("library/viapodman", 702).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = registries_conf(dir.path(), "docker.io", &m.hostport());
    let policy = dir.path().join("policy.json");
    fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_REGISTRIES_CONF", &conf)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--runroot")
            .arg(dir.path().join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    };
    run(&mut podman(&[
        "pull",
        "--signature-policy",
        policy.to_str().unwrap(),
        "docker.io/library/viapodman:v1",
    ]));
    let digest = run(&mut podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        "docker.io/library/viapodman:v1",
    ]));
    assert_eq!(
        digest.trim(),
        img.digest,
        "podman stored the manifest as served"
    );
    assert!(reg.count_requests("GET", "/v2/library/viapodman/").await >= 1);
}

/// containerd's hosts.toml recipes. The default upstream, with `override_path` (the host URL
/// carries the API path): containerd sends `?ns=<the upstream's host:port>`, which ocimirror
/// recognises as its default upstream. A named upstream (`upstreams: [{name: registry.test}]`):
/// a plain host entry in `certs.d/registry.test/`, routed by `?ns=registry.test`. Each
/// registry's own server is a closed port: only the mirror can answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_hosts_toml() {
    if !containerd_runs() {
        return;
    }
    let (reg, plain) = registry_with("acme/plain", 703).await;
    let (named, prefixed) = registry_with("acme/prefixed", 704).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).extra(&format!(
        "upstreams:\n  - name: registry.test\n    url: {}\n",
        q(&named.url())
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ctrd = Containerd::start(dir.path());
    let hosts_dir = dir.path().join("certs.d");
    write_hosts(&hosts_dir, &reg.hostport(), &host_table(&m.url(), true));
    write_hosts(&hosts_dir, "registry.test", &host_table(&m.url(), false));
    let plain_ref = format!("{}/acme/plain:v1", reg.hostport());
    for (img, name) in [
        (&plain, plain_ref.as_str()),
        (&prefixed, "registry.test/acme/prefixed:v1"),
    ] {
        run(&mut ctrd.pull(&hosts_dir, name));
        ctrd.assert_listed(name, &img.digest);
    }
    // Each from its own upstream, through the mirror (the registries' servers are not asked
    // directly: `server` is a closed port).
    assert!(reg.count_requests("GET", "/v2/acme/plain/manifests/").await >= 1);
    assert!(
        named
            .count_requests("GET", "/v2/acme/prefixed/manifests/")
            .await
            >= 1
    );
    assert_eq!(named.count_requests("", "/v2/acme/plain/").await, 0);
}

/// A mirror of a mirror: containerd's standard `certs.d/docker.io/hosts.toml` pointed at
/// ocimirror, whose default upstream is not Docker Hub but a plain Distribution registry (as a
/// corporate Docker Hub mirror would be) declared `ns: [docker.io]`. containerd sends
/// `?ns=docker.io`; the mirror answers it from that upstream. `server` is a closed port, so a
/// refusal would show as a failed pull rather than as a quiet fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_docker_io_through_a_mirror_of_a_mirror() {
    if !containerd_runs() {
        return;
    }
    let (reg, img) = registry_with("library/nsapp", 705).await;
    let plain = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).up("ns", "[docker.io]")).await;
    let dir = tempfile::tempdir().unwrap();
    let ctrd = Containerd::start(dir.path());
    let hosts_dir = dir.path().join("certs.d");
    let point_at = |mirror: &Mirror| {
        write_hosts(&hosts_dir, "docker.io", &host_table(&mirror.url(), false));
    };
    let name = "docker.io/library/nsapp:v1";
    // Without the declaration, docker.io is not an ns of a plain registry: the mirror answers
    // 404 and containerd, falling back to the closed `server`, fails.
    point_at(&plain);
    let out = ctrd.pull(&hosts_dir, name).output().unwrap();
    assert!(!out.status.success(), "pulled without ns: [docker.io]");
    point_at(&m);
    run(&mut ctrd.pull(&hosts_dir, name));
    ctrd.assert_listed(name, &img.digest);
    assert!(
        reg.count_requests("", "/v2/library/nsapp/manifests/").await >= 1,
        "the plain registry answered through the mirror"
    );
}

/// `docker login` against the token service, done with skopeo (the same protocol: a 401 with a
/// Bearer challenge, then Basic credentials to the token endpoint), then a pull with the stored
/// credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_to_the_token_service_then_pull() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("team/app", "v1", 705).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, crt) = (dir.path().join("t.key"), dir.path().join("t.crt"));
    run(Command::new(common::ocimirror_bin()).args([
        "keygen",
        "--key",
        key.to_str().unwrap(),
        "--certificate",
        crt.to_str().unwrap(),
    ]));
    let hash = ocimirror::auth::authn::hash_password("s3cret", 4);
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).extra(&format!(
        "auth:\n  key: {}\n  certificate: {}\n  users:\n    alice:\n      password: {}\n  acl:\n    - match: {{account: alice}}\n      actions: [pull]\n",
        q(key.to_str().unwrap()),
        q(crt.to_str().unwrap()),
        q(&hash)
    )))
    .await;
    let authfile = dir.path().join("auth.json");
    let skopeo = |args: &[&str]| {
        let mut c = Command::new("skopeo");
        c.env("REGISTRY_AUTH_FILE", &authfile).args(args);
        c
    };
    let wrong = skopeo(&[
        "login",
        "--tls-verify=false",
        "--username",
        "alice",
        "--password",
        "wrong",
        &m.hostport(),
    ])
    .output()
    .unwrap();
    assert!(!wrong.status.success(), "a wrong password must not log in");
    run(&mut skopeo(&[
        "login",
        "--tls-verify=false",
        "--username",
        "alice",
        "--password",
        "s3cret",
        &m.hostport(),
    ]));
    let dest = dir.path().join("layout");
    run(&mut skopeo(&[
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        &format!("docker://{}/team/app:v1", m.hostport()),
        &format!("oci:{}:v1", dest.display()),
    ]));
    assert_image_in(&read_oci_layout(&dest), &img);
}

/// containerd pulls through a mirror with `storage.redirect` on SeaweedFS: the blobs come from
/// the store (followed `307`s), and the `Ocimirror-No-Redirect` header, set in hosts.toml's
/// `header` table, keeps a client on the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_follows_redirects_to_the_store() {
    if !containerd_runs() {
        return;
    }
    let Some(weed) = Weed::start().await else {
        return;
    };
    let (reg, img) = registry_with("acme/redirected", 706).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).storage_yaml(
        &(weed.storage_yaml("/containerd") + "  redirect:\n    enabled: true\n    expiry: 5m\n"),
    ))
    .await;
    // Stored by a first pull, through the mirror.
    pull_and_check_oci(&m.hostport(), &img, None).await;
    let redirects = || m.metric("ocimirror_blob_redirects_total", &[]);
    assert_eq!(redirects().await, 0.0);
    let name = format!("{}/acme/redirected:v1", reg.hostport());
    for (opt_out, expected) in [(false, 2.0), (true, 2.0)] {
        let dir = tempfile::tempdir().unwrap();
        let ctrd = Containerd::start(dir.path());
        let hosts_dir = dir.path().join("certs.d");
        let mut host = host_table(&m.url(), true);
        if opt_out {
            host += &format!(
                "  [host.\"{}/v2\".header]\n    ocimirror-no-redirect = \"1\"\n",
                m.url()
            );
        }
        write_hosts(&hosts_dir, &reg.hostport(), &host);
        run(&mut ctrd.pull(&hosts_dir, &name));
        ctrd.assert_listed(&name, &img.digest);
        // The config and the layer: from the store the first time, from the mirror with the
        // header (the count stays).
        assert_eq!(redirects().await, expected, "opt-out {opt_out}");
    }
}
