//! An S3 implementation (s3s-fs, or a test's wrapper of it) served with SigV4 checking on a
//! loopback port in the calling test's runtime. The one way the tests serve s3s: the integration
//! harness (`tests/common/s3.rs`) and the library's S3 tests both include this file (`#[path]`).

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

/// Serve `store` for one identity (`access_key`/`secret_key`): its `http://` endpoint and the
/// accepting task (abort it to stop serving).
pub async fn serve_s3<T: s3s::S3>(
    store: T,
    access_key: &str,
    secret_key: &str,
) -> (String, tokio::task::JoinHandle<()>) {
    let mut b = s3s::service::S3ServiceBuilder::new(store);
    b.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), task)
}
