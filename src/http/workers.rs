//! The per-core runtimes client connections are served on, like a static file server's worker
//! processes: each connection lives on one single-threaded runtime from accept to close, so
//! its socket's readiness, its request and its response never cross threads. On the shared
//! work-stealing runtime a warm manifest GET spent about a tenth of its CPU waking other
//! threads. Started once per process, on first use, and never stopped: tasks a request spawns
//! there (a fill, an upstream connection) may outlive the listener that accepted it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

use crate::percore;

struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

/// The runtime the next connection goes to, round robin; `None` on one core, where the shared
/// runtime serves connections itself.
pub fn next() -> Option<&'static Handle> {
    let w = WORKERS.get_or_init(start);
    if w.handles.is_empty() {
        return None;
    }
    let i = w.next.fetch_add(1, Ordering::Relaxed) % w.handles.len();
    Some(&w.handles[i])
}

fn start() -> Workers {
    let handles = (0..percore::workers())
        .filter_map(|i| match spawn(i) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a connection worker");
                None
            }
        })
        .collect();
    Workers {
        handles,
        next: AtomicUsize::new(0),
    }
}

fn spawn(i: usize) -> std::io::Result<Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name(format!("ocimirror-conn-{i}"))
        .spawn(move || {
            percore::enter(i);
            rt.block_on(std::future::pending::<()>())
        })?;
    Ok(handle)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    use axum::Router;
    use axum::routing::get;

    use crate::http::conn::ConnBounds;

    /// An app answering with the name of the thread that served the request.
    pub(crate) fn thread_names() -> Router {
        Router::new().route(
            "/",
            get(|| async { std::thread::current().name().unwrap_or("").to_owned() }),
        )
    }

    pub(crate) fn bounds() -> ConnBounds {
        ConnBounds {
            header_read_timeout: std::time::Duration::from_secs(5),
            max_concurrent_streams: 8,
        }
    }

    /// The threads that served `n` requests, each on a new connection.
    pub(crate) async fn served_on(client: reqwest::Client, url: &str, n: usize) -> Vec<String> {
        let mut names = Vec::new();
        for _ in 0..n {
            let resp = client.get(url).send().await.unwrap();
            assert!(resp.status().is_success());
            names.push(resp.text().await.unwrap());
        }
        names
    }

    /// What `names` must be on this machine: every core's worker in turn, or (one core) never a
    /// worker.
    pub(crate) fn assert_served_by_workers(names: &[String]) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers: BTreeSet<&str> = names
            .iter()
            .filter(|n| n.starts_with("ocimirror-conn-"))
            .map(String::as_str)
            .collect();
        if cores < 2 {
            assert!(workers.is_empty(), "{names:?}");
        } else {
            assert!(
                names.iter().all(|n| n.starts_with("ocimirror-conn-")),
                "{names:?}"
            );
            assert_eq!(workers.len(), cores, "{names:?}");
        }
    }

    /// Serve [`thread_names`] on `listener`, ask `url` with `client` on new connections, and
    /// check that the workers served them.
    pub(crate) async fn check_served_by_workers<L>(listener: L, client: reqwest::Client, url: &str)
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
        L::Io: crate::http::sendfile::SendFiles + crate::http::conn::Transport,
    {
        tokio::spawn(crate::http::conn::serve(
            listener,
            thread_names(),
            bounds(),
            std::future::pending::<()>(),
        ));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let names = served_on(client, url, 2 * cores).await;
        assert_served_by_workers(&names);
    }

    #[tokio::test]
    async fn plain_connections_are_served_on_each_worker_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        check_served_by_workers(listener, client, &format!("http://{addr}/")).await;
    }
}
