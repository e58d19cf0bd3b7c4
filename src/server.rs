//! Assembly and lifecycle: build the storage, cache, upstream and registry from [`Settings`],
//! serve HTTP, and drain gracefully on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::auth::acl::NamePattern;
use crate::cache::lease::{Leases, LocalLeases};
use crate::cache::{DescriptorCache, MemoryCache, RedisCache};
use crate::config::{CacheBackend, Settings, StorageBackend};
use crate::expiry::{AccessLog, Collector, ExpiryPolicy};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

use crate::auth::service::TokenService;
use crate::http::gate::Gate;
use crate::http::tls::TlsListener;
use crate::http::token::TokenEndpoint;
use crate::http::{AppState, router};
use crate::registry::{Registry, RegistrySettings};
use crate::storage::{FsStorage, S3Storage, Storage};
use crate::upstream::{
    AllowFn, AllowListed, HttpUpstream, Route, Routed, Upstream, UpstreamSettings,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the upstream client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("auth: {0}")]
    Auth(String),
    #[error("config: {0}")]
    Config(String),
    #[error("expiry: {0}")]
    Expiry(String),
}

/// Install the process-wide Prometheus recorder (once; later calls get the same handle).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("ocimirror_http_request_duration_seconds".into()),
                    &buckets,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("ocimirror_blob_first_byte_seconds".into()),
                    &buckets,
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// The shared parts a replica works on: storage, the descriptor cache, and the fleet's leases.
pub struct Backends {
    pub storage: Arc<dyn Storage>,
    pub cache: Arc<dyn DescriptorCache>,
    pub leases: Arc<dyn Leases>,
}

pub async fn build_backends(s: &Settings) -> Result<Backends, ServeError> {
    let storage: Arc<dyn Storage> = match s.storage_backend {
        StorageBackend::Filesystem => {
            if !s.read_only {
                std::fs::create_dir_all(&s.storage_root).map_err(|e| ServeError::Dir {
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
            let s3 = S3Storage::new(&s.s3).map_err(|e| ServeError::Config(e.to_string()))?;
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
                RedisCache::new(&s.redis).map_err(|e| ServeError::Config(format!("{e:?}")))?,
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

pub async fn build_registry(s: &Settings) -> Result<Arc<Registry>, ServeError> {
    build_registry_on(s, build_backends(s).await?, None, build_upstreams(s)?).await
}

pub async fn build_registry_on(
    s: &Settings,
    b: Backends,
    access: Option<Arc<AccessLog>>,
    upstream: Arc<Routed>,
) -> Result<Arc<Registry>, ServeError> {
    let spool_dir = s.data_dir.join("spool");
    std::fs::create_dir_all(&spool_dir).map_err(|e| ServeError::Dir {
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

/// One expiry pass over the configured storage, for `ocimirror gc`.
pub async fn expiry_pass(
    s: &Settings,
    policy: ExpiryPolicy,
    dry_run: bool,
) -> Result<crate::expiry::Report, ServeError> {
    let b = build_backends(s).await?;
    Collector::new(b.storage, b.leases, policy)
        .pass(dry_run)
        .await
        .map_err(|e| ServeError::Expiry(e.to_string()))
}

/// One upstream client, behind its allow-list when it has one.
fn one_upstream(
    settings: &UpstreamSettings,
    allow: &[String],
) -> Result<Arc<dyn Upstream>, ServeError> {
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

/// The default upstream, and the named ones routed by name prefix.
pub fn build_upstreams(s: &Settings) -> Result<Arc<Routed>, ServeError> {
    let default = one_upstream(&s.upstream, &s.upstream_allow)?;
    let host = |u: &UpstreamSettings| {
        let h = u.url.host_str().unwrap_or_default().to_ascii_lowercase();
        match u.url.port() {
            Some(p) => vec![format!("{h}:{p}")],
            None => vec![
                h.clone(),
                format!("{h}:{}", u.url.port_or_known_default().unwrap_or(443)),
            ],
        }
    };
    let mut default_aliases = host(&s.upstream);
    if s.upstream.library_prefix {
        // Docker Hub's names as containerd sends them.
        default_aliases.extend([
            "docker.io".into(),
            "index.docker.io".into(),
            "registry-1.docker.io".into(),
        ]);
    }
    let mut routes = Vec::new();
    for n in &s.upstreams {
        routes.push(Route {
            prefix: n.name.clone(),
            aliases: host(&n.settings),
            upstream: one_upstream(&n.settings, &n.allow)?,
        });
    }
    Ok(Arc::new(Routed::new(default, default_aliases, routes)))
}

/// The background work of a replica with an expiry policy: its access log, written in
/// batches, and the schedule of expiry passes. Stopped (with a last flush) at shutdown.
struct Expiry {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Expiry {
    fn start(b: &Backends, policy: &ExpiryPolicy) -> (Arc<AccessLog>, Expiry) {
        let log = AccessLog::new(b.storage.clone(), policy);
        let collector = Arc::new(
            Collector::new(b.storage.clone(), b.leases.clone(), policy.clone())
                .with_access_log(log.clone()),
        );
        let stop = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(log.clone().run(stop.clone())),
            tokio::spawn(collector.run(stop.clone())),
        ];
        (log, Expiry { stop, tasks })
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

pub async fn serve(s: Settings) -> Result<(), ServeError> {
    let roles = s.role.roles();
    let mut expiry = None;
    let upstreams = build_upstreams(&s)?;
    let registry = if roles.verify {
        let b = build_backends(&s).await?;
        let access = match &s.expiry {
            Some(policy) => {
                let (log, e) = Expiry::start(&b, policy);
                expiry = Some(e);
                Some(log)
            }
            None => None,
        };
        let registry = build_registry_on(&s, b, access, upstreams.clone()).await?;
        let fleet = s.cache_backend == CacheBackend::Redis;
        crate::cluster::start(s.cluster.as_ref(), fleet, &registry, s.header_read_timeout)
            .await
            .map_err(|e| ServeError::Config(e.to_string()))?;
        Some(registry)
    } else {
        None
    };
    let parts = match &s.auth {
        Some(a) => Some(a.build(roles).map_err(|ps| {
            ServeError::Auth(
                ps.into_iter()
                    .map(|(k, m)| format!("auth.{k}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?),
        None => None,
    };
    let gate = parts.as_ref().and_then(|p| {
        p.verifier.clone().map(|verifier| Gate {
            verifier,
            realm: p.realm.clone(),
            path: p.path.clone(),
            service: p.service.clone(),
        })
    });
    let token = parts.as_ref().and_then(|p| {
        p.token_service.clone().map(|service| {
            (
                p.path.clone(),
                Arc::new(TokenEndpoint {
                    service,
                    real_ip_header: p.real_ip_header.clone(),
                }),
            )
        })
    });
    if let (Some((_, ep)), Some(path)) = (&token, &s.config_path) {
        tokio::spawn(reload_policy(
            ep.service.clone(),
            path.clone(),
            s.auth.as_ref().and_then(|a| a.htpasswd.clone()),
        ));
    }
    let limits = crate::http::limit::ClientLimits::new(&s.limits);
    let mut state = AppState::new(registry, gate, metrics_handle(), Some(upstreams), limits);
    if s.status_page {
        state = state.with_status_page(s.auth.is_some());
    }
    let listener = TcpListener::bind(s.listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: s.listen,
            source: e,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(
        %addr,
        role = ?s.role,
        auth = s.auth.is_some(),
        upstream = %s.upstream.url,
        offline = s.offline,
        read_only = s.read_only,
        tls = s.tls.is_some(),
        storage = %match s.storage_backend {
            StorageBackend::Filesystem => s.storage_root.display().to_string(),
            StorageBackend::S3 => format!("s3://{}{}", s.s3.bucket, s.s3.root),
        },
        "listening on {addr}"
    );
    let app = router(state.clone(), token);
    let drain_state = state.clone();
    let grace = s.shutdown_timeout;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!(?grace, "shutting down: draining in-flight requests");
        drain_state.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(());
    };
    // Our own connection loop rather than `axum::serve`, which sets no header read timeout:
    // see `http::conn` (slowloris, idle connections).
    let header_read = s.header_read_timeout;
    type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;
    let mut server: Serving = match &s.tls {
        None => Box::pin(crate::http::conn::serve(
            listener,
            app,
            header_read,
            shutdown,
        )),
        Some(files) => {
            let tls = TlsListener::new(listener, files.clone()).map_err(ServeError::Config)?;
            Box::pin(crate::http::conn::serve(tls, app, header_read, shutdown))
        }
    };
    let deadline = async {
        let _ = stop_rx.await;
        tokio::time::sleep(grace).await;
    };
    let mut deadline = std::pin::pin!(deadline);
    tokio::select! {
        r = &mut server => r.map_err(ServeError::Serve)?,
        _ = &mut deadline => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
    // Clients may have every byte of a blob whose commit to storage is still running; leaving
    // now would lose it and make the next pull fetch it again.
    if let Some(r) = &state.registry {
        tokio::select! {
            _ = r.wait_for_fills() => {}
            _ = &mut deadline => {
                tracing::warn!("shutdown grace period over with fills still committing");
            }
        }
    }
    if let Some(e) = expiry {
        e.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reload users and ACL when the config file or the htpasswd file changes, or on SIGHUP. A
/// file that does not validate is refused with a logged error; the policy in force stays.
/// Other settings take effect on restart.
async fn reload_policy(service: Arc<TokenService>, config: PathBuf, htpasswd: Option<PathBuf>) {
    let files: Vec<PathBuf> = std::iter::once(config.clone()).chain(htpasswd).collect();
    let mut watch = crate::watch::FileWatch::new(files);
    loop {
        watch.changed().await;
        let loaded = crate::config::load(Some(&config), std::env::vars(), &Default::default());
        let result = match loaded {
            Ok((c, _)) => match c.auth {
                Some(a) => a.policy().map_err(|ps| {
                    ps.into_iter()
                        .map(|(k, m)| format!("auth.{k}: {m}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
                None => Err("the auth section was removed; restart to turn auth off".into()),
            },
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(policy) => {
                service.replace_policy(policy);
                metrics::counter!("ocimirror_auth_reloads_total", "result" => "ok").increment(1);
                tracing::info!(file = %config.display(), "users and ACL reloaded");
            }
            Err(e) => {
                metrics::counter!("ocimirror_auth_reloads_total", "result" => "refused")
                    .increment(1);
                tracing::error!(file = %config.display(), error = %e, "reload refused; the previous users and ACL stay in force");
            }
        }
    }
}

/// Temp files older than this at start-up belong to no running writer (fills take minutes,
/// not hours): a process killed mid-write left them.
const ABANDONED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
