//! Presigned read URLs of a bucket's objects (`storage.redirect`): a URL a client can GET without
//! credentials until it expires, carrying a signature and never a secret.
//!
//! S3 and Google Cloud Storage sign through OpenDAL (SigV4 query signing; GCS V4 signing with a
//! service account key). Azure Blob Storage is signed here with a service SAS made from the
//! account key, read-only and for the one blob: OpenDAL 0.59 presigns Azure only by appending a
//! configured SAS token, which would hand that token (a credential, often with write rights and
//! a long life) to every client.

use std::time::Duration;

use opendal::Operator;
use url::Url;

use super::StorageError;

/// How an [`super::ObjectStorage`] makes presigned URLs.
#[derive(Clone)]
pub(super) enum Presigner {
    /// OpenDAL's own presign (S3, GCS).
    Operator,
    /// A service SAS signed with the storage account's key.
    AzureKey(AzureSas),
    /// This store hands out no URLs (Azure without an account key).
    None,
}

/// What an Azure service SAS for one blob is made from.
#[derive(Clone)]
pub(super) struct AzureSas {
    /// `https://account.blob.core.windows.net` or an emulator's `http://host:port/account`.
    pub endpoint: String,
    pub account: String,
    /// The account key (base64), as configured.
    pub key: String,
    pub container: String,
    /// The key prefix, without leading or trailing `/`.
    pub root: String,
}

impl Presigner {
    pub(super) async fn presign_read(
        &self,
        op: &Operator,
        key: &str,
        expiry: Duration,
    ) -> Result<Option<String>, StorageError> {
        match self {
            Presigner::None => Ok(None),
            Presigner::Operator => {
                let req = op
                    .presign_read(key, expiry)
                    .await
                    .map_err(|e| StorageError::Io {
                        key: key.to_owned(),
                        source: std::io::Error::other(e),
                    })?;
                Ok(Some(req.uri().to_string()))
            }
            Presigner::AzureKey(sas) => sas.url(key, expiry).map(Some),
        }
    }
}

impl AzureSas {
    fn url(&self, key: &str, expiry: Duration) -> Result<String, StorageError> {
        use reqsign_azure_storage::{ServiceSasResource, ServiceSharedAccessSignature};
        let blob = match self.root.as_str() {
            "" => key.to_owned(),
            root => format!("{root}/{key}"),
        };
        let fail = |e: reqsign_core::Error| StorageError::Io {
            key: key.to_owned(),
            source: std::io::Error::other(e),
        };
        let token = ServiceSharedAccessSignature::new(
            self.account.clone(),
            self.key.clone(),
            ServiceSasResource::Blob {
                container: self.container.clone(),
                blob: blob.clone(),
            },
            // Read only.
            "r".to_owned(),
            reqsign_core::time::Timestamp::now() + expiry,
        )
        .token()
        .map_err(fail)?;
        let mut url =
            Url::parse(self.endpoint.trim_end_matches('/')).map_err(|e| StorageError::Io {
                key: key.to_owned(),
                source: std::io::Error::other(e),
            })?;
        url.path_segments_mut()
            .map_err(|()| StorageError::InvalidKey(self.endpoint.clone()))?
            .pop_if_empty()
            .push(&self.container)
            .extend(blob.split('/'));
        url.query_pairs_mut().extend_pairs(token);
        Ok(url.into())
    }
}
