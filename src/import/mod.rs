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

mod cloud_storage;
mod distribution;
mod docker_auth;
mod durations;
mod files;
mod render;
mod source;
mod tree;

use std::fmt;
use std::path::{Path, PathBuf};

pub use docker_auth::rewrite_regex;
pub use durations::{format_duration, go_duration};
pub use files::import_files;
pub use render::FILE_KEYS;
pub use source::{apply_registry_env, parse_env_file};
pub use tree::Node;

use distribution::DistAuth;
use source::Src;

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

/// The config being written and the notes on it.
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

    /// `from` of `d`, when set, as the string at `path`.
    fn copy_str(&mut self, d: &Src, from: &str, path: &str) {
        if let Some(v) = d.str(from) {
            self.set(path, tree::s(v));
        }
    }

    /// When `path` is set in `d`: account for it, with a note of `kind` about it.
    fn note_set(&mut self, d: &Src, path: &str, kind: NoteKind, message: impl Into<String>) {
        if d.has(path) {
            d.mark(path);
            self.note(kind, d.key(path), message);
        }
    }
}

/// Map the sources to an ocimirror config, with a note for everything not carried over as it was.
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
        Some(d) => distribution::map_distribution(d, &mut out),
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
                v.reorder(&["backend", "filesystem", "s3", "gcs", "azblob", "read_only"]);
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
                    "trusted_proxies",
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

/// Authentication: docker_auth's config when given (ocimirror's token service replaces it),
/// else what the registry itself did.
fn map_auth(
    dist: Option<&Src>,
    dist_auth: &DistAuth,
    da: Option<&Src>,
    key_dir: &Path,
    out: &mut Out,
) {
    match (da, dist) {
        (Some(a), _) => docker_auth::map_docker_auth(a, dist, dist_auth, out),
        (None, Some(d)) => distribution::map_auth(d, dist_auth, key_dir, out),
        (None, None) => {}
    }
    if let Some(d) = dist {
        distribution::map_silly(d, out);
    }
}

/// Why a source key was not carried over.
fn not_carried_reason(label: &str, path: &str) -> String {
    if label == "distribution" {
        distribution::not_carried_reason(path)
    } else {
        docker_auth::not_carried_reason(path)
    }
    .to_owned()
}

#[cfg(test)]
mod testing {
    use super::*;

    pub(super) fn dist(text: &str) -> Imported {
        import(&ImportInput {
            distribution: Some((PathBuf::from("config.yml"), text.to_owned())),
            key_dir: PathBuf::from("/keys"),
            ..Default::default()
        })
        .unwrap()
    }

    pub(super) fn noted(i: &Imported, kind: NoteKind, key: &str) -> bool {
        i.notes.iter().any(|n| n.kind == kind && n.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{dist, noted};
    use super::*;

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
}
