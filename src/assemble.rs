//! Assembly: the storage, descriptor cache, fleet leases, upstream clients and registry a
//! config's [`Settings`] describe, built the same way for `serve` (`server`) and for the
//! operator commands (`ops`), which both sit above this.

use std::sync::Arc;

use crate::auth::RepositoryNames;
use crate::auth::acl::NamePattern;
use crate::cache::lease::{Leases, LocalLeases};
use crate::cache::{DescriptorCache, MemoryCache, RedisCache};
use crate::config::{CacheBackend, Settings, StorageBackend};
use crate::expiry::AccessLog;
use crate::oci::RepoName;
use crate::registry::{Registry, RegistrySettings};
use crate::storage::{FsStorage, ObjectStorage, Storage};
use crate::upstream::fanout::FanOutBounded;
use crate::upstream::{
    AllowFn, AllowListed, HttpUpstream, Route, Routed, Upstream, UpstreamSettings,
};

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot build the upstream client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("config: {0}")]
    Config(String),
}

/// The shared parts a replica works on: storage, the descriptor cache, and the fleet's leases.
pub struct Backends {
    pub storage: Arc<dyn Storage>,
    pub cache: Arc<dyn DescriptorCache>,
    pub leases: Arc<dyn Leases>,
}

pub async fn build_backends(s: &Settings) -> Result<Backends, AssembleError> {
    let storage: Arc<dyn Storage> = match s.storage_backend {
        StorageBackend::Filesystem => {
            if !s.read_only {
                std::fs::create_dir_all(&s.storage_root).map_err(|e| AssembleError::Dir {
                    path: s.storage_root.display().to_string(),
                    source: e,
                })?;
            }
            let fs = FsStorage::new(&s.storage_root);
            if !s.read_only {
                let removed = fs
                    .remove_abandoned_temp_files(crate::storage::ABANDONED_TEMP_AGE)
                    .await;
                if removed > 0 {
                    tracing::info!(
                        removed,
                        "removed temp files abandoned by an earlier process"
                    );
                }
            }
            Arc::new(fs)
        }
        StorageBackend::S3 | StorageBackend::Gcs | StorageBackend::Azblob => {
            let store = match s.storage_backend {
                StorageBackend::Gcs => ObjectStorage::gcs(&s.gcs),
                StorageBackend::Azblob => ObjectStorage::azblob(&s.azblob),
                _ => ObjectStorage::s3(&s.s3),
            }
            .map_err(|e| AssembleError::Config(e.to_string()))?;
            // Say so at start when the bucket is missing or the credentials are wrong, but keep
            // starting: the store may come up after us, and every request reports its errors.
            match store.check().await {
                Ok(()) => tracing::info!(storage = store.describe(), "storage reachable"),
                Err(e) => {
                    tracing::error!(storage = store.describe(), error = %e, "storage check failed")
                }
            }
            Arc::new(store)
        }
    };
    // With a shared Redis, the same connection also carries the fleet's fill leases.
    let (cache, leases): (Arc<dyn DescriptorCache>, Arc<dyn Leases>) = match s.cache_backend {
        CacheBackend::Memory => (
            Arc::new(MemoryCache::new(s.cache_max_entries)),
            Arc::new(LocalLeases),
        ),
        CacheBackend::Redis => {
            let redis = Arc::new(
                RedisCache::new(&s.redis).map_err(|e| AssembleError::Config(format!("{e:?}")))?,
            );
            (redis.clone(), redis)
        }
    };
    Ok(Backends {
        storage,
        cache,
        leases,
    })
}

pub async fn build_registry(s: &Settings) -> Result<Arc<Registry>, AssembleError> {
    build_registry_on(s, build_backends(s).await?, None, build_upstreams(s)?).await
}

pub async fn build_registry_on(
    s: &Settings,
    b: Backends,
    access: Option<Arc<AccessLog>>,
    upstream: Arc<Routed>,
) -> Result<Arc<Registry>, AssembleError> {
    let spool_dir = s.data_dir.join("spool");
    std::fs::create_dir_all(&spool_dir).map_err(|e| AssembleError::Dir {
        path: spool_dir.display().to_string(),
        source: e,
    })?;
    // The request path stops waiting on a failing store; the counts see the store's own
    // failures, not the breaker's refusals.
    let storage = match s.storage_breaker {
        Some(p) => Arc::new(crate::storage::breaker::Breaker::new(b.storage, &p)),
        None => b.storage,
    };
    let mut registry = Registry::new(
        Arc::new(crate::storage::Counted(storage)),
        b.cache,
        upstream,
        RegistrySettings {
            tag_ttl: s.tag_ttl,
            tag_ttls: s
                .upstreams
                .iter()
                .map(|u| (u.name.clone(), u.tag_ttl))
                .collect(),
            offline: s.offline,
            read_only: s.read_only,
            spool_dir,
        },
    )
    .with_leases(b.leases)
    .with_referrers_cache(s.referrers_cache.0, s.referrers_cache.1);
    // Always there, so that a reload can add rules to a mirror started without any.
    registry = registry.with_verifier(Arc::new(crate::verify::Verifier::new(s.verify.clone())));
    if let Some(log) = access {
        registry = registry.with_access_log(log);
    }
    if let Some(r) = &s.redirect {
        registry = registry.with_redirect(r.expiry);
    }
    Ok(Arc::new(registry))
}

/// One upstream client, behind its allow-list when it has one.
fn one_upstream(
    settings: &UpstreamSettings,
    allow: &[String],
    max_descriptors: usize,
) -> Result<Arc<dyn Upstream>, AssembleError> {
    let mut upstream: Arc<dyn Upstream> = Arc::new(FanOutBounded::new(
        Arc::new(HttpUpstream::new(settings.clone())?),
        max_descriptors,
    ));
    if !allow.is_empty() {
        let patterns: Vec<NamePattern> = allow
            .iter()
            .map(|p| NamePattern::compile(p).expect("validated with the config"))
            .collect();
        // The upstream is asked for `library/alpine`; a pattern naming the short form
        // (`alpine`) covers it, as an ACL rule does.
        let library = settings.library_prefix;
        let allowed: AllowFn = Arc::new(move |name| {
            let short = name
                .strip_prefix("library/")
                .filter(|rest| library && !rest.contains('/'));
            patterns
                .iter()
                .any(|p| p.matches(name) || short.is_some_and(|s| p.matches(s)))
        });
        upstream = Arc::new(AllowListed::new(upstream, allowed));
    }
    Ok(upstream)
}

/// The default upstream, and the named ones routed by name prefix; each answers its `ns` values.
pub fn build_upstreams(s: &Settings) -> Result<Arc<Routed>, AssembleError> {
    let default = one_upstream(&s.upstream, &s.upstream_allow, s.upstream_max_descriptors)?;
    let mut routes = Vec::new();
    for n in &s.upstreams {
        routes.push(Route {
            prefix: n.name.clone(),
            aliases: n.ns.clone(),
            upstream: one_upstream(&n.settings, &n.allow, n.max_manifest_descriptors)?,
        });
    }
    Ok(Arc::new(Routed::new(
        default,
        s.upstream_ns.clone(),
        routes,
    )))
}

/// Access rules and allow-list patterns that can never match, because they name a repository
/// in a form the mirror never serves or asks for: with a registry host in front
/// (`docker.io/library/*`; the mirror serves the default upstream's names bare and a named
/// upstream's under its name), or, in a named upstream's `allow`, with its own prefix (allow
/// patterns name repositories as that upstream knows them). What `config check` warns about.
pub fn unmatchable_name_rules(s: &Settings) -> Vec<String> {
    let named: Vec<&str> = s.upstreams.iter().map(|n| n.name.as_str()).collect();
    let mut hosts: Vec<(String, String)> = s
        .upstream_ns
        .iter()
        .map(|a| (a.to_ascii_lowercase(), "without a host".to_owned()))
        .collect();
    for n in &s.upstreams {
        hosts.extend(n.ns.iter().map(|a| {
            (
                a.to_ascii_lowercase(),
                format!("under {:?}", format!("{}/", n.name)),
            )
        }));
    }
    // The first component of a glob, when it is literal; regexes and placeholders are left alone.
    let first = |p: &str| -> Option<String> {
        if p.len() > 2 && p.starts_with('/') && p.ends_with('/') {
            return None;
        }
        let c = p.split('/').next()?;
        (!c.contains(['*', '?', '[', '\\', '$'])).then(|| c.to_ascii_lowercase())
    };
    let hosted = |field: &str, p: &str, out: &mut Vec<String>| {
        if let Some(c) = first(p)
            && !named.contains(&c.as_str())
            && let Some((_, how)) = hosts.iter().find(|(a, _)| *a == c)
        {
            out.push(format!(
                "{field} {p:?} never matches: the mirror serves {c}'s repositories {how}"
            ));
        }
    };
    let mut out = Vec::new();
    if let Some(auth) = &s.auth {
        for (i, rule) in auth.acl.iter().enumerate() {
            if let Some(p) = &rule.r#match.name {
                hosted(&format!("acl[{i}].match.name"), p, &mut out);
            }
        }
    }
    for p in &s.upstream_allow {
        hosted("upstream.allow", p, &mut out);
    }
    for (i, n) in s.upstreams.iter().enumerate() {
        for p in &n.allow {
            if first(p).as_deref() == Some(n.name.as_str()) && p.contains('/') {
                out.push(format!(
                    "upstreams[{i}].allow {p:?} never matches: allow patterns name repositories as {:?} knows them, without the {:?} prefix",
                    n.name,
                    format!("{}/", n.name)
                ));
            } else {
                hosted(&format!("upstreams[{i}].allow"), p, &mut out);
            }
        }
    }
    out
}

/// The names each repository goes by, as the upstreams route and name them: what access is
/// decided on. First the name the mirror serves and stores (`library/alpine`, `hub/library/x`),
/// then the short form a client may write for it (`alpine`, `hub/x`). A name that is not a
/// repository name is only itself.
pub fn repository_names(upstreams: Arc<Routed>) -> RepositoryNames {
    Arc::new(move |name: &str| {
        let Ok(n) = RepoName::parse(name) else {
            return vec![name.to_owned()];
        };
        let served = upstreams.canonical_name(&n);
        let mut names = vec![served.as_str().to_owned()];
        // The short form drops a `library` component, first or after an upstream's prefix,
        // when the mapping takes it back to the same repository.
        let parts: Vec<&str> = served.as_str().split('/').collect();
        for i in 0..parts.len().saturating_sub(1).min(2) {
            if parts[i] != "library" {
                continue;
            }
            let short = [&parts[..i], &parts[i + 1..]].concat().join("/");
            if let Ok(s) = RepoName::parse(&short)
                && upstreams.canonical_name(&s) == served
                && !names.contains(&short)
            {
                names.push(short);
            }
        }
        names
    })
}
