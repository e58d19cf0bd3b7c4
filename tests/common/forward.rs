//! In-process HTTP forwarders, for what a real part cannot do on demand (pace, hold or corrupt
//! an upstream's bodies, delay a store's commits): [`LocalServer`], an axum app on a loopback
//! port, and the request and response halves every forwarder shares.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderName, response};
use axum::response::Response;

/// An axum app served on a loopback port in the test's runtime; stopped on drop.
pub struct LocalServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LocalServer {
    pub async fn start(app: axum::Router) -> LocalServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        LocalServer { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A client for forwarders: no proxy, no redirects followed (the client they forward for sees
/// them), no timeout (a held body is the point).
pub fn forwarding_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The request `parts` describe, sent on to `target` (`scheme://host:port`): same method, path,
/// query and headers, but `host`, `content-length` (the client sets it for the body it is
/// given) and what `drop` says.
pub fn forwarded(
    http: &reqwest::Client,
    target: &str,
    parts: &Parts,
    drop: impl Fn(&HeaderName) -> bool,
) -> reqwest::RequestBuilder {
    let path_q = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = http.request(parts.method.clone(), format!("{target}{path_q}"));
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" && !drop(k) {
            out = out.header(k, v);
        }
    }
    out
}

/// The status and headers of `resp`, the forwarded request's answer, but the hop-by-hop ones:
/// the head of the answer to pass back.
pub fn response_head(resp: &reqwest::Response) -> response::Builder {
    let mut b = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "connection" {
            b = b.header(k, v);
        }
    }
    b
}

/// `502` saying why the forwarded request failed.
pub fn bad_gateway(e: reqwest::Error) -> Response {
    Response::builder()
        .status(502)
        .body(Body::from(e.to_string()))
        .unwrap()
}
