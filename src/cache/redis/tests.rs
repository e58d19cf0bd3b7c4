//! Tests of the Redis cache against a real `redis-server`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use redis::Client;

use super::health::{BACKOFF, Health, LOG_EVERY};
use super::*;

// Shared with the integration harness, which uses more of it.
#[allow(dead_code)]
#[path = "../../../tests/parts/redis_process.rs"]
mod process;

use process::{RedisProcess, redis_server_runs};

/// Whether `redis-server` can run here; without it the Redis tests skip, unless
/// `OCIMIRROR_REQUIRE_ALL` is set (the test script sets it), where they fail.
fn redis_installed() -> bool {
    crate::util::tool_or_skip(
        redis_server_runs(),
        "redis-server",
        "apt-get install redis-server",
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A real `redis-server` on a loopback port; killed when dropped. Stop and start it again on the
/// same port to simulate an outage.
struct Server {
    process: RedisProcess,
    port: u16,
}

impl Server {
    async fn start() -> Option<Server> {
        Server::start_with(free_port(), |port| vec!["--port".into(), port.to_string()]).await
    }

    /// `args(port)`: how to listen (plain or TLS) and anything else.
    async fn start_with(port: u16, args: impl Fn(u16) -> Vec<String>) -> Option<Server> {
        if !redis_installed() {
            return None;
        }
        let mut s = Server {
            process: RedisProcess::new(None, args(port), "Ready to accept connections"),
            port,
        };
        s.run().await;
        Some(s)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.process.dir().join(name)
    }

    async fn run(&mut self) {
        self.process.run().await;
    }

    fn stop(&mut self) {
        self.process.stop();
    }

    fn signal(&self, sig: &str) {
        self.process.signal(sig);
    }
}

fn config(url: &str) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        ..RedisConfig::default()
    }
}

fn manifest(i: u64) -> ManifestEntry {
    ManifestEntry {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: i,
    }
}

/// One write and read back; `true` when the cache answered from Redis.
async fn works(c: &RedisCache, i: u64) -> bool {
    let d = Digest::sha256_of(format!("probe {i}").as_bytes());
    c.set_manifest(&d, manifest(i)).await;
    c.manifest(&d).await == Some(manifest(i))
}

/// Polls until the cache works again, for at most `attempts` tries 100 ms apart; how many.
async fn recovers_within(c: &RedisCache, attempts: u64) -> u64 {
    for i in 1..=attempts {
        if works(c, i).await {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the cache did not work again within {attempts} attempts");
}

/// Both a read and a write with Redis unusable: a miss and no error, quickly, and counted.
async fn fails_softly(c: &RedisCache) {
    let before = c.errors();
    let d = Digest::sha256_of(b"while down");
    let t = Instant::now();
    assert_eq!(c.manifest(&d).await, None);
    c.set_manifest(&d, manifest(1)).await;
    assert_eq!(c.tag("r", "t").await, None);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(c.errors() >= before + 3, "{} errors", c.errors() - before);
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test server")
}

#[tokio::test]
async fn behaviour_suite() {
    let Some(server) = Server::start().await else {
        return;
    };
    let c = RedisCache::new(&config(&server.url())).unwrap();
    super::super::suite::run(&c).await;
    assert_eq!(c.errors(), 0);
}

#[tokio::test]
async fn keys_and_values_are_as_documented() {
    let Some(server) = Server::start().await else {
        return;
    };
    let c = RedisCache::new(&RedisConfig {
        ttl: "1h".into(),
        ..config(&server.url())
    })
    .unwrap();
    let d = Digest::sha256_of(b"m");
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    c.set_tag(
        "docker.io/library/alpine",
        "3.20",
        TagEntry {
            digest: d.clone(),
            checked_at: at,
        },
    )
    .await;
    c.set_manifest(&d, manifest(42)).await;

    let mut r = raw(&server.url()).await;
    let tag_key = "ocimirror:tag:docker.io/library/alpine:3.20";
    let manifest_key = format!("ocimirror:manifest:{d}");
    let tag: String = redis::cmd("GET")
        .arg(tag_key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        tag,
        format!(r#"{{"digest":"{d}","checked_at":1700000000123}}"#)
    );
    let m: String = redis::cmd("GET")
        .arg(&manifest_key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        m,
        r#"{"media_type":"application/vnd.oci.image.manifest.v1+json","size":42}"#
    );
    for key in [tag_key, &manifest_key] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert!((3_500_000..=3_600_000).contains(&ttl), "{key}: {ttl}");
    }

    // A value this version cannot read is a miss, counted.
    let _: () = redis::cmd("SET")
        .arg(&manifest_key)
        .arg("{\"future\":true}")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(c.manifest(&d).await, None);
    assert_eq!(c.errors(), 1);
}

#[tokio::test]
async fn prefixes_keep_mirrors_apart() {
    let Some(server) = Server::start().await else {
        return;
    };
    let a = RedisCache::new(&config(&server.url())).unwrap();
    let b = RedisCache::new(&RedisConfig {
        key_prefix: "other:".into(),
        ..config(&server.url())
    })
    .unwrap();
    let d = Digest::sha256_of(b"m");
    a.set_manifest(&d, manifest(1)).await;
    assert_eq!(b.manifest(&d).await, None);
    b.set_manifest(&d, manifest(2)).await;
    assert_eq!(a.manifest(&d).await, Some(manifest(1)));
    assert_eq!(b.manifest(&d).await, Some(manifest(2)));
}

#[tokio::test]
async fn redis_going_away_and_coming_back() {
    let Some(mut server) = Server::start().await else {
        return;
    };
    let c = RedisCache::new(&config(&server.url())).unwrap();
    assert!(works(&c, 0).await);

    server.stop();
    fails_softly(&c).await;
    // Still down after the back-off: each try is one quick refused connection.
    tokio::time::sleep(BACKOFF).await;
    fails_softly(&c).await;

    server.run().await;
    let attempts = recovers_within(&c, 50).await;
    eprintln!("working again after {attempts} attempts");
    // The entries written before the outage went with the server (no persistence).
    assert!(works(&c, 100).await);
}

#[tokio::test]
async fn created_while_redis_is_down() {
    if !redis_installed() {
        return;
    }
    let port = free_port();
    let c = RedisCache::new(&config(&format!("redis://127.0.0.1:{port}/0"))).unwrap();
    fails_softly(&c).await;
    let Some(_server) = Server::start_with(port, |p| vec!["--port".into(), p.to_string()]).await
    else {
        return;
    };
    recovers_within(&c, 50).await;
}

#[tokio::test]
async fn a_hung_redis_costs_at_most_the_command_timeout() {
    let Some(server) = Server::start().await else {
        return;
    };
    let c = RedisCache::new(&RedisConfig {
        command_timeout: "300ms".into(),
        ..config(&server.url())
    })
    .unwrap();
    assert!(works(&c, 0).await);

    server.signal("STOP");
    let d = Digest::sha256_of(b"hung");
    let t = Instant::now();
    assert_eq!(c.manifest(&d).await, None);
    let first = t.elapsed();
    assert!(first >= Duration::from_millis(250), "{first:?}");
    // Backing off: the next ones do not wait at all.
    c.set_manifest(&d, manifest(1)).await;
    assert_eq!(c.manifest(&d).await, None);
    let all = t.elapsed();
    assert!(all < Duration::from_secs(3), "{all:?}");
    assert_eq!(c.errors(), 3);

    server.signal("CONT");
    recovers_within(&c, 50).await;
}

#[tokio::test]
async fn password_file_overrides_the_url_and_is_read_again_after_a_refusal() {
    let Some(server) = Server::start_with(free_port(), |p| {
        vec![
            "--port".into(),
            p.to_string(),
            "--requirepass".into(),
            "s3cret".into(),
        ]
    })
    .await
    else {
        return;
    };
    let pf = server.path("password");
    let url = format!("redis://:wrong@127.0.0.1:{}/0", server.port);

    // Without the file, the URL's (wrong) password: refused, a miss.
    let c = RedisCache::new(&config(&url)).unwrap();
    fails_softly(&c).await;

    std::fs::write(&pf, "s3cret\n").unwrap();
    let good = RedisCache::new(&RedisConfig {
        password_file: Some(pf.clone()),
        ..config(&url)
    })
    .unwrap();
    assert!(works(&good, 0).await);

    // A rotated secret: refused until the file holds the new one, then read again.
    std::fs::write(&pf, "old\n").unwrap();
    let rotating = RedisCache::new(&RedisConfig {
        password_file: Some(pf.clone()),
        ..config(&url)
    })
    .unwrap();
    fails_softly(&rotating).await;
    std::fs::write(&pf, "s3cret\n").unwrap();
    recovers_within(&rotating, 50).await;
}

/// A CA, and a certificate for `localhost` and 127.0.0.1 signed by it: (CA PEM, cert, key).
fn tls_material(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let material = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_material(material.path());
    let Some(server) = Server::start_with(free_port(), |p| {
        let s = |p: &Path| p.display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            p.to_string(),
            "--tls-cert-file".into(),
            s(&cert),
            "--tls-key-file".into(),
            s(&key),
            "--tls-ca-cert-file".into(),
            s(&ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    })
    .await
    else {
        return;
    };
    let url = format!("rediss://localhost:{}/0", server.port);
    // Bounds for a loaded test machine: a TLS handshake of a debug build can take more than
    // the production connect timeout when other tests start servers beside this one.
    let c = RedisCache::new(&RedisConfig {
        tls_ca_file: Some(ca.clone()),
        connect_timeout: "10s".into(),
        command_timeout: "10s".into(),
        ..config(&url)
    })
    .unwrap();
    super::super::suite::run(&c).await;
    assert_eq!(c.errors(), 0);

    // The system roots do not trust the private CA: no connection, a miss.
    let untrusted = RedisCache::new(&config(&url)).unwrap();
    fails_softly(&untrusted).await;
}

#[test]
fn validate_reports_every_problem() {
    assert_eq!(RedisConfig::default().validate(), Ok(()));
    let c = RedisConfig {
        url: "http://example.com".into(),
        password_file: Some("/nonexistent/password".into()),
        connect_timeout: "0s".into(),
        command_timeout: "soon".into(),
        ttl: "10ms".into(),
        ..RedisConfig::default()
    };
    let problems = c.validate().unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "connect_timeout",
            "command_timeout",
            "ttl",
            "url",
            "password_file"
        ],
        "{problems:?}"
    );
    assert!(RedisCache::new(&c).is_err());

    let c = RedisConfig {
        url: "redis://127.0.0.1:6379/0".into(),
        tls_ca_file: Some("/nonexistent/ca.pem".into()),
        ..RedisConfig::default()
    };
    let problems = c.validate().unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().all(|(k, _)| k == "tls_ca_file"));

    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), "not a certificate").unwrap();
    let c = RedisConfig {
        url: "rediss://redis.example:6380/1".into(),
        tls_ca_file: Some(garbage.path().into()),
        ..RedisConfig::default()
    };
    let problems = c.validate().unwrap_err();
    assert!(problems[0].1.contains("no PEM certificate"), "{problems:?}");

    let c = config("rediss://redis.example:6380/1#insecure");
    assert_eq!(c.validate().unwrap_err()[0].0, "url");
    for ok in [
        "rediss://redis.example:6380/1",
        "redis://user:pw@redis.example",
        "unix:///run/redis.sock",
    ] {
        assert_eq!(config(ok).validate(), Ok(()), "{ok}");
    }
}

#[test]
fn yaml_shape_and_redacted_debug() {
    let text = "url: redis://:hunter2@redis.internal:6379/2\nkey_prefix: \"m1:\"\n\
                command_timeout: 250ms\nttl: 1d\n";
    let c: RedisConfig = serde_saphyr::from_str(text).unwrap();
    assert_eq!(c.key_prefix, "m1:");
    assert_eq!(c.connect_timeout, "1s");
    assert_eq!(c.validate(), Ok(()));
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    assert!(serde_saphyr::from_str::<RedisConfig>("pool_size: 3\n").is_err());
}

#[test]
fn failures_are_logged_at_most_once_per_period_per_kind() {
    let h = Health::new();
    let every = LOG_EVERY.as_millis() as u64;
    assert_eq!(h.may_log(0, 0), Some(0));
    assert_eq!(h.may_log(0, 5), None);
    assert_eq!(h.may_log(0, every - 1), None);
    // Another kind has its own budget.
    assert_eq!(h.may_log(1, 6), Some(0));
    assert_eq!(h.may_log(0, every), Some(2));
    assert_eq!(h.may_log(0, every + 1), None);
}

#[test]
fn sentinel_urls() {
    let target = |url: &str| super::config::build_target(&config(url));
    for ok in [
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/2",
        "redis+sentinel://s1,s2/mymaster",
        "redis+sentinel://:secret@s1:26379/mymaster/0",
    ] {
        assert!(
            matches!(target(ok), Ok(super::config::Target::Sentinel(_))),
            "{ok}"
        );
        assert_eq!(config(ok).validate(), Ok(()), "{ok}");
    }
    let Ok(super::config::Target::Sentinel(s)) =
        target("redis+sentinel://user:pw@a:1,[::1]:2,b/m/3")
    else {
        panic!("not a Sentinel target");
    };
    assert_eq!(
        s.sentinels,
        [
            redis::ConnectionAddr::Tcp("a".into(), 1),
            redis::ConnectionAddr::Tcp("::1".into(), 2),
            redis::ConnectionAddr::Tcp("b".into(), 26379),
        ]
    );
    assert_eq!(
        (
            s.master_name.as_str(),
            s.db,
            s.username.as_deref(),
            s.password.as_deref()
        ),
        ("m", 3, Some("user"), Some("pw"))
    );
    for bad in [
        "redis+sentinel://s1:26379",
        "redis+sentinel://s1:26379/",
        "redis+sentinel://s1:port/m",
        "redis+sentinel://s1/m/x",
        "redis+sentinel://s1/m/0/more",
        "rediss+sentinel://s1/m",
    ] {
        let problems = config(bad).validate().unwrap_err();
        assert_eq!(problems[0].0, "url", "{bad}: {problems:?}");
    }
    let shown = format!("{:?}", config("redis+sentinel://u:hunter2@a:1,b:2/m"));
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn cluster_nodes() {
    let cluster = |nodes: &[&str]| RedisConfig {
        cluster: nodes.iter().map(|s| s.to_string()).collect(),
        ..RedisConfig::default()
    };
    let ok = cluster(&["redis://127.0.0.1:7000", "127.0.0.1:7001"]);
    assert_eq!(ok.validate(), Ok(()));
    assert!(matches!(
        super::config::build_target(&ok),
        Ok(super::config::Target::Cluster(_))
    ));
    let keys = |c: RedisConfig| -> Vec<String> {
        c.validate()
            .unwrap_err()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(
        keys(cluster(&["redis://a:1/2", "http://b"])),
        ["cluster[0]", "cluster[1]"]
    );
    assert_eq!(keys(cluster(&["redis://a:1", "rediss://b:1"])), ["cluster"]);
    assert_eq!(
        keys(RedisConfig {
            url: "redis://elsewhere:6379".into(),
            ..cluster(&["a:1"])
        }),
        ["cluster"]
    );
    let text = "cluster:\n  - redis://a:7000\n  - b:7001\n";
    let c: RedisConfig = serde_saphyr::from_str(text).unwrap();
    assert_eq!(c.cluster, ["redis://a:7000", "b:7001"]);
    assert_eq!(c.validate(), Ok(()));
}

#[tokio::test]
async fn fill_leases_name_their_holder_and_pass_only_from_a_gone_one() {
    use crate::cache::lease::{LeaseOutcome, Leases};
    let Some(server) = Server::start().await else {
        return;
    };
    let c = RedisCache::new(&config(&server.url())).unwrap();
    let ttl = Duration::from_secs(30);
    let a = match c
        .try_acquire("fill:x", ttl, Some("http://10.0.0.1:5001"))
        .await
    {
        LeaseOutcome::Acquired(t) => t,
        other => panic!("{other:?}"),
    };
    // Another replica learns who holds it, and where to reach it.
    let held = match c
        .try_acquire("fill:x", ttl, Some("http://10.0.0.2:5001"))
        .await
    {
        LeaseOutcome::HeldElsewhere(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(held, a);
    assert_eq!(
        crate::cache::lease::holder_peer(&held),
        Some("http://10.0.0.1:5001")
    );
    // Taken from the holder it saw, once: a third replica seeing the old value loses.
    let b = match c
        .take_over("fill:x", &held, ttl, Some("http://10.0.0.2:5001"))
        .await
    {
        LeaseOutcome::Acquired(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        c.take_over("fill:x", &held, ttl, Some("http://10.0.0.3:5001"))
            .await,
        LeaseOutcome::HeldElsewhere(b.clone())
    );
    // The old holder can neither renew nor release it any more; the new one can.
    assert!(!c.renew("fill:x", &a, ttl).await);
    c.release("fill:x", &a).await;
    assert!(c.renew("fill:x", &b, ttl).await);
    c.release("fill:x", &b).await;
    assert!(matches!(
        c.try_acquire("fill:x", ttl, None).await,
        LeaseOutcome::Acquired(_)
    ));
    assert_eq!(c.errors(), 0);
}
