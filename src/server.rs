//! The mirror's lifecycle: start the parts [`crate::assemble`] builds from [`Settings`] for the
//! configured role, serve HTTP, reload users and ACL, and drain gracefully on SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::assemble::{
    AssembleError, Backends, build_backends, build_registry_on, build_upstreams,
};
use crate::auth::realip::RealIp;
use crate::auth::service::TokenService;
use crate::config::{Config, Settings, StorageBackend, TlsConfig};
use crate::expiry::{AccessLog, Collector, ExpiryPolicy};
use crate::http::gate::Gate;
use crate::http::limit::LimitSettings;
use crate::http::tls::{TlsFiles, TlsListener};
use crate::http::token::TokenEndpoint;
use crate::http::{AppState, router};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("auth: {0}")]
    Auth(String),
    #[error("config: {0}")]
    Config(String),
}

/// The `tls` section's files, when both are set.
fn tls_files(t: &TlsConfig) -> Option<TlsFiles> {
    Some(TlsFiles {
        certificate: t.certificate.clone()?,
        key: t.key.clone()?,
    })
}

/// The checks of the sections the HTTP layer owns (`limits`, and that the `tls` pair loads),
/// for [`crate::config::load_with`]: reported with the rest of the config's problems.
pub fn http_sections(c: &Config) -> Vec<(String, String)> {
    let mut problems: Vec<(String, String)> = LimitSettings::check(
        c.limits.burst,
        c.limits.real_ip_header.as_deref(),
        &c.limits.trusted_proxies,
    )
    .into_iter()
    .map(|(k, m)| (format!("limits.{k}"), m))
    .collect();
    if let Some(Err(e)) = c
        .tls
        .as_ref()
        .and_then(tls_files)
        .map(|f| crate::http::tls::check(&f))
    {
        problems.push(("tls".into(), e));
    }
    problems
}

/// [`crate::config::load`] with the HTTP layer's checks: what `serve` and `config check` use.
pub fn load_config(
    path: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &crate::config::Overrides,
) -> Result<(Config, Settings), crate::config::ConfigErrors> {
    crate::config::load_with(path, env, overrides, &[&http_sections])
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
    crate::watch::hangup_means_reload();
    // Before anything that keeps metric handles (the registry's counters) is built.
    let metrics = crate::metrics::install();
    let roles = s.role.roles();
    let mut expiry = None;
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
        let registry = build_registry_on(&s, b, access, build_upstreams(&s)?).await?;
        let fleet = s.cache_backend == crate::config::CacheBackend::Redis;
        let bounds = crate::cluster::PeerBounds {
            conn: crate::http::conn::ConnBounds {
                header_read_timeout: s.header_read_timeout,
                max_concurrent_streams: s.max_concurrent_streams,
            },
            max_blob_streams: s.max_blob_streams,
            send_timeout: s.send_timeout,
        };
        crate::cluster::start(s.cluster.as_ref(), fleet, &registry, bounds)
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
    // Access is decided on the name the mirror serves (issue 18), by the token service and the
    // gate alike.
    let names = crate::assemble::repository_names(build_upstreams(&s)?);
    if let Some(service) = parts.as_ref().and_then(|p| p.token_service.as_ref()) {
        service.set_repository_names(names.clone());
    }
    let gate = parts.as_ref().and_then(|p| {
        p.verifier.clone().map(|verifier| Gate {
            verifier,
            realm: p.realm.clone(),
            path: p.path.clone(),
            proxies: p.real_ip.clone(),
            service: p.service.clone(),
            names: Some(names.clone()),
        })
    });
    let token = parts.as_ref().and_then(|p| {
        p.token_service.clone().map(|service| {
            (
                p.path.clone(),
                Arc::new(TokenEndpoint {
                    service,
                    real_ip: p.real_ip.clone(),
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
    if let (Some(v), Some(path)) = (registry.as_ref().and_then(|r| r.verifier()), &s.config_path) {
        tokio::spawn(reload_verify(v, path.clone(), key_files(&s.verify)));
    }
    let limits = crate::http::limit::ClientLimits::new(&LimitSettings::new(
        s.limits.requests_per_second,
        s.limits.burst,
    ));
    let mut state = AppState::new(registry, gate, metrics, limits).with_metrics_access(
        crate::http::scrape::MetricsAccess {
            token: s.metrics_token.clone(),
            separate: s.metrics_listen.is_some(),
        },
    );
    if s.status_page {
        state = state.with_status_page(s.auth.is_some());
    }
    state = state.with_blob_streams(
        crate::http::stream::BlobStreams::new(s.max_blob_streams, s.send_timeout)
            .per_client(s.max_blob_streams_per_client),
    );
    if let Some(policy) = &s.redirect {
        state = state.with_redirect(crate::http::redirect::RedirectClients::new(policy.clone()));
    }
    let real_ip = RealIp::new(
        s.limits.real_ip_header.as_deref(),
        &s.limits.trusted_proxies,
    )
    .map_err(|ps| {
        ServeError::Config(
            ps.into_iter()
                .map(|(k, m)| format!("limits.{k}: {m}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    state = state.with_real_ip(real_ip);
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
            StorageBackend::Gcs => s.gcs.to_string(),
            StorageBackend::Azblob => s.azblob.to_string(),
        },
        "listening on {addr}"
    );
    if let Some(addr) = s.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Bind { addr, source: e })?;
        tracing::info!(%addr, token = s.metrics_token.is_some(), "metrics on {addr}");
        let app = crate::http::scrape::router(state.clone());
        let bounds = crate::http::conn::ConnBounds {
            header_read_timeout: s.header_read_timeout,
            max_concurrent_streams: s.max_concurrent_streams,
        };
        // Scrapes end with the process: nothing there to drain.
        tokio::spawn(async move {
            let never = std::future::pending::<()>();
            if let Err(e) = crate::http::conn::serve(listener, app, bounds, never).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
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
    let bounds = crate::http::conn::ConnBounds {
        header_read_timeout: s.header_read_timeout,
        max_concurrent_streams: s.max_concurrent_streams,
    };
    type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;
    let mut server: Serving = match s.tls.as_ref().and_then(tls_files) {
        None => Box::pin(crate::http::conn::serve(listener, app, bounds, shutdown)),
        Some(files) => {
            let tls = TlsListener::new(listener, files).map_err(ServeError::Config)?;
            Box::pin(crate::http::conn::serve(tls, app, bounds, shutdown))
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
        let loaded = load_config(Some(&config), std::env::vars(), &Default::default());
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
                metrics::counter!(crate::metrics::AUTH_RELOADS, "result" => "ok").increment(1);
                tracing::info!(file = %config.display(), "users and ACL reloaded");
            }
            Err(e) => {
                metrics::counter!(crate::metrics::AUTH_RELOADS, "result" => "refused").increment(1);
                tracing::error!(file = %config.display(), error = %e, "reload refused; the previous users and ACL stay in force");
            }
        }
    }
}

fn key_files(p: &crate::verify::Policy) -> Vec<PathBuf> {
    p.rules.iter().flat_map(|r| r.files()).collect()
}

/// Reload the `verify` rules and their keys when the config file or a key file changes, or on
/// SIGHUP. A new key set is a new rule identity, so no verdict made under the old one is used.
/// A section that does not validate is refused with a logged error; the rules in force stay.
async fn reload_verify(
    verifier: Arc<crate::verify::Verifier>,
    config: PathBuf,
    mut keys: Vec<PathBuf>,
) {
    loop {
        let files: Vec<PathBuf> = std::iter::once(config.clone())
            .chain(keys.iter().cloned())
            .collect();
        let mut watch = crate::watch::FileWatch::new(files);
        watch.changed().await;
        match load_config(Some(&config), std::env::vars(), &Default::default()) {
            Ok((_, s)) => {
                keys = key_files(&s.verify);
                let rules = s.verify.rules.len();
                verifier.replace(s.verify);
                metrics::counter!(crate::metrics::VERIFY_RELOADS, "result" => "ok").increment(1);
                tracing::info!(file = %config.display(), rules, "signature rules reloaded");
            }
            Err(e) => {
                metrics::counter!(crate::metrics::VERIFY_RELOADS, "result" => "refused")
                    .increment(1);
                tracing::error!(file = %config.display(), error = %e, "reload refused; the previous signature rules stay in force");
            }
        }
    }
}

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
