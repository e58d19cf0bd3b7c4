//! The HTTP transport object stores are reached through: a reqwest client per connection
//! worker ([`PerCore`]). OpenDAL's default is one client for the process, and a pooled
//! connection of it is driven by the worker that opened it, so a blob read for a client on one
//! worker waited on another worker for each chunk (warm S3 blob GETs were about 6% slower,
//! in CPU per request, than on the shared runtime). With a client per worker a request's
//! storage connections live on the thread that serves it.

use std::future::Future;

use opendal::{Buffer, HttpBody, HttpTransport, HttpTransporter};
use opendal_http_transport_reqwest::ReqwestTransport;

use super::StorageError;
use crate::percore::PerCore;

struct PerCoreTransport(PerCore<ReqwestTransport>);

impl HttpTransport for PerCoreTransport {
    fn fetch(
        &self,
        req: http::Request<Buffer>,
    ) -> impl Future<Output = opendal::Result<http::Response<HttpBody>>> + Send {
        self.0.get().fetch(req)
    }
}

/// A transport with a client of its own for each worker, configured as OpenDAL's default one.
pub(super) fn per_core() -> Result<HttpTransporter, StorageError> {
    let clients = PerCore::try_new(|| {
        crate::client_tls::builder()
            .build()
            .map(ReqwestTransport::new)
            .map_err(|e| StorageError::Io {
                key: "storage".into(),
                source: std::io::Error::other(e),
            })
    })?;
    Ok(HttpTransporter::new(PerCoreTransport(clients)))
}
