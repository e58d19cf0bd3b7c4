//! `ocimirror config import`: an ocimirror config from a Distribution registry's `config.yml`
//! and/or a docker_auth `auth_config.yml`, with every setting that could not be carried over
//! listed.
//!
//! Every key of the sources is accounted for: mapped to an ocimirror key, mapped with a
//! difference in meaning (a [`NoteKind::Changed`] note), or not carried over (a
//! [`NoteKind::NotCarried`] note naming the key and why). Keys nobody expected (a typo, a newer
//! version's option) are listed too, never dropped silently. Distribution's `REGISTRY_*`
//! environment overrides are applied first, as Distribution applies them (Helm charts put most
//! settings there).
//!
//! Decisions:
//! - **Distribution's `auth.htpasswd` becomes token authentication with the same htpasswd
//!   file**, not a note: ocimirror authenticates with tokens only, but every client (docker,
//!   containerd, podman, skopeo) answers a Bearer challenge by sending the same Basic
//!   credentials to the token endpoint, so the same users with the same passwords keep pulling;
//!   dropping it would turn a private registry into an open mirror. Distribution lets every user
//!   in the file do everything, so the ACL gets one rule allowing any authenticated account
//!   everything. The token service needs a signing key that Distribution's config cannot
//!   provide: the output names `token.key`/`token.crt` beside the output file and the notes say
//!   how to create them (`ocimirror keygen`).
//! - **A Distribution without `proxy` is not a mirror**: it serves what was pushed to it. The
//!   output serves that content (`mode: offline`) and never contacts an upstream, rather than
//!   silently turning it into a Docker Hub mirror.
//! - **Distribution's proxy expiry** (`proxy.ttl`, 168h when unset, as Distribution does)
//!   becomes `expiry.max_age`; ocimirror counts from the last pull, Distribution from the fetch.
//! - **docker_auth's unanchored `/regex/` patterns** keep their meaning: ocimirror anchors
//!   regexes, so a pattern whose meaning would change is written as `/.*?(?:R).*/` (the lazy
//!   prefix keeps capture groups what they were) and the rewrite is noted; patterns already
//!   anchored (`^…$`, `.+`, `.*`) are copied as they are.
//! - **Referenced files** (htpasswd, certificates, keys) are carried as paths: they are checked
//!   where the output is written, and the ones missing there are listed, since the output is
//!   usually written for another machine.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Output tree
// ---------------------------------------------------------------------------------------------

/// A YAML value that keeps its keys in the order they were set (serde_json's map sorts them).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    Str(String),
    Bool(bool),
    Int(i64),
}

impl Node {
    fn map() -> Node {
        Node::Map(Vec::new())
    }

    /// Set `path` (creating maps on the way), replacing what was there.
    pub fn set(&mut self, path: &[&str], value: Node) {
        let Node::Map(entries) = self else {
            *self = Node::map();
            return self.set(path, value);
        };
        let (first, rest) = path.split_first().expect("non-empty path");
        let idx = match entries.iter().position(|(k, _)| k == first) {
            Some(i) => i,
            None => {
                entries.push((first.to_string(), Node::map()));
                entries.len() - 1
            }
        };
        if rest.is_empty() {
            entries[idx].1 = value;
        } else {
            if !matches!(entries[idx].1, Node::Map(_)) {
                entries[idx].1 = Node::map();
            }
            entries[idx].1.set(rest, value);
        }
    }

    pub fn get(&self, path: &[&str]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _)| k == first)
                .and_then(|(_, v)| v.get(rest)),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A JSON value, as the config loader sees it (keys sorted).
    pub fn to_json(&self) -> Value {
        match self {
            Node::Map(e) => {
                Value::Object(e.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Node::Seq(s) => Value::Array(s.iter().map(Node::to_json).collect()),
            Node::Str(s) => Value::String(s.clone()),
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
        }
    }

    /// From a source value: maps keep the source's key order where serde_json kept it.
    fn from_json(v: &Value) -> Node {
        match v {
            Value::Object(o) => Node::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v)))
                    .collect(),
            ),
            Value::Array(a) => Node::Seq(a.iter().map(Node::from_json).collect()),
            Value::String(s) => Node::Str(s.clone()),
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Node::Int(i),
                None => Node::Str(n.to_string()),
            },
            Value::Null => Node::map(),
        }
    }

    /// Reorder a map's keys: those in `order` first, in that order, then the rest as they were.
    fn reorder(&mut self, order: &[&str]) {
        if let Node::Map(entries) = self {
            entries.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(order.len()));
        }
    }
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Map(entries) => {
                let mut m = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Node::Seq(items) => {
                let mut q = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    q.serialize_element(i)?;
                }
                q.end()
            }
            Node::Str(v) => s.serialize_str(v),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) => s.serialize_i64(*i),
        }
    }
}

fn s(v: impl Into<String>) -> Node {
    Node::Str(v.into())
}

// ---------------------------------------------------------------------------------------------
// Notes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoteKind {
    /// Something to do before the output can serve (create a key, provide a file).
    Todo,
    /// A source setting with no ocimirror equivalent: not in the output.
    NotCarried,
    /// Carried over, but it behaves differently.
    Changed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: NoteKind,
    /// Where it comes from: `distribution: http.headers`, `docker_auth: ldap_auth`, …
    pub key: String,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("nothing to import: give --distribution and/or --docker-auth")]
    NoSource,
    #[error("{path}: not YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}: expected a mapping of settings at the top level")]
    NotAMap { path: String },
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

/// One source document, with the paths the mapping consumed.
struct Src {
    label: &'static str,
    root: Value,
    used: RefCell<BTreeSet<String>>,
}

impl Src {
    fn parse(label: &'static str, path: &Path, text: &str) -> Result<Src, ImportError> {
        let root: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| ImportError::Yaml {
                path: path.display().to_string(),
                message: e.to_string().lines().next().unwrap_or_default().to_owned(),
            })?
        };
        let root = match root {
            Value::Null => Value::Object(Default::default()),
            v @ Value::Object(_) => v,
            _ => {
                return Err(ImportError::NotAMap {
                    path: path.display().to_string(),
                });
            }
        };
        Ok(Src {
            label,
            root,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    fn key(&self, path: &str) -> String {
        format!("{}: {path}", self.label)
    }

    /// The value at a dotted path, marking it (and everything under it) as accounted for.
    fn get(&self, path: &str) -> Option<&Value> {
        let v = self.peek(path)?;
        self.used.borrow_mut().insert(path.to_owned());
        Some(v)
    }

    /// The value at a dotted path, without marking it.
    fn peek(&self, path: &str) -> Option<&Value> {
        let mut cur = &self.root;
        for k in path.split('.') {
            cur = cur.as_object()?.get(k)?;
        }
        (!cur.is_null()).then_some(cur)
    }

    fn has(&self, path: &str) -> bool {
        self.peek(path).is_some()
    }

    fn mark(&self, path: &str) {
        if self.has(path) {
            self.used.borrow_mut().insert(path.to_owned());
        }
    }

    /// A scalar as a string (numbers and booleans too); empty strings count as absent.
    fn str(&self, path: &str) -> Option<String> {
        let v = self.get(path)?;
        scalar_string(v).filter(|s| !s.is_empty())
    }

    fn bool(&self, path: &str) -> Option<bool> {
        match self.get(path)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Some(true),
                "false" | "no" | "off" | "0" => Some(false),
                _ => None,
            },
            Value::Number(n) => n.as_i64().map(|i| i != 0),
            _ => None,
        }
    }

    /// The child keys of a map at `path` (empty when absent or not a map).
    fn keys(&self, path: &str) -> Vec<String> {
        self.peek(path)
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The outermost paths of which nothing was used: every setting the mapping did not
    /// account for, each reported once.
    fn leftovers(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut out = Vec::new();
        fn walk(v: &Value, path: &str, used: &BTreeSet<String>, out: &mut Vec<String>) {
            if !path.is_empty() && used.contains(path) {
                return;
            }
            let under = format!("{path}.");
            let any_used_below = path.is_empty()
                || DESCEND.contains(&path)
                || used
                    .range(under.clone()..)
                    .next()
                    .is_some_and(|u| u.starts_with(&under));
            match v {
                Value::Object(o) if any_used_below => {
                    for (k, child) in o {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(child, &p, used, out);
                    }
                }
                Value::Null => {}
                _ => out.push(path.to_owned()),
            }
        }
        walk(&self.root, "", &used, &mut out);
        out
    }
}

/// Sections whose unused keys are reported one by one (each has its own reason), even when
/// nothing in them was used.
const DESCEND: &[&str] = &[
    "log",
    "http",
    "storage",
    "storage.maintenance",
    "auth",
    "proxy",
    "redis",
    "redis.tls",
    "server",
    "token",
];

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Apply Distribution's environment overrides (`REGISTRY_STORAGE_S3_BUCKET=…` sets
/// `storage.s3.bucket`): shorter paths first, so `REGISTRY_AUTH=htpasswd` comes before
/// `REGISTRY_AUTH_HTPASSWD_PATH`. Returns the names applied.
pub fn apply_registry_env(root: &mut Value, vars: &[(String, String)]) -> Vec<String> {
    let mut vars: Vec<(Vec<String>, &str, &str)> = vars
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("REGISTRY_")?;
            if rest.is_empty() {
                return None;
            }
            let path = rest.split('_').map(str::to_ascii_lowercase).collect();
            Some((path, k.as_str(), v.as_str()))
        })
        .collect();
    vars.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.1.cmp(b.1)));
    let mut applied = Vec::new();
    for (path, name, raw) in vars {
        let parsed: Value = if raw.is_empty() {
            Value::String(String::new())
        } else {
            serde_saphyr::from_str::<Value>(raw)
                .ok()
                .filter(|v| !v.is_object() && !v.is_array() && !v.is_null())
                .unwrap_or_else(|| Value::String(raw.to_owned()))
        };
        // `auth` and `storage` are maps of named parameter sets: a bare name selects one.
        let parsed = match (&parsed, path.as_slice()) {
            (Value::String(s), [one]) if one == "auth" || one == "storage" => {
                let mut m = serde_json::Map::new();
                m.insert(s.clone(), Value::Object(Default::default()));
                Value::Object(m)
            }
            _ => parsed,
        };
        set_json(root, &path, parsed);
        applied.push(name.to_owned());
    }
    applied
}

fn set_json(v: &mut Value, path: &[String], value: Value) {
    if !v.is_object() {
        *v = Value::Object(Default::default());
    }
    let obj = v.as_object_mut().expect("object");
    match path {
        [] => {}
        [last] => {
            obj.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let child = obj
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            set_json(child, rest, value);
        }
    }
}

/// `KEY=VALUE` lines (blank lines and `#` comments skipped; `export ` and quotes allowed), as
/// in a systemd `EnvironmentFile` or `docker run --env-file`.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

/// A Go duration as Distribution and docker_auth read it: `1h30m`, `300ms`, `1.5h`; a bare
/// number is nanoseconds.
pub fn go_duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_nanos)
            .ok_or_else(|| format!("{n} is not a duration")),
        Value::String(s) => parse_go_duration(s.trim()),
        other => Err(format!("{other} is not a duration")),
    }
}

fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 168h or 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_nanos(n));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

/// A duration as ocimirror's config writes it: `168h`, `90m`, `30s`, `500ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

// ---------------------------------------------------------------------------------------------
// The import
// ---------------------------------------------------------------------------------------------

/// What to import.
#[derive(Debug, Clone, Default)]
pub struct ImportInput {
    /// A Distribution `config.yml`: its path (for messages) and text.
    pub distribution: Option<(PathBuf, String)>,
    /// A docker_auth `auth_config.yml`: its path and text.
    pub docker_auth: Option<(PathBuf, String)>,
    /// Distribution's `REGISTRY_*` environment overrides, applied to `distribution`.
    pub registry_env: Vec<(String, String)>,
    /// Where a signing key that the sources do not provide should live (the output's folder).
    pub key_dir: PathBuf,
}

/// The result: the config and what could not be carried over.
#[derive(Debug, Clone)]
pub struct Imported {
    pub config: Node,
    pub notes: Vec<Note>,
    /// `distribution: /etc/docker/registry/config.yml`, …
    pub sources: Vec<String>,
}

struct Out {
    config: Node,
    notes: Vec<Note>,
}

impl Out {
    fn set(&mut self, path: &str, v: Node) {
        let p: Vec<&str> = path.split('.').collect();
        self.config.set(&p, v);
    }
    fn note(&mut self, kind: NoteKind, key: String, message: impl Into<String>) {
        self.notes.push(Note {
            kind,
            key,
            message: message.into(),
        });
    }
}

/// Distribution's `auth` as found, for combining with docker_auth.
#[derive(Default)]
struct DistAuth {
    token: Option<DistToken>,
    htpasswd: Option<String>,
}

#[derive(Default)]
struct DistToken {
    realm: Option<String>,
    service: Option<String>,
    issuer: Option<String>,
    rootcertbundle: Option<String>,
    jwks: Option<String>,
}

pub fn import(input: &ImportInput) -> Result<Imported, ImportError> {
    if input.distribution.is_none() && input.docker_auth.is_none() {
        return Err(ImportError::NoSource);
    }
    let mut out = Out {
        config: Node::map(),
        notes: Vec::new(),
    };
    let mut sources = Vec::new();
    let dist = match &input.distribution {
        Some((p, text)) => {
            let mut src = Src::parse("distribution", p, text)?;
            let applied = apply_registry_env(&mut src.root, &input.registry_env);
            if !applied.is_empty() {
                out.note(
                    NoteKind::Changed,
                    "distribution: environment".into(),
                    format!(
                        "applied over the file, as Distribution does: {}",
                        applied.join(", ")
                    ),
                );
            }
            sources.push(format!("distribution: {}", p.display()));
            Some(src)
        }
        None => None,
    };
    let da = match &input.docker_auth {
        Some((p, text)) => {
            sources.push(format!("docker_auth: {}", p.display()));
            Some(Src::parse("docker_auth", p, text)?)
        }
        None => None,
    };

    let dist_auth = match &dist {
        Some(d) => map_distribution(d, &mut out),
        None => DistAuth::default(),
    };
    map_auth(
        dist.as_ref(),
        &dist_auth,
        da.as_ref(),
        &input.key_dir,
        &mut out,
    );

    for src in dist.iter().chain(da.iter()) {
        for path in src.leftovers() {
            let message = not_carried_reason(src.label, &path);
            out.note(NoteKind::NotCarried, src.key(&path), message);
        }
    }
    out.config.reorder(&[
        "listen", "tls", "role", "mode", "log", "storage", "cache", "upstream", "server", "expiry",
        "auth",
    ]);
    if let Node::Map(entries) = &mut out.config {
        for (k, v) in entries.iter_mut() {
            if k == "storage" {
                v.reorder(&["backend", "filesystem", "s3", "read_only"]);
            }
            if k == "cache" {
                v.reorder(&["backend", "memory", "redis"]);
            }
            if k == "auth" {
                v.reorder(&[
                    "service",
                    "realm",
                    "path",
                    "issuer",
                    "token_ttl",
                    "key",
                    "certificate",
                    "kid",
                    "trusted_issuers",
                    "trusted_certificates",
                    "trusted_jwks",
                    "real_ip_header",
                    "users",
                    "htpasswd",
                    "github_auth",
                    "oidc_auth",
                    "acl",
                ]);
            }
        }
    }
    out.notes.sort_by_key(|n| n.kind);
    Ok(Imported {
        config: out.config,
        notes: out.notes,
        sources,
    })
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

fn map_distribution(d: &Src, out: &mut Out) -> DistAuth {
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
        Some(other) => {
            d.mark(&format!("storage.{other}"));
            out.note(
                NoteKind::NotCarried,
                d.key(&format!("storage.{other}")),
                format!("ocimirror has no {other} backend (filesystem and S3 only): the output keeps its cache under data_dir, so the existing cache is not reused"),
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
    if let Some(r) = d.str(&p("region")) {
        out.set("storage.s3.region", s(r));
    }
    if let Some(b) = d.str(&p("bucket")) {
        out.set("storage.s3.bucket", s(b));
    }
    if let Some(r) = d.str(&p("rootdirectory")) {
        out.set("storage.s3.root", s(r));
    }
    if let Some(f) = d.bool(&p("forcepathstyle")) {
        out.set("storage.s3.path_style", Node::Bool(f));
    }
    if let Some(k) = d.str(&p("accesskey")) {
        out.set("storage.s3.access_key_id", s(k));
    }
    if let Some(k) = d.str(&p("secretkey")) {
        out.set("storage.s3.secret_access_key", s(k));
    }
    if let Some(k) = d.str(&p("sessiontoken")) {
        out.set("storage.s3.session_token", s(k));
    }
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
        if d.has("redis") {
            d.mark("redis");
            out.note(
                NoteKind::NotCarried,
                d.key("redis"),
                "configured, but storage.cache.blobdescriptor is not redis, so Distribution did not use it",
            );
        }
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
        if d.has("proxy") {
            d.mark("proxy");
            out.note(
                NoteKind::NotCarried,
                d.key("proxy"),
                "no remoteurl: Distribution does not proxy without one",
            );
        }
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
    if let Some(u) = d.str("proxy.username") {
        out.set("upstream.username", s(u));
    }
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

fn map_auth(
    dist: Option<&Src>,
    dist_auth: &DistAuth,
    da: Option<&Src>,
    key_dir: &Path,
    out: &mut Out,
) {
    match (da, &dist_auth.token, &dist_auth.htpasswd) {
        (Some(a), _, _) => map_docker_auth(a, dist, dist_auth, out),
        (None, Some(t), _) => {
            // The registry verifies tokens that an external service (docker_auth) issues.
            let d = dist.expect("token auth comes from distribution");
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
            if let Some(h) = &dist_auth.htpasswd {
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
        (None, None, Some(htpasswd)) => {
            let d = dist.expect("htpasswd comes from distribution");
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
        (None, None, None) => {}
    }
    if let Some(d) = dist
        && d.has("auth.silly")
    {
        d.mark("auth.silly");
        out.note(
            NoteKind::NotCarried,
            d.key("auth.silly"),
            "a development-only scheme that accepts any Authorization header; the output allows anonymous pulls instead",
        );
    }
}

fn check_htpasswd_path(d: &Src, path: &str, out: &mut Out) {
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

/// docker_auth's `auth_config.yml`: ocimirror's own token service replaces it.
fn map_docker_auth(a: &Src, dist: Option<&Src>, dist_auth: &DistAuth, out: &mut Out) {
    let role_auth = dist.is_none();
    if role_auth {
        out.set("role", s("auth"));
        if let Some(addr) = a.str("server.addr") {
            out.set("listen", s(addr));
        }
    } else if let Some(addr) = a.str("server.addr") {
        out.note(
            NoteKind::Changed,
            a.key("server.addr"),
            format!("{addr}: ocimirror serves tokens on its own listen address, at auth.path; point clients' and ingress routes for the token service there"),
        );
    }
    if a.str("server.net").is_some_and(|n| n == "unix") {
        out.note(
            NoteKind::NotCarried,
            a.key("server.net"),
            "a unix socket: ocimirror listens on TCP only",
        );
    }
    out.set("auth", Node::map());
    // service: the audience the registry expects (Distribution's auth.token.service).
    match dist_auth.token.as_ref().and_then(|t| t.service.clone()) {
        Some(svc) => out.set("auth.service", s(svc)),
        None if role_auth => out.note(
            NoteKind::Todo,
            "auth.service".into(),
            "docker_auth takes the service from each request; ocimirror issues tokens for one: set auth.service to your registry's auth.token.service (left at ocimirror)",
        ),
        None => {}
    }
    let prefix = a
        .str("server.path_prefix")
        .map(|p| p.trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let path = format!("{prefix}/auth");
    if path != "/auth" {
        out.set("auth.path", s(path.clone()));
    }
    if let Some(t) = &dist_auth.token
        && let (Some(realm), Some(d)) = (&t.realm, dist)
    {
        out.note(
            NoteKind::Changed,
            d.key("auth.token.realm"),
            format!("{realm}: clients now get tokens from ocimirror itself, at {path} on its own address (auth.realm unset: derived from the request); route that URL to ocimirror, or set auth.realm to it"),
        );
    }
    if let Some(iss) = a.str("token.issuer") {
        out.set("auth.issuer", s(iss.clone()));
        if let Some(t) = &dist_auth.token
            && let Some(di) = &t.issuer
            && di != &iss
        {
            out.set(
                "auth.trusted_issuers",
                Node::Seq(vec![s(iss.clone()), s(di.clone())]),
            );
            out.note(
                NoteKind::Changed,
                a.key("token.issuer"),
                format!("{iss:?} differs from the registry's auth.token.issuer {di:?} (the registry refused these tokens); both are trusted"),
            );
        }
    }
    if let Some(v) = a.get("token.expiration") {
        match scalar_string(v).and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > 0 => {
                out.set("auth.token_ttl", s(format_duration(Duration::from_secs(n))))
            }
            _ => out.note(
                NoteKind::NotCarried,
                a.key("token.expiration"),
                "not a number of seconds",
            ),
        }
    }
    // Signing key: token.* or, as docker_auth falls back, the server's TLS pair.
    let (key, cert, from_server) = match (a.str("token.key"), a.str("token.certificate")) {
        (Some(k), Some(c)) => (Some(k), Some(c), false),
        _ => (a.str("server.key"), a.str("server.certificate"), true),
    };
    if from_server {
        a.mark("token.key");
        a.mark("token.certificate");
    }
    match (&key, &cert) {
        (Some(k), Some(c)) => {
            out.set("auth.key", s(k.clone()));
            out.set("auth.certificate", s(c.clone()));
            for (what, p) in [("key", k), ("certificate", c)] {
                if !Path::new(p).exists() {
                    out.note(
                        NoteKind::Todo,
                        format!("auth.{what}"),
                        format!("{p} does not exist here: make sure it is there where ocimirror runs"),
                    );
                }
            }
        }
        _ => out.note(
            NoteKind::Todo,
            "auth.key".into(),
            "no token signing key in auth_config.yml (token.key/certificate or server.key/certificate): create one with ocimirror keygen and set auth.key and auth.certificate",
        ),
    }
    if from_server && a.has("server.certificate") {
        out.note(
            NoteKind::Changed,
            a.key("server.certificate"),
            "docker_auth signed tokens with its TLS pair (token.certificate unset): ocimirror signs with it too (auth.key/certificate)",
        );
    }
    // The token service's own TLS, when ocimirror replaces docker_auth alone.
    if role_auth
        && let (Some(c), Some(k)) = (a.peek("server.certificate"), a.peek("server.key"))
        && let (Some(c), Some(k)) = (scalar_string(c), scalar_string(k))
    {
        a.mark("server.certificate");
        a.mark("server.key");
        out.set("tls.certificate", s(c));
        out.set("tls.key", s(k));
    }
    if a.bool("token.disable_legacy_key_id") == Some(true) {
        out.set("auth.kid", s("thumbprint"));
    }
    if let Some(h) = a.str("server.real_ip_header") {
        out.set("auth.real_ip_header", s(h));
        match a.get("server.real_ip_pos").and_then(Value::as_i64) {
            None | Some(0) => {}
            Some(pos) => out.note(
                NoteKind::Changed,
                a.key("server.real_ip_pos"),
                format!("{pos}: ocimirror always takes the leftmost address of the header"),
            ),
        }
    }
    // Trust what the registry trusted, so tokens the old service issued stay valid meanwhile.
    if let Some(t) = &dist_auth.token {
        if let Some(v) = &t.rootcertbundle {
            out.set("auth.trusted_certificates", s(v.clone()));
        }
        if let Some(v) = &t.jwks {
            out.set("auth.trusted_jwks", s(v.clone()));
        }
    }

    map_users(a, out);
    if let Some(h) = &dist_auth.htpasswd {
        out.set("auth.htpasswd", s(h.clone()));
        if let Some(d) = dist {
            check_htpasswd_path(d, h, out);
        }
    }
    map_github(a, out);
    map_oidc(a, out);
    map_acl(a, out);
}

fn map_users(a: &Src, out: &mut Out) {
    let Some(users) = a.get("users").and_then(Value::as_object) else {
        return;
    };
    let mut kept = Vec::new();
    for (name, u) in users {
        let u = if u.is_null() {
            serde_json::json!({})
        } else {
            u.clone()
        };
        let has_password = u
            .get("password")
            .and_then(Value::as_str)
            .is_some_and(|p| !p.is_empty());
        if !name.is_empty() && !has_password {
            out.note(
                NoteKind::NotCarried,
                a.key(&format!("users.{name}")),
                "no password: docker_auth accepts any password for such a user, ocimirror does not; the user is left out",
            );
            continue;
        }
        kept.push((name.clone(), Node::from_json(&u)));
    }
    out.set("auth.users", Node::Map(kept));
}

fn map_github(a: &Src, out: &mut Out) {
    if !a.has("github_auth") {
        return;
    }
    out.set("auth.github_auth", Node::map());
    if let Some(o) = a.str("github_auth.organization") {
        out.set("auth.github_auth.organization", s(o));
    }
    if let Some(u) = a.str("github_auth.github_api_uri") {
        out.set("auth.github_auth.api_url", s(u.trim_end_matches('/')));
    }
    if let Some(v) = a.get("github_auth.http_timeout") {
        match go_duration(v) {
            Ok(t) if !t.is_zero() => {
                out.set("auth.github_auth.http_timeout", s(format_duration(t)))
            }
            Ok(_) => {}
            Err(e) => out.note(NoteKind::NotCarried, a.key("github_auth.http_timeout"), e),
        }
    }
    let flow: Vec<String> = a
        .keys("github_auth")
        .into_iter()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "organization" | "github_api_uri" | "http_timeout"
            )
        })
        .collect();
    for k in &flow {
        a.mark(&format!("github_auth.{k}"));
    }
    out.note(
        NoteKind::Changed,
        a.key("github_auth"),
        format!(
            "ocimirror has no browser login: users log in with a GitHub personal access token as the password (docker login -u <login>); the throw-away passwords docker_auth handed out stop working{}",
            if flow.is_empty() {
                String::new()
            } else {
                format!(" (not carried: {})", flow.join(", "))
            }
        ),
    );
}

fn map_oidc(a: &Src, out: &mut Out) {
    if !a.has("oidc_auth") {
        return;
    }
    out.set("auth.oidc_auth", Node::map());
    if let Some(i) = a.str("oidc_auth.issuer") {
        out.set("auth.oidc_auth.issuer", s(i));
    }
    if let Some(c) = a.str("oidc_auth.client_id") {
        out.set("auth.oidc_auth.client_id", s(c));
    }
    if let Some(c) = a.str("oidc_auth.user_claim") {
        out.set("auth.oidc_auth.username_claim", s(c));
    }
    if let Some(list) = a.get("oidc_auth.labels_claims").and_then(Value::as_array) {
        let claims: Vec<String> = list.iter().filter_map(scalar_string).collect();
        if let Some(first) = claims.first() {
            out.set("auth.oidc_auth.groups_claim", s(first.clone()));
            if first != "groups" || claims.len() > 1 {
                out.note(
                    NoteKind::Changed,
                    a.key("oidc_auth.labels_claims"),
                    format!("ocimirror reads one claim, {first:?}, into the label `groups` (docker_auth named each label after its claim: {}); adjust ACL rules on those labels", claims.join(", ")),
                );
            }
        }
    }
    if let Some(v) = a.get("oidc_auth.http_timeout") {
        match go_duration(v) {
            Ok(t) if !t.is_zero() => out.set("auth.oidc_auth.http_timeout", s(format_duration(t))),
            Ok(_) => {}
            Err(e) => out.note(NoteKind::NotCarried, a.key("oidc_auth.http_timeout"), e),
        }
    }
    let flow: Vec<String> = a
        .keys("oidc_auth")
        .into_iter()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "issuer" | "client_id" | "user_claim" | "labels_claims" | "http_timeout"
            )
        })
        .collect();
    for k in &flow {
        a.mark(&format!("oidc_auth.{k}"));
    }
    out.note(
        NoteKind::Changed,
        a.key("oidc_auth"),
        format!(
            "ocimirror has no browser login: users send an ID token from the issuer as the password; docker_auth's own passwords stop working{}",
            if flow.is_empty() {
                String::new()
            } else {
                format!(" (not carried: {})", flow.join(", "))
            }
        ),
    );
}

fn map_acl(a: &Src, out: &mut Out) {
    let Some(list) = a.get("acl").and_then(Value::as_array) else {
        if !a.has("acl") {
            out.note(
                NoteKind::Changed,
                a.key("acl"),
                "absent: ocimirror denies everything without ACL rules",
            );
        }
        out.set("auth.acl", Node::Seq(Vec::new()));
        return;
    };
    let mut rules = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let Some(obj) = entry.as_object() else {
            rules.push(Node::from_json(entry));
            continue;
        };
        let mut rule = Vec::new();
        if let Some(m) = obj.get("match") {
            let mut conds = Vec::new();
            if let Some(mo) = m.as_object() {
                for (field, v) in mo {
                    let node = match (field.as_str(), v) {
                        ("labels", Value::Object(labels)) => Node::Map(
                            labels
                                .iter()
                                .map(|(lk, lv)| {
                                    let key = format!("acl[{i}].match.labels.{lk}");
                                    (lk.clone(), anchor_pattern(a, &key, lv, out))
                                })
                                .collect(),
                        ),
                        ("ip", v) => Node::from_json(v),
                        (_, v) => anchor_pattern(a, &format!("acl[{i}].match.{field}"), v, out),
                    };
                    conds.push((field.clone(), node));
                }
            } else {
                conds = match Node::from_json(m) {
                    Node::Map(e) => e,
                    _ => Vec::new(),
                };
            }
            rule.push(("match".to_owned(), Node::Map(conds)));
        }
        for k in ["actions", "comment"] {
            if let Some(v) = obj.get(k) {
                rule.push((k.to_owned(), Node::from_json(v)));
            }
        }
        for (k, v) in obj {
            if !matches!(k.as_str(), "match" | "actions" | "comment") {
                rule.push((k.clone(), Node::from_json(v)));
            }
        }
        rules.push(Node::Map(rule));
    }
    out.set("auth.acl", Node::Seq(rules));
}

/// A docker_auth pattern in ocimirror's syntax, with the same meaning: docker_auth's
/// `/regex/` matches anywhere in the value, ocimirror's the whole value.
fn anchor_pattern(a: &Src, key: &str, v: &Value, out: &mut Out) -> Node {
    let Some(p) = v.as_str() else {
        return Node::from_json(v);
    };
    match rewrite_regex(p) {
        Some(new) => {
            out.note(
                NoteKind::Changed,
                a.key(key),
                format!("{p} matched anywhere in the value in docker_auth; ocimirror anchors regexes, so it is written {new} to keep that meaning (simplify it if the whole value was meant)"),
            );
            s(new)
        }
        None => s(p),
    }
}

/// `Some(rewritten)` when `/R/` would mean something else anchored; `None` to keep it.
pub fn rewrite_regex(p: &str) -> Option<String> {
    if !(p.len() > 2 && p.starts_with('/') && p.ends_with('/')) {
        return None;
    }
    let r = &p[1..p.len() - 1];
    if matches!(r, ".+" | ".*" | "^.+$" | "^.*$") {
        return None;
    }
    let ends_anchored = r.ends_with('$') && !r.ends_with("\\$");
    if r.starts_with('^') && ends_anchored && !has_top_level_alternation(r) {
        return None;
    }
    Some(format!("/.*?(?:{r}).*/"))
}

fn has_top_level_alternation(r: &str) -> bool {
    let mut depth = 0i32;
    let mut in_class = false;
    let mut chars = r.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => depth -= 1,
            '|' if !in_class && depth == 0 => return true,
            _ => {}
        }
    }
    false
}

/// Why a source key was not carried over.
fn not_carried_reason(label: &str, path: &str) -> String {
    let top = path.split('.').next().unwrap_or(path);
    let two: String = path.split('.').take(2).collect::<Vec<_>>().join(".");
    let three: String = path.split('.').take(3).collect::<Vec<_>>().join(".");
    let r: &str = if label == "distribution" {
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
            (_, "proxy.username" | "proxy.password", _) => {
                "no remoteurl, so no upstream to log in to"
            }
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
            (_, _, "middleware") => {
                "no middleware: ocimirror serves blobs itself (no CDN redirects)"
            }
            (_, _, "reporting") => "no error-reporting services",
            (_, _, "health") => {
                "ocimirror has fixed /healthz and /readyz endpoints; no configurable checks"
            }
            (_, _, "compatibility") => {
                "no equivalent: manifests are served byte for byte as stored"
            }
            (_, _, "validation") => "applies to pushes; ocimirror takes none",
            (_, _, "policy") => "applies to pushes; ocimirror takes none",
            (_, _, "catalog") => "no setting: /v2/_catalog pages by the client's n",
            (_, _, "auth") => "not an authentication scheme ocimirror can carry over",
            _ => {
                "not a setting ocimirror knows (nor, for an unknown key, Distribution): not carried over"
            }
        }
    } else {
        match (two.as_str(), top) {
            ("server.certificate" | "server.key", _) => {
                "docker_auth's TLS pair: ocimirror's TLS is that of its listen address (tls.certificate/tls.key)"
            }
            (
                "server.letsencrypt"
                | "server.hsts"
                | "server.tls_min_version"
                | "server.tls_curve_preferences"
                | "server.tls_cipher_suites",
                _,
            ) => "TLS settings: terminate TLS in front of ocimirror",
            ("server.net", _) => "ocimirror listens on TCP",
            ("server.real_ip_pos", _) => "only with real_ip_header",
            (
                _,
                "google_auth" | "gitlab_auth" | "ldap_auth" | "mongo_auth" | "xorm_auth"
                | "ext_auth" | "plugin_authn" | "kubernetes_auth" | "keystone_auth" | "sql_auth"
                | "http_auth",
            ) => {
                "ocimirror has no such authenticator: these users cannot log in (static users, htpasswd, GitHub tokens and OIDC ID tokens can)"
            }
            (
                _,
                "acl_mongo" | "ext_authz" | "plugin_authz" | "casbin_authz" | "xorm_acl"
                | "mongo_acl",
            ) => "ocimirror has no such authorizer: only the acl list decides",
            _ => {
                "not a setting ocimirror knows (nor, for an unknown key, docker_auth): not carried over"
            }
        }
    };
    r.to_owned()
}

// ---------------------------------------------------------------------------------------------
// Rendering and the self-check
// ---------------------------------------------------------------------------------------------

impl Imported {
    /// The config alone, as YAML.
    pub fn config_yaml(&self) -> String {
        serde_saphyr::to_string(&self.config).expect("a config serialises")
    }

    /// The notes as indented lines, by kind.
    pub fn notes_text(&self) -> String {
        let mut t = String::new();
        for (kind, title) in [
            (NoteKind::Todo, "Before starting:"),
            (NoteKind::NotCarried, "Not carried over:"),
            (NoteKind::Changed, "Carried over with a difference:"),
        ] {
            let notes: Vec<&Note> = self.notes.iter().filter(|n| n.kind == kind).collect();
            if notes.is_empty() {
                continue;
            }
            t.push_str(title);
            t.push('\n');
            for n in notes {
                for (i, line) in wrap(&n.to_string(), 94).iter().enumerate() {
                    t.push_str(if i == 0 { "  - " } else { "    " });
                    t.push_str(line);
                    t.push('\n');
                }
            }
        }
        t
    }

    /// The output file: the notes as comments, then the config.
    pub fn render(&self) -> String {
        let mut t = String::from("# Written by `ocimirror config import` from\n");
        for s in &self.sources {
            t.push_str(&format!("#   {s}\n"));
        }
        let notes = self.notes_text();
        if !notes.is_empty() {
            t.push_str("#\n");
            for l in notes.lines() {
                t.push_str(&format!("# {l}\n"));
            }
        }
        t.push_str("# Check it with: ocimirror config check <this file>\n");
        t.push_str(&self.config_yaml());
        if !t.ends_with('\n') {
            t.push('\n');
        }
        t
    }

    /// Run the config loader on the output (referenced files read here, no environment) and
    /// note each problem. A referenced file missing here is one note to provide it, not an
    /// error: the output is often written for another machine.
    pub fn self_check(&mut self) {
        let Ok(dir) = tempfile::tempdir() else {
            return;
        };
        let path = dir.path().join("imported.yaml");
        if std::fs::write(&path, self.config_yaml()).is_err() {
            return;
        }
        let no_env: Vec<(String, String)> = Vec::new();
        let Err(errors) =
            crate::config::load(Some(&path), no_env, &crate::config::Overrides::default())
        else {
            return;
        };
        for p in errors.problems {
            let key: Vec<&str> = p.key.split('.').collect();
            let missing = self
                .config
                .get(&key)
                .and_then(Node::as_str)
                .filter(|f| FILE_KEYS.contains(&p.key.as_str()) && !Path::new(f).is_file())
                .map(str::to_owned);
            let note = match missing {
                Some(f) if self.notes.iter().any(|n| n.message.contains(&f)) => continue,
                Some(f) => {
                    format!("{f} is not a file here: make sure it is there where ocimirror runs")
                }
                None => format!("ocimirror config check: {}", p.message),
            };
            self.notes.push(Note {
                kind: NoteKind::Todo,
                key: p.key.clone(),
                message: note,
            });
        }
        self.notes.sort_by_key(|n| n.kind);
    }
}

/// Output keys that name files the config loader reads.
pub const FILE_KEYS: &[&str] = &[
    "auth.key",
    "auth.certificate",
    "auth.htpasswd",
    "auth.trusted_certificates",
    "auth.trusted_jwks",
    "tls.certificate",
    "tls.key",
];

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::auth::acl::{Acl, AclEntry};
    use crate::auth::{Identity, RequestInfo, ResourceActions};

    fn dist(text: &str) -> Imported {
        import(&ImportInput {
            distribution: Some((PathBuf::from("config.yml"), text.to_owned())),
            key_dir: PathBuf::from("/keys"),
            ..Default::default()
        })
        .unwrap()
    }

    fn noted(i: &Imported, kind: NoteKind, key: &str) -> bool {
        i.notes.iter().any(|n| n.kind == kind && n.key == key)
    }

    #[test]
    fn go_durations() {
        let d = |s: &str| go_duration(&Value::String(s.into())).unwrap();
        assert_eq!(d("168h"), Duration::from_secs(168 * 3600));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("2h45m0s"), Duration::from_secs(9900));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("300ms"), Duration::from_millis(300));
        assert_eq!(d("10µs"), Duration::from_micros(10));
        assert_eq!(
            go_duration(&Value::from(1_000_000_000u64)).unwrap(),
            Duration::from_secs(1)
        );
        assert!(go_duration(&Value::String("a week".into())).is_err());
        assert!(go_duration(&Value::String("5 m".into())).is_err());
        assert_eq!(format_duration(Duration::from_secs(168 * 3600)), "168h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_millis(10)), "10ms");
        // What the config loader accepts.
        for s in ["168h", "90s", "90m", "10ms"] {
            humantime::parse_duration(s).unwrap();
        }
    }

    #[test]
    fn unknown_and_unmapped_keys_are_listed_never_dropped() {
        let i = dist(
            "version: 0.1\nhttp:\n  addr: :5000\n  weird: 1\nstorage:\n  filesystem:\n    rootdirectory: /r\n    maxthreads: 5\nsomething:\n  deep:\n    er: 1\nproxy:\n  remoteurl: https://r.example\n  ttl: 0\n",
        );
        for key in [
            "distribution: http.weird",
            "distribution: storage.filesystem.maxthreads",
            "distribution: something",
        ] {
            assert!(noted(&i, NoteKind::NotCarried, key), "{key}: {:?}", i.notes);
        }
        // One note for an unknown section, not one per leaf.
        assert!(!i.notes.iter().any(|n| n.key.contains("something.deep")));
        // Mapped keys are not listed; ttl 0 means no expiry.
        assert!(
            !i.notes
                .iter()
                .any(|n| n.key.contains("rootdirectory") || n.key.contains("remoteurl"))
        );
        assert_eq!(i.config.get(&["expiry"]), None);
        assert_eq!(
            i.config.get(&["upstream", "url"]).and_then(Node::as_str),
            Some("https://r.example")
        );
    }

    /// A remote other than Docker Hub keeps answering containerd's docker.io pulls (Distribution
    /// answered every `ns` from it); Docker Hub needs nothing (it answers docker.io anyway).
    #[test]
    fn a_proxy_of_another_registry_keeps_answering_docker_io() {
        let i = dist("version: 0.1\nproxy:\n  remoteurl: https://mirror.gcr.io:8443/\n");
        let ns = |i: &Imported| {
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
    fn registry_environment_overrides_apply_like_distribution() {
        let mut v: Value =
            serde_saphyr::from_str("storage:\n  cache:\n    blobdescriptor: inmemory\n").unwrap();
        let applied = apply_registry_env(
            &mut v,
            &[
                (
                    "REGISTRY_AUTH_HTPASSWD_PATH".into(),
                    "/auth/htpasswd".into(),
                ),
                ("REGISTRY_AUTH".into(), "htpasswd".into()),
                ("REGISTRY_STORAGE_S3_SECURE".into(), "false".into()),
                ("REGISTRY_HTTP_ADDR".into(), ":5000".into()),
                ("REGISTRY_REDIS_DB".into(), "3".into()),
                ("OTHER".into(), "x".into()),
            ],
        );
        assert_eq!(applied.len(), 5);
        assert_eq!(v["auth"]["htpasswd"]["path"], "/auth/htpasswd");
        assert_eq!(v["storage"]["s3"]["secure"], false);
        assert_eq!(v["storage"]["cache"]["blobdescriptor"], "inmemory");
        assert_eq!(v["http"]["addr"], ":5000");
        assert_eq!(v["redis"]["db"], 3);
        assert_eq!(
            parse_env_file("# c\nexport A=1\nB=\"two words\"\n\nC='x=y'\nbad line\n"),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
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

    /// The rewritten pattern decides every value as docker_auth's unanchored one did, capture
    /// groups included, and anchored patterns are left alone.
    #[test]
    fn regex_rewrite_keeps_docker_auth_meaning() {
        assert_eq!(rewrite_regex("/.+/"), None);
        assert_eq!(rewrite_regex("/^(.+)@test.com$/"), None);
        assert_eq!(rewrite_regex("myorg/*"), None);
        assert_eq!(
            rewrite_regex("/^a|b$/").as_deref(),
            Some("/.*?(?:^a|b$).*/")
        );
        assert_eq!(
            rewrite_regex("/secret/").as_deref(),
            Some("/.*?(?:secret).*/")
        );
        let cases = [
            ("/secret/", &["secret", "team/secret-app", "x"][..]),
            ("/trainee|dev/", &["dev", "devops", "trainees", "ops"][..]),
            ("/^lib/", &["library/x", "x/library"][..]),
            ("/z$/", &["baz", "zab"][..]),
            ("/^a|b$/", &["ax", "xb", "xa"][..]),
        ];
        for (pattern, values) in cases {
            let go = regex::Regex::new(&pattern[1..pattern.len() - 1]).unwrap();
            let new = rewrite_regex(pattern).unwrap();
            let ours = regex::Regex::new(&format!("^(?:{})$", &new[1..new.len() - 1])).unwrap();
            for v in values {
                assert_eq!(go.is_match(v), ours.is_match(v), "{pattern} on {v}");
            }
        }
        // A deny rule still denies, and a capture group captures what it did, end to end
        // through ocimirror's ACL.
        let rules: Vec<AclEntry> = serde_json::from_value(serde_json::json!([
            {"match": {"name": rewrite_regex("/secret/").unwrap()}, "actions": []},
            {"match": {"account": rewrite_regex("/(.+)@example\\.com/").unwrap(), "name": "${account:1}/*"}, "actions": ["*"]},
        ]))
        .unwrap();
        let acl = Acl::compile(&rules).unwrap();
        let req = RequestInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            service: "s".into(),
        };
        let want = |name: &str| ResourceActions {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        };
        let john = Identity {
            account: "john@example.com".into(),
            labels: Default::default(),
        };
        assert!(
            acl.evaluate(&john, &req, &want("john/secret-app"))
                .granted
                .is_empty()
        );
        assert_eq!(
            acl.evaluate(&john, &req, &want("john/app")).granted,
            vec!["pull"]
        );
        assert!(
            acl.evaluate(&john, &req, &want("jane/app"))
                .granted
                .is_empty()
        );
    }

    #[test]
    fn output_parses_as_a_config() {
        let i = import(&ImportInput {
            distribution: Some((
                "d".into(),
                "http:\n  addr: ':5000'\nauth:\n  htpasswd:\n    realm: r\n    path: /h\nstorage:\n  filesystem:\n    rootdirectory: /r\nproxy:\n  remoteurl: https://r.example\n  username: 'yes'\n  password: '0123'\n".into(),
            )),
            docker_auth: None,
            registry_env: Vec::new(),
            key_dir: "/k".into(),
        })
        .unwrap();
        let c: crate::config::Config = serde_saphyr::from_str(&i.render()).unwrap();
        assert_eq!(c.upstream.username.as_deref(), Some("yes"));
        assert_eq!(c.upstream.password.as_deref(), Some("0123"));
        let a = c.auth.unwrap();
        assert_eq!(a.htpasswd.as_deref(), Some(Path::new("/h")));
        assert_eq!(a.key.as_deref(), Some(Path::new("/k/token.key")));
        assert!(noted(&i, NoteKind::Todo, "auth.key"));
    }
}
