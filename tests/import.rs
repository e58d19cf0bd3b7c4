//! `ocimirror config import` on real configuration files (tests/fixtures/import, Debian's
//! /etc/docker/registry/config.yml), run as the built binary: every output passes
//! `ocimirror config check` (given the files it references), maps what the source said, and
//! lists what it could not carry over on stderr and as comments at its top; and imported
//! configs serve, with the users and rules they came with.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn bin() -> std::path::PathBuf {
    common::ocimirror_bin()
}
const DEBIAN_CONFIG: &str = "/etc/docker/registry/config.yml";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(rel)
}

/// The binary with a clean environment for the import: no REGISTRY_* or OCIMIRROR_* from the
/// test runner's.
fn ocimirror(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") || k.starts_with("OCIMIRROR_") {
            c.env_remove(k);
        }
    }
    c
}

struct Import {
    dir: tempfile::TempDir,
    out: PathBuf,
    text: String,
    stderr: String,
    /// The config part, parsed.
    config: Value,
}

impl Import {
    fn get(&self, path: &str) -> &Value {
        let mut cur = &self.config;
        for k in path.split('.') {
            cur = cur.get(k).unwrap_or(&Value::Null);
        }
        cur
    }
    fn str(&self, path: &str) -> &str {
        self.get(path)
            .as_str()
            .unwrap_or_else(|| panic!("{path} is not a string in:\n{}", self.text))
    }
    /// Whether the notes name `key` (e.g. `distribution: http.headers`).
    fn noted(&self, key: &str) -> bool {
        self.stderr.contains(&format!("- {key}:"))
    }
    /// Each `(path, value)` is a string at that path of the output.
    fn expect(&self, pairs: &[(&str, &str)]) {
        for (path, want) in pairs {
            assert_eq!(self.str(path), *want, "{path} in:\n{}", self.text);
        }
    }
    /// The notes list each of `keys` as not carried over from `source`.
    fn assert_noted(&self, source: &str, keys: &[&str]) {
        for key in keys {
            let key = format!("{source}: {key}");
            assert!(self.noted(&key), "{key} not noted:\n{}", self.stderr);
        }
    }
    /// The notes do not list any of `keys` (options ocimirror carries, or does the same way).
    fn assert_not_noted(&self, source: &str, keys: &[&str]) {
        for key in keys {
            let key = format!("{source}: {key}");
            assert!(!self.noted(&key), "{key} noted:\n{}", self.stderr);
        }
    }
}

/// Import one of Distribution's fixtures and check that the output passes `config check`.
fn distribution(name: &str) -> Import {
    let imp = import(&[
        "--distribution",
        fixture("distribution").join(name).to_str().unwrap(),
    ]);
    check_passes(&imp);
    imp
}

/// Import one of docker_auth's fixtures and check that the output passes `config check`.
fn docker_auth(name: &str) -> Import {
    let imp = import(&[
        "--docker-auth",
        fixture("docker_auth").join(name).to_str().unwrap(),
    ]);
    check_passes(&imp);
    imp
}

/// Run `config import` with `args` (paths of sources), writing into a fresh directory.
fn import(args: &[&str]) -> Import {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mirror.yaml");
    let mut all: Vec<&str> = vec!["config", "import"];
    all.extend_from_slice(args);
    let out_s = out.display().to_string();
    all.extend_from_slice(&["-o", &out_s]);
    let o = ocimirror(&all).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "import {args:?} failed:\n{stderr}");
    let text = fs::read_to_string(&out).unwrap();
    let config: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The same list on stderr and as comments at the top.
    let comments: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    for line in stderr.lines().filter(|l| l.trim_start().starts_with("- ")) {
        assert!(
            comments.contains(line.trim()),
            "stderr line {line:?} is not among the output's comments:\n{comments}"
        );
    }
    Import {
        dir,
        out,
        text,
        stderr,
        config,
    }
}

/// `ocimirror config check` on the output, with every file it references provided: the
/// referenced paths are those of the machine the source came from, so each is pointed (through
/// the environment overrides `config check` honours) at a valid file made here. Returns the
/// environment used.
fn check_passes(imp: &Import) -> Vec<(String, String)> {
    let dir = imp.dir.path();
    let mut env = Vec::new();
    let key = dir.join("check.key");
    let crt = dir.join("check.crt");
    let o = ocimirror(&[
        "keygen",
        "--key",
        key.to_str().unwrap(),
        "--certificate",
        crt.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "keygen: {o:?}");
    if !imp.get("tls").is_null() {
        env.push((
            "OCIMIRROR_TLS__CERTIFICATE".into(),
            crt.display().to_string(),
        ));
        env.push(("OCIMIRROR_TLS__KEY".into(), key.display().to_string()));
    }
    let auth = imp.get("auth");
    if !auth.is_null() {
        for (k, v) in [("KEY", &key), ("CERTIFICATE", &crt)] {
            if !auth[k.to_ascii_lowercase().as_str()].is_null() {
                env.push((format!("OCIMIRROR_AUTH__{k}"), v.display().to_string()));
            }
        }
        if !auth["trusted_certificates"].is_null() {
            env.push((
                "OCIMIRROR_AUTH__TRUSTED_CERTIFICATES".into(),
                crt.display().to_string(),
            ));
        }
        if !auth["trusted_jwks"].is_null() {
            let k = ocimirror::auth::keys::load_signing_key(&key, &crt).unwrap();
            let jwks = dir.join("check.jwks");
            fs::write(
                &jwks,
                ocimirror::auth::keys::jwks([k.public_key()]).to_string(),
            )
            .unwrap();
            env.push((
                "OCIMIRROR_AUTH__TRUSTED_JWKS".into(),
                jwks.display().to_string(),
            ));
        }
        // The proxies in front, which only the operator knows (a note says so).
        if !auth["real_ip_header"].is_null() && auth["trusted_proxies"].is_null() {
            env.push((
                "OCIMIRROR_AUTH__TRUSTED_PROXIES".into(),
                "[10.0.0.0/8]".into(),
            ));
        }
        // External programs of the source machine: one that exists here.
        for k in ["ext_auth", "ext_authz"] {
            if !auth[k].is_null() {
                env.push((
                    format!("OCIMIRROR_AUTH__{}__COMMAND", k.to_ascii_uppercase()),
                    "/bin/true".into(),
                ));
            }
        }
        if !auth["htpasswd"].is_null() {
            let h = dir.join("check.htpasswd");
            let hash = ocimirror::auth::authn::hash_password("secret", 4);
            fs::write(&h, format!("someone:{hash}\n")).unwrap();
            env.push(("OCIMIRROR_AUTH__HTPASSWD".into(), h.display().to_string()));
        }
    }
    let mut c = ocimirror(&["config", "check", imp.out.to_str().unwrap()]);
    c.envs(env.iter().map(|(k, v)| (k, v)));
    let o: Output = c.output().unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok",
        "config check of the import failed (with {env:?}):\n{}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        imp.text
    );
    env
}

// ---------------------------------------------------------------------------------------------
// Distribution
// ---------------------------------------------------------------------------------------------

#[test]
fn debian_package_config_imports() {
    if !tool_or_skip(
        Path::new(DEBIAN_CONFIG).is_file(),
        DEBIAN_CONFIG,
        "apt-get install docker-registry",
    ) {
        return;
    }
    let imp = import(&["--distribution", DEBIAN_CONFIG]);
    check_passes(&imp);
    assert_eq!(imp.str("listen"), ":5000");
    // Not a proxy: it serves what it holds and never goes upstream.
    imp.expect(&[
        ("mode", "offline"),
        ("storage.filesystem.root", "/var/lib/docker-registry"),
    ]);
    // Basic auth became token auth with the same htpasswd file, any user allowed everything.
    assert_eq!(imp.str("auth.htpasswd"), "/etc/docker/registry");
    assert_eq!(imp.get("auth.acl")[0]["match"]["account"], "/.+/");
    assert_eq!(imp.get("auth.acl")[0]["actions"][0], "*");
    let key_dir = imp.dir.path().display().to_string();
    assert!(imp.str("auth.key").starts_with(&key_dir), "{}", imp.text);
    assert!(
        imp.stderr.contains("ocimirror keygen --key"),
        "{}",
        imp.stderr
    );
    // Debian's path is the config directory: Distribution refuses every login with it.
    assert!(imp.stderr.contains("is a directory"), "{}", imp.stderr);
    imp.assert_noted(
        "distribution",
        &["http.headers", "health", "storage.delete", "log.fields"],
    );
}

#[test]
fn distribution_config_example_imports() {
    let imp = distribution("config-example.yml");
    imp.expect(&[
        ("auth.htpasswd", "/etc/registry"),
        ("storage.filesystem.root", "/var/lib/registry"),
    ]);
    imp.assert_noted("distribution", &["storage.tag"]);
}

#[test]
fn distribution_mirror_recipe_imports() {
    let imp = distribution("mirror-recipe.yml");
    imp.expect(&[
        ("upstream.url", "https://registry-1.docker.io"),
        ("upstream.username", "myhubuser"),
        ("upstream.password", "myhubtoken"),
        ("expiry.max_age", "72h"),
        ("log.level", "debug"),
    ]);
    assert!(imp.get("mode").is_null(), "a proxy is online");
    assert!(
        imp.get("auth").is_null(),
        "no auth: an open mirror, as it was"
    );
    imp.assert_noted(
        "distribution",
        &[
            "http.debug",
            "storage.delete",
            "storage.tag",
            "health",
            "log.fields",
        ],
    );
    assert!(!imp.noted("distribution: proxy.ttl") || imp.stderr.contains("expiry.max_age"));
}

#[test]
fn distribution_redis_cache_example_imports() {
    let imp = distribution("config-cache.yml");
    imp.expect(&[
        ("cache.backend", "redis"),
        ("cache.redis.url", "redis://localhost:6379/0"),
        ("cache.redis.connect_timeout", "10ms"),
        ("storage.filesystem.root", "/var/lib/registry-cache"),
    ]);
    // Distribution's default proxy expiry.
    assert_eq!(imp.str("expiry.max_age"), "168h");
    imp.assert_noted(
        "distribution",
        &[
            "proxy.cacheTTL",
            "notifications",
            "redis.pool",
            "redis.readtimeout",
            "storage.maintenance.uploadpurging",
            "http.secret",
        ],
    );
}

#[test]
fn distribution_s3_imports() {
    let imp = distribution("s3.yml");
    imp.expect(&[
        ("storage.backend", "s3"),
        ("storage.s3.endpoint", "http://myobjects.local"),
        ("storage.s3.region", "us-west-1"),
        ("storage.s3.bucket", "bucketname"),
        ("storage.s3.root", "/s3/object/name/prefix"),
    ]);
    assert_eq!(imp.get("storage.s3.path_style"), &Value::Bool(true));
    imp.expect(&[
        ("storage.s3.access_key_id", "awsaccesskey"),
        ("storage.s3.secret_access_key", "awssecretkey"),
    ]);
    assert_eq!(imp.get("storage.s3.part_size_mib"), &Value::from(5));
    imp.expect(&[("server.shutdown_timeout", "1m"), ("log.format", "json")]);
    assert!(imp.get("storage.read_only").is_null());
    imp.assert_noted(
        "distribution",
        &[
            "storage.s3.multipartcopychunksize",
            "storage.redirect",
            "storage.delete",
        ],
    );
    // Options ocimirror does the same way are not listed.
    imp.assert_not_noted(
        "distribution",
        &[
            "storage.s3.encrypt",
            "storage.s3.secure",
            "storage.s3.v4auth",
        ],
    );
}

#[test]
fn distribution_token_auth_becomes_a_verifying_registry() {
    let imp = distribution("token.yml");
    imp.expect(&[
        ("role", "registry"),
        ("auth.realm", "https://127.0.0.1:5001/auth"),
        ("auth.service", "Docker registry"),
    ]);
    assert_eq!(
        imp.get("auth.trusted_issuers"),
        &serde_json::json!(["Acme auth server"])
    );
    imp.expect(&[
        ("auth.trusted_certificates", "/path/to/server.pem"),
        ("listen", "localhost:5000"),
    ]);
}

#[test]
fn distribution_all_options_lists_everything_not_carried() {
    let imp = distribution("all-options.yml");
    // One storage driver: the one ocimirror has; the others listed.
    imp.expect(&[
        ("storage.backend", "filesystem"),
        ("cache.backend", "redis"),
        ("cache.redis.url", "redis://:asecret@localhost:6379/0"),
    ]);
    assert_eq!(imp.get("cache.memory.max_entries"), &Value::from(10000));
    imp.expect(&[
        ("log.level", "debug,access=warn"),
        ("auth.trusted_jwks", "/path/to/jwks"),
        ("tls.certificate", "/path/to/x509/public"),
        ("tls.key", "/path/to/x509/private"),
    ]);
    imp.assert_noted(
        "distribution",
        &[
            "storage.azure",
            "storage.gcs",
            "storage.s3",
            "storage.inmemory",
            "storage.filesystem.maxthreads",
            "auth.silly",
            "auth.htpasswd",
            "auth.token.signingalgorithms",
            "middleware",
            "notifications",
            "health",
            "validation",
            "http.tls.clientcas",
            "http.tls.letsencrypt",
            "http.prefix",
            "http.host",
            "http.headers",
            "log.hooks",
            "proxy.exec",
            "proxy.remotenamespace",
            "redis.tls.certificate",
            "redis.poolsize",
        ],
    );
}

#[test]
fn twuni_helm_chart_with_its_environment_imports() {
    let config = fixture("twuni-docker-registry/config.yml");
    let with_env = |env: &str| {
        let env = fixture(&format!("twuni-docker-registry/{env}"));
        import(&[
            "--distribution",
            config.to_str().unwrap(),
            "--env-file",
            env.to_str().unwrap(),
        ])
    };
    let imp = with_env("proxy-filesystem.env");
    check_passes(&imp);
    imp.expect(&[
        ("storage.filesystem.root", "/var/lib/registry"),
        ("upstream.url", "https://registry-1.docker.io"),
        ("upstream.username", "myhubuser"),
    ]);
    assert!(
        imp.stderr.contains("REGISTRY_PROXY_REMOTEURL"),
        "{}",
        imp.stderr
    );

    let imp = with_env("s3-htpasswd.env");
    check_passes(&imp);
    imp.expect(&[
        ("storage.backend", "s3"),
        ("storage.s3.bucket", "my-bucket"),
        ("storage.s3.endpoint", "https://s3.us-east-1.amazonaws.com"),
        ("storage.s3.root", "/object/prefix"),
        ("auth.htpasswd", "/auth/htpasswd"),
        ("mode", "offline"),
    ]);
    imp.assert_noted("distribution", &["storage.s3.encrypt"]);
    imp.assert_noted("distribution", &["storage.delete"]);

    // The process environment is applied too (and wins over the file), as Distribution does.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.yaml");
    let o = ocimirror(&[
        "config",
        "import",
        "--distribution",
        config.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .env("REGISTRY_PROXY_REMOTEURL", "https://quay.io")
    .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/srv/registry")
    .output()
    .unwrap();
    assert!(o.status.success());
    let v: Value = serde_saphyr::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["upstream"]["url"], "https://quay.io");
    assert_eq!(v["storage"]["filesystem"]["root"], "/srv/registry");
}

// ---------------------------------------------------------------------------------------------
// docker_auth
// ---------------------------------------------------------------------------------------------

#[test]
fn docker_auth_reference_imports() {
    let imp = docker_auth("reference.yml");
    imp.expect(&[
        ("role", "auth"),
        ("listen", ":5001"),
        ("auth.issuer", "Acme auth server"),
        ("auth.token_ttl", "15m"),
    ]);
    // docker_auth signs with the server's pair when token.* is unset.
    imp.expect(&[
        ("auth.key", "/path/to/server.key"),
        ("auth.certificate", "/path/to/server.pem"),
        ("tls.certificate", "/path/to/server.pem"),
    ]);
    // Users copied as they are (bcrypt hashes unchanged), anonymous included.
    assert_eq!(
        imp.str("auth.users.admin.password"),
        "$2y$05$LO.vzwpWC5LZGqThvEfznu8qhb5SGqvBSWY1J3yZ4AxtMRZ3kN5jC"
    );
    assert!(imp.get("auth.users").get("").is_some(), "{}", imp.text);
    imp.expect(&[
        ("auth.github_auth.organization", "acme"),
        ("auth.github_auth.api_url", "https://github.acme.com/api/v3"),
    ]);
    let acl = imp.get("auth.acl").as_array().unwrap();
    assert_eq!(acl.len(), 16);
    assert_eq!(acl[1]["match"]["ip"], "::1");
    // Anchored already: copied. Unanchored: rewritten to keep docker_auth's meaning.
    assert_eq!(acl[8]["match"]["account"], "/.+/");
    assert_eq!(acl[10]["match"]["account"], "/^(.+)@test.com$/");
    assert_eq!(
        acl[12]["match"]["labels"]["group"],
        "/.*?(?:trainee|dev).*/"
    );
    imp.assert_noted(
        "docker_auth",
        &[
            "google_auth",
            "ldap_auth",
            "mongo_auth",
            "ext_auth",
            "acl_mongo",
            "ext_authz",
            "server.letsencrypt",
        ],
    );
    imp.assert_noted("docker_auth", &["acl[12].match.labels.group"]);
    assert!(imp.stderr.contains("token_db"), "{}", imp.stderr);
}

#[test]
fn docker_auth_simple_and_helm_chart_import() {
    let imp = docker_auth("simple.yml");
    assert_eq!(imp.get("auth.acl").as_array().unwrap().len(), 2);

    let imp = docker_auth("helm-chart.yml");
    imp.expect(&[
        ("auth.key", "/config/certs/server.key"),
        ("auth.certificate", "/config/certs/server.pem"),
    ]);
    assert_eq!(imp.get("auth.acl")[1]["match"]["account"], "test");
    assert_eq!(imp.get("auth.acl")[1]["actions"][0], "pull");
    assert_eq!(
        imp.str("auth.users.test.password"),
        "$2y$05$WuwBasGDAgr.QCbGIjKJaep4dhxeai9gNZdmBnQXqpKly57oNutya"
    );
}

#[test]
fn docker_auth_oidc_imports() {
    let imp = docker_auth("oidc.yml");
    imp.expect(&[
        ("auth.path", "/registry-auth/auth"),
        ("auth.kid", "thumbprint"),
        ("auth.real_ip_header", "X-Forwarded-For"),
        ("auth.oidc_auth.issuer", "https://accounts.example.com"),
        ("auth.oidc_auth.client_id", "docker-registry"),
        ("auth.oidc_auth.username_claim", "email"),
        ("auth.oidc_auth.groups_claim", "groups"),
    ]);
    let acl = imp.get("auth.acl");
    assert_eq!(acl[0]["match"]["labels"]["groups"], "/.*?(?:admins).*/");
    assert_eq!(acl[1]["match"]["account"], "/^(.+)@example\\.com$/");
    assert_eq!(acl[2]["match"]["name"], "/.*?(?:secret).*/");
    imp.assert_noted("docker_auth", &["server.real_ip_pos"]);
    assert!(imp.noted("auth.trusted_proxies"), "{}", imp.stderr);
    assert!(imp.stderr.contains("level_token_db"), "{}", imp.stderr);
}

#[test]
fn distribution_and_docker_auth_together() {
    let imp = import(&[
        "--distribution",
        fixture("distribution/token.yml").to_str().unwrap(),
        "--docker-auth",
        fixture("docker_auth/simple.yml").to_str().unwrap(),
    ]);
    check_passes(&imp);
    // One process does both: no role restriction, the registry's service as audience.
    assert!(imp.get("role").is_null(), "{}", imp.text);
    imp.expect(&[
        ("listen", "localhost:5000"),
        ("auth.service", "Docker registry"),
        ("auth.issuer", "Acme auth server"),
    ]);
    assert!(imp.get("auth.realm").is_null(), "{}", imp.text);
    assert_eq!(imp.str("auth.trusted_certificates"), "/path/to/server.pem");
    imp.assert_noted("docker_auth", &["server.addr"]);
    imp.assert_noted("distribution", &["auth.token.realm"]);
}

#[test]
fn bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    fs::write(&bad, "storage: [unclosed\n").unwrap();
    let o = ocimirror(&["config", "import", "--distribution", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not YAML"));
    let o = ocimirror(&["config", "import"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to import"));
}

// ---------------------------------------------------------------------------------------------
// Imported configs serve
// ---------------------------------------------------------------------------------------------

/// The migration as documented: import Debian's config, create the signing key the notes ask
/// for, point the storage root at a cache a Distribution registry wrote, serve. The images it
/// holds are served to the users of the htpasswd file, through tokens, and to nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_debian_config_serves_distribution_written_storage() {
    if !tool_or_skip(
        Path::new(DEBIAN_CONFIG).is_file(),
        DEBIAN_CONFIG,
        "apt-get install docker-registry",
    ) {
        return;
    }
    let mut reg = Registry::start(RegistryOpts::default()).await;
    let p = reg.pusher();
    let img = p.push_oci_image("team/app", "v1", 610).await;
    let idx = p.push_index("team/multi", "v1", 611).await;
    reg.stop();

    let imp = import(&["--distribution", DEBIAN_CONFIG]);
    let (key, crt) = (imp.str("auth.key"), imp.str("auth.certificate"));
    let o = ocimirror(&["keygen", "--key", key, "--certificate", crt])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    // The htpasswd file Debian's config should have pointed at.
    let ht = imp.dir.path().join("htpasswd");
    let hash = ocimirror::auth::authn::hash_password("s3cret", 4);
    fs::write(&ht, format!("alice:{hash}\n")).unwrap();

    let m = Mirror::start(
        MirrorOpts::cli(&["--config", imp.out.to_str().unwrap()])
            .env("OCIMIRROR_AUTH__HTPASSWD", ht.to_str().unwrap())
            .env(
                "OCIMIRROR_STORAGE__FILESYSTEM__ROOT",
                reg.root().to_str().unwrap(),
            ),
    )
    .await;
    pull_and_check_oci(&m.hostport(), &img, Some("alice:s3cret")).await;
    pull_and_check_index(&m.hostport(), &idx, Some("alice:s3cret")).await;
    let anon = skopeo_copy(
        &format!("{}/team/app:v1", m.hostport()),
        &format!("oci:{}:x", imp.dir.path().join("anon").display()),
        false,
        None,
    )
    .await;
    assert!(anon.is_err(), "anonymous pulls must be refused");
    let wrong = skopeo_copy(
        &format!("{}/team/app:v1", m.hostport()),
        &format!("oci:{}:x", imp.dir.path().join("wrong").display()),
        false,
        Some("alice:wrong"),
    )
    .await;
    assert!(wrong.is_err(), "a wrong password must be refused");
}

/// docker_auth's users and ACL, imported with the registry's token config, decide pulls through
/// ocimirror's own token service: `admin` may pull, `test` matches no rule, and an unknown user
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_docker_auth_users_and_acl_decide_pulls() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("acme/app", "v1", 620).await;
    let imp = import(&[
        "--distribution",
        fixture("distribution/token.yml").to_str().unwrap(),
        "--docker-auth",
        fixture("docker_auth/simple.yml").to_str().unwrap(),
    ]);
    // The key pair docker_auth used lives on its machine: one made here stands in for it.
    let env = check_passes(&imp);
    let storage = imp.dir.path().join("storage");
    let mut opts = MirrorOpts::cli(&[
        "--config",
        imp.out.to_str().unwrap(),
        "--upstream",
        &reg.url(),
    ])
    .env(
        "OCIMIRROR_STORAGE__FILESYSTEM__ROOT",
        storage.to_str().unwrap(),
    );
    for (k, v) in &env {
        opts = opts.env(k, v);
    }
    let m = Mirror::start(opts).await;
    // docker_auth's example passwords: admin/badmin, test/123.
    pull_and_check_oci(&m.hostport(), &img, Some("admin:badmin")).await;
    for creds in ["test:123", "nobody:x", "admin:wrong"] {
        let r = skopeo_copy(
            &format!("{}/acme/app:v1", m.hostport()),
            &format!(
                "oci:{}:x",
                imp.dir.path().join(creds.replace(':', "_")).display()
            ),
            false,
            Some(creds),
        )
        .await;
        assert!(r.is_err(), "{creds} must not pull");
    }
}
