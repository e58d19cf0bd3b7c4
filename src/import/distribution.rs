//! Distribution's `config.yml` to ocimirror's settings: listener, log, storage, the Redis
//! descriptor cache, the proxy (upstream and expiry), and the registry's own `auth` when no
//! docker_auth config replaces it.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::durations::{format_duration, go_duration};
use super::source::{Src, scalar_string};
use super::tree::{Node, s};
use super::{NoteKind, Out};

/// Distribution's `auth` as found, for combining with docker_auth.
#[derive(Default)]
pub(super) struct DistAuth {
    pub(super) token: Option<DistToken>,
    pub(super) htpasswd: Option<String>,
}

#[derive(Default)]
pub(super) struct DistToken {
    pub(super) realm: Option<String>,
    pub(super) service: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) rootcertbundle: Option<String>,
    pub(super) jwks: Option<String>,
}

const STORAGE_DRIVERS: &[&str] = &[
    "filesystem",
    "s3",
    "azure",
    "gcs",
    "swift",
    "oss",
    "inmemory",
];

pub(super) fn map_distribution(d: &Src, out: &mut Out) -> DistAuth {
    d.mark("version");
    // listen
    let unix = d.str("http.net").is_some_and(|n| n == "unix");
    if let Some(addr) = d.str("http.addr") {
        if unix {
            out.note(
                NoteKind::NotCarried,
                d.key("http.addr"),
                format!("{addr} is a unix socket (http.net: unix); ocimirror listens on TCP only: listen left at its default"),
            );
        } else {
            out.set("listen", s(addr));
        }
    }
    // TLS: ocimirror serves it itself from a PEM pair.
    if let (Some(c), Some(k)) = (d.str("http.tls.certificate"), d.str("http.tls.key")) {
        out.set("tls.certificate", s(c));
        out.set("tls.key", s(k));
    }
    if let Some(v) = d.get("http.draintimeout") {
        match go_duration(v) {
            Ok(t) => out.set("server.shutdown_timeout", s(format_duration(t))),
            Err(e) => out.note(NoteKind::NotCarried, d.key("http.draintimeout"), e),
        }
    }

    // log
    let level = d.str("log.level").or_else(|| d.str("loglevel"));
    d.mark("loglevel");
    let mut level = level.map(|l| match l.to_ascii_lowercase().as_str() {
        "panic" | "fatal" => "error".to_owned(),
        "warning" => "warn".to_owned(),
        "trace" => "trace".to_owned(),
        other => other.to_owned(),
    });
    if d.bool("log.accesslog.disabled") == Some(true) {
        let base = level.clone().unwrap_or_else(|| "info".into());
        level = Some(format!("{base},access=warn"));
        out.note(
            NoteKind::Changed,
            d.key("log.accesslog.disabled"),
            "the access log is ocimirror's `access` target: silenced by log.level `…,access=warn`",
        );
    }
    if let Some(l) = level {
        out.set("log.level", s(l));
    }
    if let Some(f) = d.str("log.formatter") {
        match f.as_str() {
            "text" => out.set("log.format", s("text")),
            "json" => out.set("log.format", s("json")),
            "logstash" => {
                out.set("log.format", s("json"));
                out.note(
                    NoteKind::Changed,
                    d.key("log.formatter"),
                    "logstash is written as ocimirror's JSON lines (other field names)",
                );
            }
            other => out.note(
                NoteKind::NotCarried,
                d.key("log.formatter"),
                format!("{other:?} is not a format ocimirror writes (text, json)"),
            ),
        }
    }

    map_storage(d, out);
    map_cache(d, out);
    map_proxy(d, out);

    // auth
    let mut auth = DistAuth::default();
    if d.has("auth.token") {
        d.mark("auth.token.autoredirect");
        auth.token = Some(DistToken {
            realm: d.str("auth.token.realm"),
            service: d.str("auth.token.service"),
            issuer: d.str("auth.token.issuer"),
            rootcertbundle: d.str("auth.token.rootcertbundle"),
            jwks: d.str("auth.token.jwks"),
        });
        if d.peek("auth.token").is_some_and(|v| !v.is_object()) {
            d.mark("auth.token");
        }
        if d.bool("auth.token.autoredirect") == Some(true) {
            d.mark("auth.token.autoredirectpath");
            out.note(
                NoteKind::Changed,
                d.key("auth.token.autoredirect"),
                "ocimirror sends clients to auth.realm as configured, not to a realm derived from each request's Host",
            );
        }
    }
    if d.has("auth.htpasswd") {
        auth.htpasswd = d.str("auth.htpasswd.path");
        d.mark("auth.htpasswd.realm");
        if d.peek("auth.htpasswd").is_some_and(|v| !v.is_object()) {
            d.mark("auth.htpasswd");
        }
        if auth.htpasswd.is_none() {
            out.note(
                NoteKind::NotCarried,
                d.key("auth.htpasswd"),
                "no path: Distribution creates a file with a generated user then; create an htpasswd file (htpasswd -nB) and set auth.htpasswd",
            );
        }
    }
    auth
}

fn map_storage(d: &Src, out: &mut Out) {
    d.mark("storage.cache.blobdescriptor");
    d.mark("storage.cache.layerinfo");
    // Distribution refuses more than one driver; prefer the ones ocimirror has.
    let mut drivers: Vec<String> = d
        .keys("storage")
        .into_iter()
        .filter(|k| STORAGE_DRIVERS.contains(&k.as_str()))
        .collect();
    drivers.sort_by_key(|k| STORAGE_DRIVERS.iter().position(|x| x == k));
    match drivers.first().map(String::as_str) {
        None => {
            out.note(
                NoteKind::NotCarried,
                d.key("storage"),
                "no storage driver is configured (Distribution would not start); ocimirror's default, <data_dir>/storage, is used",
            );
        }
        Some("filesystem") => {
            out.set("storage.backend", s("filesystem"));
            // Distribution's default root.
            let root = d
                .str("storage.filesystem.rootdirectory")
                .unwrap_or_else(|| "/var/lib/registry".into());
            out.set("storage.filesystem.root", s(root));
            if d.keys("storage.filesystem").is_empty() {
                d.mark("storage.filesystem");
            }
        }
        Some("s3") => map_s3(d, out),
        Some("gcs") => super::cloud_storage::map_gcs(d, out),
        Some("azure") => super::cloud_storage::map_azure(d, out),
        Some(other) => {
            d.mark(&format!("storage.{other}"));
            out.note(
                NoteKind::NotCarried,
                d.key(&format!("storage.{other}")),
                format!("ocimirror has no {other} backend (filesystem, S3, GCS and Azure only): the output keeps its cache under data_dir, so the existing cache is not reused"),
            );
        }
    }
    for extra in drivers.iter().skip(1) {
        d.mark(&format!("storage.{extra}"));
        out.note(
            NoteKind::NotCarried,
            d.key(&format!("storage.{extra}")),
            format!(
                "a second storage driver (Distribution refuses this); {} is used",
                drivers[0]
            ),
        );
    }
    if let Some(n) = d.get("storage.cache.blobdescriptorsize") {
        match n.as_u64() {
            Some(n) if n > 0 => out.set("cache.memory.max_entries", Node::Int(n as i64)),
            _ => out.note(
                NoteKind::NotCarried,
                d.key("storage.cache.blobdescriptorsize"),
                format!("{n} is not a positive count"),
            ),
        }
    }
    if d.bool("storage.maintenance.readonly.enabled") == Some(true) {
        out.set("storage.read_only", Node::Bool(true));
    }
}

fn map_s3(d: &Src, out: &mut Out) {
    out.set("storage.backend", s("s3"));
    let p = |k: &str| format!("storage.s3.{k}");
    let secure = d.bool(&p("secure")).unwrap_or(true);
    if let Some(ep) = d.str(&p("regionendpoint")) {
        let ep = if ep.contains("://") {
            ep
        } else if secure {
            format!("https://{ep}")
        } else {
            format!("http://{ep}")
        };
        out.set("storage.s3.endpoint", s(ep));
    } else if !secure {
        out.note(
            NoteKind::NotCarried,
            d.key(&p("secure")),
            "plain HTTP to AWS's own endpoint: ocimirror uses HTTPS there",
        );
    }
    out.copy_str(d, &p("region"), "storage.s3.region");
    out.copy_str(d, &p("bucket"), "storage.s3.bucket");
    out.copy_str(d, &p("rootdirectory"), "storage.s3.root");
    if let Some(f) = d.bool(&p("forcepathstyle")) {
        out.set("storage.s3.path_style", Node::Bool(f));
    }
    out.copy_str(d, &p("accesskey"), "storage.s3.access_key_id");
    out.copy_str(d, &p("secretkey"), "storage.s3.secret_access_key");
    out.copy_str(d, &p("sessiontoken"), "storage.s3.session_token");
    // Empty credentials mean "the instance's": ocimirror's default chain.
    d.mark(&p("accesskey"));
    d.mark(&p("secretkey"));
    if let Some(v) = d.get(&p("chunksize")) {
        let bytes = scalar_string(v).and_then(|s| s.parse::<u64>().ok());
        match bytes {
            Some(b) => {
                let mib = b.div_ceil(1024 * 1024).clamp(5, 5120);
                out.set("storage.s3.part_size_mib", Node::Int(mib as i64));
                if b % (1024 * 1024) != 0 || !(5..=5120).contains(&(b / (1024 * 1024))) {
                    out.note(
                        NoteKind::Changed,
                        d.key(&p("chunksize")),
                        format!("{b} bytes: ocimirror counts whole MiB (5–5120): {mib} MiB"),
                    );
                }
            }
            None => out.note(
                NoteKind::NotCarried,
                d.key(&p("chunksize")),
                "not a byte count",
            ),
        }
    }
    match d.bool(&p("v4auth")) {
        Some(false) => out.note(
            NoteKind::Changed,
            d.key(&p("v4auth")),
            "ocimirror always signs with AWS Signature Version 4",
        ),
        _ => d.mark(&p("v4auth")),
    }
    // encrypt: false is what ocimirror does; true is listed as not carried over.
    if d.peek(&p("encrypt"))
        .is_some_and(|v| v == &Value::Bool(false) || v == "false")
    {
        d.mark(&p("encrypt"));
    }
}

fn map_cache(d: &Src, out: &mut Out) {
    let descriptor = d
        .peek("storage.cache.blobdescriptor")
        .or_else(|| d.peek("storage.cache.layerinfo"))
        .and_then(scalar_string);
    let redis = descriptor.as_deref() == Some("redis");
    if !redis {
        out.note_set(d, "redis", NoteKind::NotCarried, "configured, but storage.cache.blobdescriptor is not redis, so Distribution did not use it");
        return;
    }
    out.set("cache.backend", s("redis"));
    let addr = d.str("redis.addr").or_else(|| {
        let list = d.get("redis.addrs")?.as_array()?.clone();
        if list.len() > 1 {
            out.note(
                NoteKind::NotCarried,
                d.key("redis.addrs"),
                "several addresses (a cluster or sentinels): ocimirror talks to one Redis; the first is used",
            );
        }
        list.first().and_then(scalar_string)
    });
    let Some(addr) = addr else {
        out.note(
            NoteKind::NotCarried,
            d.key("redis"),
            "blobdescriptor is redis but no redis.addr: ocimirror's default URL (redis://127.0.0.1:6379/0) is used",
        );
        return;
    };
    let tls = d.bool("redis.tls.enabled") == Some(true);
    let db = d.str("redis.db").unwrap_or_else(|| "0".into());
    let user = d.str("redis.username");
    let password = d.str("redis.password");
    let enc = |s: &str| {
        url::form_urlencoded::byte_serialize(s.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    let auth = match (user, password) {
        (Some(u), Some(p)) => format!("{}:{}@", enc(&u), enc(&p)),
        (None, Some(p)) => format!(":{}@", enc(&p)),
        (Some(u), None) => format!("{}@", enc(&u)),
        (None, None) => String::new(),
    };
    let scheme = if tls { "rediss" } else { "redis" };
    out.set(
        "cache.redis.url",
        s(format!("{scheme}://{auth}{addr}/{db}")),
    );
    if let Some(v) = d.get("redis.dialtimeout") {
        match go_duration(v) {
            Ok(t) if !t.is_zero() => out.set("cache.redis.connect_timeout", s(format_duration(t))),
            Ok(_) => {}
            Err(e) => out.note(NoteKind::NotCarried, d.key("redis.dialtimeout"), e),
        }
    }
}

fn map_proxy(d: &Src, out: &mut Out) {
    let Some(remote) = d.str("proxy.remoteurl") else {
        out.note_set(
            d,
            "proxy",
            NoteKind::NotCarried,
            "no remoteurl: Distribution does not proxy without one",
        );
        out.set("mode", s("offline"));
        out.note(
            NoteKind::Changed,
            d.key("proxy"),
            "absent: this Distribution serves what was pushed to it. ocimirror takes no pushes; the output serves the existing content (mode: offline) and never contacts an upstream. To mirror a registry, set upstream.url and remove mode: offline",
        );
        return;
    };
    d.mark("proxy.on");
    out.set("upstream.url", s(remote.trim_end_matches('/')));
    // Distribution ignores containerd's `ns` and answers every registry from remoteurl; a
    // remote other than Docker Hub keeps answering containerd's docker.io pulls (its usual use).
    if let Ok(url) = url::Url::parse(&remote)
        && url.host_str().is_some()
        && !crate::upstream::config::is_docker_hub(&url)
    {
        let host = crate::upstream::config::host_port(&url);
        out.set(
            "upstream.ns",
            Node::Seq(vec![s("docker.io"), s(host.clone())]),
        );
        out.note(
            NoteKind::Changed,
            d.key("proxy"),
            format!(
                "Distribution answers containerd's ns=<any registry> from remoteurl; ocimirror answers only the upstream's ns values: upstream.ns is [docker.io, {host}]. Remove docker.io if {host} does not mirror Docker Hub"
            ),
        );
    }
    out.copy_str(d, "proxy.username", "upstream.username");
    if let Some(p) = d.str("proxy.password") {
        out.set("upstream.password", s(p));
        out.note(
            NoteKind::Changed,
            d.key("proxy.password"),
            "copied inline as upstream.password; prefer upstream.password_file or OCIMIRROR_UPSTREAM__PASSWORD",
        );
    }
    // Distribution's proxy cache expires content 168h after it was fetched unless ttl says
    // otherwise (0: never).
    let ttl = match d.get("proxy.ttl") {
        None => Some(Duration::from_secs(168 * 3600)),
        Some(v) => match go_duration(v) {
            Ok(t) if t.is_zero() => None,
            Ok(t) => Some(t),
            Err(e) => {
                out.note(NoteKind::NotCarried, d.key("proxy.ttl"), e);
                None
            }
        },
    };
    if let Some(ttl) = ttl {
        if d.bool("storage.maintenance.readonly.enabled") == Some(true) {
            out.note(
                NoteKind::NotCarried,
                d.key("proxy.ttl"),
                "storage is read-only, so nothing expires; no expiry section",
            );
        } else {
            out.set("expiry.max_age", s(format_duration(ttl)));
            out.note(
                NoteKind::Changed,
                d.key(if d.has("proxy.ttl") {
                    "proxy.ttl"
                } else {
                    "proxy"
                }),
                format!(
                    "Distribution's proxy cache expiry ({}{}) became expiry.max_age: ocimirror counts from the last pull, not from the fetch, and keeps what a kept image references",
                    format_duration(ttl),
                    if d.has("proxy.ttl") { "" } else { ", its default" }
                ),
            );
        }
    }
}

/// The registry's own `auth`, when no docker_auth config is imported beside it.
pub(super) fn map_auth(d: &Src, auth: &DistAuth, key_dir: &Path, out: &mut Out) {
    match (&auth.token, &auth.htpasswd) {
        (Some(t), _) => {
            // The registry verifies tokens that an external service (docker_auth) issues.
            out.set("role", s("registry"));
            out.set("auth", Node::map());
            if let Some(v) = &t.service {
                out.set("auth.service", s(v.clone()));
            }
            match &t.realm {
            Some(v) if v.starts_with("http://") || v.starts_with("https://") => {
                out.set("auth.realm", s(v.clone()))
            }
            Some(v) => out.note(
                NoteKind::Todo,
                d.key("auth.token.realm"),
                format!("{v:?} is not a URL: set auth.realm to the token service's URL (https://…/auth)"),
            ),
            None => {}
        }
            if let Some(h) = &auth.htpasswd {
                out.note(
                NoteKind::NotCarried,
                d.key("auth.htpasswd"),
                format!("{h}: Distribution allows one authentication scheme; auth.token is the one carried over"),
            );
            }
            if let Some(v) = &t.issuer {
                out.set("auth.trusted_issuers", Node::Seq(vec![s(v.clone())]));
            }
            if let Some(v) = &t.rootcertbundle {
                out.set("auth.trusted_certificates", s(v.clone()));
            }
            if let Some(v) = &t.jwks {
                out.set("auth.trusted_jwks", s(v.clone()));
            }
            out.note(
            NoteKind::Changed,
            d.key("auth.token"),
            "ocimirror verifies the tokens your token service issues (role: registry) and sends clients to the same realm; import its auth_config.yml too (--docker-auth) to replace it with ocimirror's own token service",
        );
        }
        (None, Some(htpasswd)) => {
            out.set("auth.htpasswd", s(htpasswd.clone()));
            let key = key_dir.join("token.key");
            let cert = key_dir.join("token.crt");
            out.set("auth.key", s(key.display().to_string()));
            out.set("auth.certificate", s(cert.display().to_string()));
            out.set(
            "auth.acl",
            Node::Seq(vec![Node::Map(vec![
                ("match".into(), Node::Map(vec![("account".into(), s("/.+/"))])),
                ("actions".into(), Node::Seq(vec![s("*")])),
                (
                    "comment".into(),
                    s("As Distribution's htpasswd: every user in the file may do everything; anonymous requests are refused."),
                ),
            ])]),
        );
            out.note(
            NoteKind::Changed,
            d.key("auth.htpasswd"),
            "Basic authentication became token authentication with the same htpasswd file: clients log in with the same user names and passwords (docker login, or credentials in containerd/podman/skopeo) and are given tokens by ocimirror at /auth",
        );
            if !(key.exists() && cert.exists()) {
                out.note(
                NoteKind::Todo,
                "auth.key".into(),
                format!(
                    "the token service needs a signing key: ocimirror keygen --key {} --certificate {}",
                    key.display(),
                    cert.display()
                ),
            );
            }
            check_htpasswd_path(d, htpasswd, out);
        }
        (None, None) => {}
    }
}

/// Distribution's `silly` scheme, whatever replaces the registry's auth.
pub(super) fn map_silly(d: &Src, out: &mut Out) {
    out.note_set(d, "auth.silly", NoteKind::NotCarried, "a development-only scheme that accepts any Authorization header; the output allows anonymous pulls instead");
}

pub(super) fn check_htpasswd_path(d: &Src, path: &str, out: &mut Out) {
    let p = Path::new(path);
    if p.is_dir() {
        out.note(
            NoteKind::Todo,
            d.key("auth.htpasswd.path"),
            format!("{path} is a directory, not an htpasswd file: Distribution refuses every login with it (\"is a directory\"), and so will ocimirror; point auth.htpasswd at a file of `user:$2y$…` lines (htpasswd -nB)"),
        );
    } else if !p.exists() {
        out.note(
            NoteKind::Todo,
            d.key("auth.htpasswd.path"),
            format!("{path} does not exist here: make sure it is there where ocimirror runs"),
        );
    }
}

/// Why a key of Distribution's config was not carried over.
pub(super) fn not_carried_reason(path: &str) -> &'static str {
    let top = path.split('.').next().unwrap_or(path);
    let two: String = path.split('.').take(2).collect::<Vec<_>>().join(".");
    let three: String = path.split('.').take(3).collect::<Vec<_>>().join(".");
    match (three.as_str(), two.as_str(), top) {
        ("storage.maintenance.uploadpurging", _, _) => {
            "ocimirror has no upload directories (it takes no pushes); its abandoned temporary files are removed at start-up and by expiry passes"
        }
        ("storage.filesystem.maxthreads", _, _) => {
            "no equivalent: ocimirror's file I/O runs on a bounded blocking pool"
        }
        ("http.debug.prometheus", _, _) => "ocimirror serves /metrics on its main address",
        ("redis.tls.certificate" | "redis.tls.key" | "redis.tls.clientcas", _, _) => {
            "Redis client certificates are not supported; a private CA goes in cache.redis.tls_ca_file"
        }
        (_, "storage.delete", _) => {
            "ocimirror refuses DELETE (405); cached content leaves only by expiry or `ocimirror gc`"
        }
        (_, "storage.redirect", _) => {
            "ocimirror serves blobs itself and never redirects clients to the storage"
        }
        (_, "storage.tag", _) => "no equivalent",
        (_, "storage.maintenance", _) => "no equivalent",
        (_, "storage.cache", _) => "no equivalent",
        (_, "http.secret", _) => {
            "not needed: it signs upload state, and ocimirror takes no uploads"
        }
        (_, "http.tls", _) => {
            "ocimirror's TLS (tls.certificate/tls.key) takes a certificate and key only: no client certificates, Let's Encrypt or cipher settings"
        }
        (_, "http.headers", _) => {
            "ocimirror adds no configured response headers; set them at the proxy in front"
        }
        (_, "http.debug", _) => {
            "ocimirror serves /metrics, /healthz and /readyz on its main address"
        }
        (_, "http.prefix", _) => {
            "ocimirror serves /v2 at the root: strip the prefix at the proxy in front"
        }
        (_, "http.host", _) => "ocimirror derives URLs from each request",
        (_, "http.relativeurls", _) => "not needed: ocimirror sends no upload Location headers",
        (_, "http.http2" | "http.h2c", _) => "no setting: ocimirror speaks HTTP/1.1 and HTTP/2",
        (_, "http.net", _) => "ocimirror listens on TCP",
        (_, "log.fields", _) => "ocimirror's log lines carry no configured static fields",
        (_, "log.hooks", _) => "no log hooks: alert on the logs or on /metrics",
        (_, "log.reportcaller", _) => "no equivalent",
        (_, "auth.token", _) => "no equivalent in ocimirror's token verification",
        (_, "proxy.exec", _) => {
            "credential helpers are not supported: set upstream.username and upstream.password_file"
        }
        (_, "proxy.remotenamespace", _) => {
            "not supported: ocimirror requests the names clients ask for"
        }
        (_, "proxy.ttl", _) => "see expiry",
        (_, "proxy.username" | "proxy.password", _) => "no remoteurl, so no upstream to log in to",
        (
            _,
            "redis.pool"
            | "redis.readtimeout"
            | "redis.writetimeout"
            | "redis.maxidleconns"
            | "redis.poolsize"
            | "redis.connmaxidletime"
            | "redis.maxactiveconns"
            | "redis.minidleconns",
            _,
        ) => {
            "ocimirror keeps one multiplexed connection per replica; cache.redis.command_timeout (500ms) bounds each operation"
        }
        (_, _, "notifications") => "ocimirror sends no webhook notifications",
        (_, _, "middleware") => "no middleware: ocimirror serves blobs itself (no CDN redirects)",
        (_, _, "reporting") => "no error-reporting services",
        (_, _, "health") => {
            "ocimirror has fixed /healthz and /readyz endpoints; no configurable checks"
        }
        (_, _, "compatibility") => "no equivalent: manifests are served byte for byte as stored",
        (_, _, "validation") => "applies to pushes; ocimirror takes none",
        (_, _, "policy") => "applies to pushes; ocimirror takes none",
        (_, _, "catalog") => "no setting: /v2/_catalog pages by the client's n",
        (_, _, "auth") => "not an authentication scheme ocimirror can carry over",
        _ => {
            "not a setting ocimirror knows (nor, for an unknown key, Distribution): not carried over"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dist, noted};
    use super::*;

    /// A remote other than Docker Hub keeps answering containerd's docker.io pulls (Distribution
    /// answered every `ns` from it); Docker Hub needs nothing (it answers docker.io anyway).
    #[test]
    fn a_proxy_of_another_registry_keeps_answering_docker_io() {
        let i = dist("version: 0.1\nproxy:\n  remoteurl: https://mirror.gcr.io:8443/\n");
        let ns = |i: &super::super::Imported| {
            i.config.get(&["upstream", "ns"]).map(|n| {
                n.to_json()
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            ns(&i),
            Some(vec![
                "docker.io".to_owned(),
                "mirror.gcr.io:8443".to_owned()
            ])
        );
        assert!(
            noted(&i, NoteKind::Changed, "distribution: proxy"),
            "{:?}",
            i.notes
        );
        let c: crate::config::Config = serde_saphyr::from_str(&i.render()).unwrap();
        assert_eq!(c.upstream.ns.as_deref().map(<[String]>::len), Some(2));
        let hub = dist("version: 0.1\nproxy:\n  remoteurl: https://registry-1.docker.io\n");
        assert_eq!(ns(&hub), None);
    }

    #[test]
    fn redis_url_carries_credentials_tls_and_db() {
        let i = dist(
            "storage:\n  cache:\n    blobdescriptor: redis\n  filesystem: {}\nredis:\n  addrs: [r1:6380, r2:6380]\n  username: u\n  password: 'p@ss w/rd'\n  db: 2\n  tls:\n    enabled: true\n",
        );
        assert_eq!(
            i.config
                .get(&["cache", "redis", "url"])
                .and_then(Node::as_str),
            Some("rediss://u:p%40ss%20w%2Frd@r1:6380/2")
        );
        assert!(noted(&i, NoteKind::NotCarried, "distribution: redis.addrs"));
        let url = url::Url::parse("rediss://u:p%40ss%20w%2Frd@r1:6380/2").unwrap();
        let pw = url.password().unwrap();
        assert_eq!(
            url::form_urlencoded::parse(format!("p={pw}").as_bytes())
                .next()
                .unwrap()
                .1,
            "p@ss w/rd"
        );
    }

    #[test]
    fn read_only_storage_gets_no_expiry() {
        let i = dist(
            "storage:\n  filesystem: {}\n  maintenance:\n    readonly:\n      enabled: true\nproxy:\n  remoteurl: https://r.example\n",
        );
        assert_eq!(
            i.config.get(&["storage", "read_only"]),
            Some(&Node::Bool(true))
        );
        assert_eq!(i.config.get(&["expiry"]), None);
        assert!(noted(&i, NoteKind::NotCarried, "distribution: proxy.ttl"));
    }
}
