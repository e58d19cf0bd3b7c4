//! Assembly: the storage, descriptor cache, fleet leases, upstream clients and registry a
//! config's [`Settings`] describe, built the same way for `serve` (`server`) and for the
//! operator commands (`ops`), which both sit above this.

use std::sync::Arc;

use crate::auth::acl::NamePattern;
use crate::cache::lease::{Leases, LocalLeases};
use crate::cache::{DescriptorCache, MemoryCache, RedisCache};
use crate::config::{CacheBackend, Settings, StorageBackend};
use crate::expiry::AccessLog;
use crate::registry::{Registry, RegistrySettings};
use crate::storage::{FsStorage, S3Storage, Storage};
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

/// Temp files older than this at start-up belong to no running writer (fills take minutes,
/// not hours): a process killed mid-write left them.
const ABANDONED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

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
                let removed = fs.remove_abandoned_temp_files(ABANDONED_TEMP_AGE).await;
                if removed > 0 {
                    tracing::info!(
                        removed,
                        "removed temp files abandoned by an earlier process"
                    );
                }
            }
            Arc::new(fs)
        }
        StorageBackend::S3 => {
            let s3 = S3Storage::new(&s.s3).map_err(|e| AssembleError::Config(e.to_string()))?;
            // Say so at start when the bucket is missing or the credentials are wrong, but keep
            // starting: the store may come up after us, and every request reports its errors.
            match s3.check().await {
                Ok(()) => tracing::info!(storage = s3.describe(), "storage reachable"),
                Err(e) => {
                    tracing::error!(storage = s3.describe(), error = %e, "storage check failed")
                }
            }
            Arc::new(s3)
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
    let mut registry = Registry::new(
        Arc::new(crate::storage::Counted(b.storage)),
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
    .with_leases(b.leases);
    if let Some(log) = access {
        registry = registry.with_access_log(log);
    }
    Ok(Arc::new(registry))
}

/// One upstream client, behind its allow-list when it has one.
fn one_upstream(
    settings: &UpstreamSettings,
    allow: &[String],
) -> Result<Arc<dyn Upstream>, AssembleError> {
    let mut upstream: Arc<dyn Upstream> = Arc::new(HttpUpstream::new(settings.clone())?);
    if !allow.is_empty() {
        let patterns: Vec<NamePattern> = allow
            .iter()
            .map(|p| NamePattern::compile(p).expect("validated with the config"))
            .collect();
        let allowed: AllowFn = Arc::new(move |name| patterns.iter().any(|p| p.matches(name)));
        upstream = Arc::new(AllowListed::new(upstream, allowed));
    }
    Ok(upstream)
}

/// The default upstream, and the named ones routed by name prefix; each answers its `ns` values.
pub fn build_upstreams(s: &Settings) -> Result<Arc<Routed>, AssembleError> {
    let default = one_upstream(&s.upstream, &s.upstream_allow)?;
    let mut routes = Vec::new();
    for n in &s.upstreams {
        routes.push(Route {
            prefix: n.name.clone(),
            aliases: n.ns.clone(),
            upstream: one_upstream(&n.settings, &n.allow)?,
        });
    }
    Ok(Arc::new(Routed::new(
        default,
        s.upstream_ns.clone(),
        routes,
    )))
}
