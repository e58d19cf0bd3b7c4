//! The stores a mirror's fleet and redirects are tested on, behind one seam: [`Backend`] names a
//! store, [`Store`] is one running for a test (s3s-fs in this process, SeaweedFS, fake-gcs-server
//! or Azurite), giving the `storage:` lines a mirror takes, an OpenDAL client of what the mirror
//! wrote, and what the store's URLs may show. [`on_backends!`] makes one test per backend of one
//! test body.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::Response;

use super::{
    AZURITE_KEY, Azurite, FakeGcs, LocalServer, S3_SECRET_KEY, S3Server, Weed, bad_gateway,
    forwarded, forwarding_client, hex_of, response_head, s3_operator, sha256_digest,
};

/// The key of a blob's object, relative to the mirror's root (Distribution's layout).
pub fn blob_key(digest: &str) -> String {
    let hex = hex_of(digest);
    format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
}

/// `mod $body { #[tokio::test] async fn $backend() { super::$body(Backend::named("$backend")) } }`
/// for each backend listed (`s3s`, `seaweedfs`, `fake_gcs`, `azurite`): one test body, one test
/// per store, filtered as `test($body)` or `test($body::fake_gcs)`.
#[allow(unused_macros)]
macro_rules! on_backends {
    ($body:ident: $($backend:ident),+ $(,)?) => {
        mod $body {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $backend() {
                    super::$body($crate::common::Backend::named(stringify!($backend))).await
                }
            )+
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_backends;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// S3: s3s-fs in the test's process, with slow-write and slow-miss knobs ([`S3Server`]).
    S3s,
    /// S3: SeaweedFS, a production S3 server, as a child process ([`Weed`]).
    Seaweedfs,
    /// Google Cloud Storage: fake-gcs-server, unauthenticated ([`FakeGcs`]).
    FakeGcs,
    /// Azure Blob Storage: Azurite, with the development account's key ([`Azurite`]).
    Azurite,
}

impl Backend {
    /// The backend an [`on_backends!`] test is named after.
    pub fn named(name: &str) -> Backend {
        match name {
            "s3s" => Backend::S3s,
            "seaweedfs" => Backend::Seaweedfs,
            "fake_gcs" => Backend::FakeGcs,
            "azurite" => Backend::Azurite,
            other => panic!("no backend is named {other:?}"),
        }
    }
}

enum Running {
    S3s(S3Server),
    Seaweedfs(Weed),
    FakeGcs(FakeGcs),
    Azurite(Azurite),
}

/// A store running for one test; stopped on drop.
pub struct Store {
    pub backend: Backend,
    running: Running,
    /// In front of an emulator when its big writes can be slowed down.
    delays: Option<WriteDelays>,
}

impl Store {
    /// `None` (skip) when the store's program is missing, unless `OCIMIRROR_REQUIRE_ALL`.
    pub async fn start(backend: Backend) -> Option<Store> {
        let running = match backend {
            Backend::S3s => Running::S3s(S3Server::start().await),
            Backend::Seaweedfs => Running::Seaweedfs(Weed::start().await?),
            Backend::FakeGcs => Running::FakeGcs(FakeGcs::start().await?),
            Backend::Azurite => Running::Azurite(Azurite::start().await?),
        };
        Some(Store {
            backend,
            running,
            delays: None,
        })
    }

    /// [`Store::start`], with big writes that [`Store::set_slow_big_writes`] can slow down:
    /// s3s-fs does it itself; an emulator is given to mirrors behind an HTTP forwarder in this
    /// process that holds back the requests publishing a big object. Not for SeaweedFS (its
    /// SigV4 signatures cover the host a forwarder would change).
    pub async fn start_slowable(backend: Backend) -> Option<Store> {
        let mut store = Store::start(backend).await?;
        store.delays = match &store.running {
            Running::S3s(_) => None,
            Running::Seaweedfs(_) => panic!("SeaweedFS writes cannot be slowed down"),
            Running::FakeGcs(g) => Some(WriteDelays::start(&g.endpoint).await),
            Running::Azurite(a) => Some(WriteDelays::start(&a.endpoint).await),
        };
        Some(store)
    }

    /// The store's own endpoint (where presigned URLs point).
    pub fn endpoint(&self) -> &str {
        match &self.running {
            Running::S3s(s) => &s.endpoint,
            Running::Seaweedfs(w) => &w.endpoint,
            Running::FakeGcs(g) => &g.endpoint,
            Running::Azurite(a) => &a.endpoint,
        }
    }

    /// The lines under `storage:` for a mirror on this store, key prefix `root`.
    pub fn storage_yaml(&self, root: &str) -> String {
        let at = self
            .delays
            .as_ref()
            .map_or_else(|| self.endpoint().to_owned(), WriteDelays::url);
        match &self.running {
            Running::S3s(s) => s.storage_yaml(root),
            Running::Seaweedfs(w) => w.storage_yaml(root),
            Running::FakeGcs(g) => g.storage_yaml_at(&at, root),
            Running::Azurite(a) => a.storage_yaml_at(&at, root),
        }
    }

    /// An OpenDAL client of the store under `root` (keys relative to it), talking to the store
    /// directly.
    pub fn operator(&self, root: &str) -> opendal::Operator {
        match &self.running {
            Running::S3s(s) => s3_operator(&s.endpoint, root),
            Running::Seaweedfs(w) => s3_operator(&w.endpoint, root),
            Running::FakeGcs(g) => g.operator(root),
            Running::Azurite(a) => a.operator(root),
        }
    }

    /// The object `key` under `root`, hashed: (size, digest), or `None` when absent.
    pub async fn stored(&self, root: &str, key: &str) -> Option<(u64, String)> {
        let data = self.operator(root).read(key).await.ok()?.to_vec();
        Some((data.len() as u64, sha256_digest(&data)))
    }

    /// From now on, writes that publish an object of 1 MiB or more take `d` longer. Needs
    /// [`Store::start_slowable`].
    pub fn set_slow_big_writes(&self, d: Duration) {
        match (&self.running, &self.delays) {
            (Running::S3s(s), _) => s.set_slow_big_writes(d),
            (_, Some(w)) => w.set(d),
            _ => panic!("{:?} was not started slowable", self.backend),
        }
    }

    /// The largest object the store takes: fake-gcs-server has no XML multipart uploads (what
    /// OpenDAL, and so ocimirror, uses past one 8 MiB part), so objects stay within one part.
    pub fn max_object(&self) -> u64 {
        match self.backend {
            Backend::FakeGcs => 7 << 20,
            _ => u64::MAX,
        }
    }

    /// The secret a mirror on this store holds, which no URL it hands out may contain: the S3
    /// secret key, Azure's account key; none on the unauthenticated fake-gcs-server.
    pub fn secret(&self) -> Option<&'static str> {
        match self.backend {
            Backend::S3s | Backend::Seaweedfs => Some(S3_SECRET_KEY),
            Backend::Azurite => Some(AZURITE_KEY),
            Backend::FakeGcs => None,
        }
    }

    /// Whether the store checks a presigned URL's signature and expiry: fake-gcs-server serves
    /// any URL of an existing object, whatever its signature, and the mirror's URLs to it are
    /// unsigned anyway (no credentials with an endpoint).
    pub fn checks_signatures(&self) -> bool {
        self.backend != Backend::FakeGcs
    }
}

/// An HTTP forwarder in front of a store, holding back (by a delay the test sets) each request
/// that publishes an object of 1 MiB or more: a single upload of that size, or an Azure block
/// list commit. Azure's Shared Key signature does not cover the host, and fake-gcs-server's
/// requests are unsigned, so both pass through unchanged.
struct WriteDelays {
    delay_ms: Arc<AtomicU64>,
    /// The store's endpoint on the forwarder's address (the same path: Azurite's names the
    /// account).
    url: String,
    _server: LocalServer,
}

struct Forward {
    /// `scheme://host:port` of the store.
    target: String,
    http: reqwest::Client,
    delay_ms: Arc<AtomicU64>,
}

impl WriteDelays {
    async fn start(endpoint: &str) -> WriteDelays {
        let target = url::Url::parse(endpoint).unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let state = Arc::new(Forward {
            target: target.origin().ascii_serialization(),
            http: forwarding_client(),
            delay_ms: delay_ms.clone(),
        });
        let server =
            LocalServer::start(axum::Router::new().fallback(forward).with_state(state)).await;
        WriteDelays {
            delay_ms,
            url: format!("{}{}", server.url(), target.path().trim_end_matches('/')),
            _server: server,
        }
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn set(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Whether a request publishes an object of 1 MiB or more: an Azure block list commit (`PUT
/// ?comp=blocklist`), or a single upload (Azure `PUT` without `comp`, GCS `POST /upload/...`)
/// of that size. Block uploads only stage bytes.
fn publishes_big_object(method: &Method, query: &str, len: usize) -> bool {
    let comp = query
        .split('&')
        .find_map(|p| p.strip_prefix("comp="))
        .unwrap_or("");
    match comp {
        "blocklist" => true,
        "" => (method == Method::PUT || method == Method::POST) && len >= 1 << 20,
        _ => false,
    }
}

async fn forward(State(f): State<Arc<Forward>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    if publishes_big_object(&parts.method, parts.uri.query().unwrap_or(""), body.len()) {
        let ms = f.delay_ms.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    match forwarded(&f.http, &f.target, &parts, |_| false)
        .body(body)
        .send()
        .await
    {
        Ok(resp) => response_head(&resp)
            .body(Body::from_stream(resp.bytes_stream()))
            .unwrap(),
        Err(e) => bad_gateway(e),
    }
}
