//! HTTPS served by ocimirror itself: real clients (reqwest with HTTP/2, skopeo verifying the
//! certificate) pull through it, and a replaced certificate is picked up without a restart. And
//! HTTPS from an upstream (Distribution serving TLS), trusted through the platform's roots.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn pair(cn: &str) -> Pair {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

fn install(dir: &Path, p: &Pair) {
    // Key first: the certificate's change is what a reload looks for last.
    std::fs::write(dir.join("tls.key"), &p.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &p.cert_pem).unwrap();
}

struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn start(dir: &Path, upstream: &str) -> Server {
    start_with(dir, upstream, "").await
}

/// As [`start`], with `extra` (top-level YAML) added to the config.
async fn start_with(dir: &Path, upstream: &str, extra: &str) -> Server {
    let port = free_port();
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: {}\ndata_dir: {}\nupstream:\n  url: {}\ntls:\n  certificate: {}\n  key: {}\n{extra}",
            q(&format!("127.0.0.1:{port}")),
            q(&dir.join("data").display().to_string()),
            q(upstream),
            q(&dir.join("tls.crt").display().to_string()),
            q(&dir.join("tls.key").display().to_string()),
        ),
    )
    .unwrap();
    let log = dir.join("mirror.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(common::ocimirror_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let s = Server { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.log().contains(&format!("listening on 127.0.0.1:{port}")) {
        assert!(Instant::now() < deadline, "no start:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s
}

fn trusting(p: &Pair) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(p.cert_pem.as_bytes()).unwrap())
        .tls_info(true)
        .build()
        .unwrap()
}

/// The DER certificate a fresh connection is served.
async fn served_cert(port: u16, trust: &Pair) -> Option<Vec<u8>> {
    let r = trusting(trust)
        .get(format!("https://localhost:{port}/v2/"))
        .send()
        .await
        .ok()?;
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_over_http2_and_skopeo_pulls_through_it() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("tls/app", "v1", 901).await;
    let dir = tempfile::tempdir().unwrap();
    let p = pair("first");
    install(dir.path(), &p);
    let s = start(dir.path(), &reg.url()).await;

    let r = trusting(&p)
        .get(format!(
            "https://localhost:{}/v2/tls/app/manifests/v1",
            s.port
        ))
        .header("accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN offers h2");
    assert_eq!(r.bytes().await.unwrap(), img.manifest);

    // Plain HTTP on the TLS port gets no answer.
    assert!(
        client()
            .get(format!("http://127.0.0.1:{}/v2/", s.port))
            .send()
            .await
            .is_err()
    );

    // skopeo, verifying the certificate against the CA given in its cert dir.
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), &p.cert_pem).unwrap();
    let out = tokio::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--no-creds", "--cert-dir"])
        .arg(certs.path())
        .arg(format!("docker://localhost:{}/tls/app:v1", s.port))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    assert_eq!(out.stdout, img.manifest);
    // Without the CA, skopeo refuses the self-signed certificate.
    let out = tokio::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--no-creds"])
        .arg(format!("docker://localhost:{}/tls/app:v1", s.port))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}

/// Without `auth.realm` and with no proxy in front, a challenge's realm is the token endpoint
/// where the client reached the mirror, over `https://` since the mirror serves TLS itself:
/// over HTTP/1.1 (`Host`) and HTTP/2 (`:authority`) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_realm_of_a_mirror_serving_tls_is_https() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair("realm");
    install(dir.path(), &p);
    let (key, cert) = ocimirror_keygen(dir.path());
    let auth = format!(
        "auth:\n  key: {}\n  certificate: {}\n  users:\n    \"\": {{}}\n",
        q(&key),
        q(&cert)
    );
    let s = start_with(dir.path(), &closed_url(), &auth).await;
    let want = format!(
        "Bearer realm=\"https://localhost:{}/auth\",service=\"ocimirror\"",
        s.port
    );
    let h1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(p.cert_pem.as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    for (c, version) in [
        (h1, reqwest::Version::HTTP_11),
        (trusting(&p), reqwest::Version::HTTP_2),
    ] {
        let r = c
            .get(format!("https://localhost:{}/v2/", s.port))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 401);
        assert_eq!(header(r.headers(), "www-authenticate"), want, "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_without_a_restart_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = pair("first");
    install(dir.path(), &first);
    let s = start(dir.path(), &closed_url()).await;
    assert_eq!(served_cert(s.port, &first).await, Some(first.der.clone()));

    // File mtimes have a coarse granularity on some file systems: let one tick pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = pair("second");
    install(dir.path(), &second);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if served_cert(s.port, &second).await == Some(second.der.clone()) {
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken file is refused; the certificate in force stays.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(
        dir.path().join("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !s.log().contains("TLS certificate reload refused") {
        assert!(Instant::now() < deadline, "no refusal logged:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served_cert(s.port, &second).await, Some(second.der.clone()));
}

#[test]
fn config_check_names_the_tls_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "tls:\n  certificate: {}\n",
            q(&dir.path().join("none.crt").display().to_string())
        ),
    )
    .unwrap();
    let (ok, err) = config_check(&cfg);
    assert!(!ok);
    assert!(
        err.contains("line 1: tls: needs both certificate and key"),
        "{err}"
    );

    install(dir.path(), &pair("x"));
    std::fs::write(
        &cfg,
        format!(
            "tls:\n  certificate: {}\n  key: {}\n",
            q(&dir.path().join("tls.crt").display().to_string()),
            q(&dir.path().join("missing.key").display().to_string())
        ),
    )
    .unwrap();
    let (ok, err) = config_check(&cfg);
    assert!(!ok);
    assert!(err.contains("missing.key"), "{err}");
}

/// An upstream served over HTTPS with a certificate of the operator's own CA: the mirror
/// trusts it through the platform's roots (`SSL_CERT_FILE` here; read once for all of its
/// per-worker clients, `client_tls`) and pulls through it; a mirror that does not trust that CA
/// refuses the upstream's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_trusted_through_the_platforms_roots() {
    let mut reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("tls/up", "v1", 902).await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &pair("upstream"));
    let ca = dir.path().join("tls.crt");
    reg.restart(RegistryOpts {
        tls: Some((ca.clone(), dir.path().join("tls.key"))),
        ..Default::default()
    })
    .await;
    let upstream = format!("https://localhost:{}", reg.port);

    let m =
        Mirror::start(MirrorOpts::upstream(&upstream).env("SSL_CERT_FILE", ca.to_str().unwrap()))
            .await;
    pull_and_check_oci(&m.hostport(), &img, None).await;

    let other = tempfile::tempdir().unwrap();
    install(other.path(), &pair("another ca"));
    let untrusting = Mirror::start(MirrorOpts::upstream(&upstream).env(
        "SSL_CERT_FILE",
        other.path().join("tls.crt").to_str().unwrap(),
    ))
    .await;
    let r = untrusting
        .get_manifest("tls/up", "v1")
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_server_error(),
        "{}: {}",
        r.status(),
        untrusting.log_text()
    );
}
