//! The one place errors become HTTP: every failure of the pull API is an [`ApiError`] with an
//! OCI error code, rendered as `{"errors":[{"code","message","detail"}]}` with the right status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::oci::{DigestError, NameError, RangeError};
use crate::registry::RegistryError;
use crate::upstream::UpstreamError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    TagInvalid,
    RangeInvalid,
    Unsupported,
    TooManyRequests,
    Unavailable,
    NotFound,
    PaginationNumberInvalid,
    Unauthorized,
    Denied,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unavailable => "UNAVAILABLE",
            Code::NotFound => "NOT_FOUND",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Internal => "UNKNOWN",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown | Code::ManifestUnknown | Code::NameUnknown | Code::NotFound => {
                StatusCode::NOT_FOUND
            }
            Code::DigestInvalid
            | Code::ManifestInvalid
            | Code::NameInvalid
            | Code::SizeInvalid
            | Code::TagInvalid
            | Code::PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub status: StatusCode,
    pub message: String,
    /// Rarely used parts, boxed so the error stays small on every `Result` path.
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Clone, Default)]
struct Extra {
    retry_after: Option<String>,
    /// For 416: the blob size, sent as `Content-Range: bytes */SIZE`.
    unsatisfied_size: Option<u64>,
    /// For 401: the challenge telling the client where to get a token.
    challenge: Option<String>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status: code.status(),
            message: message.into(),
            extra: None,
        }
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_challenge(mut self, challenge: String) -> Self {
        self.extra().challenge = Some(challenge);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.extra().retry_after = Some(seconds.to_string());
        self
    }

    fn with_retry_after_header(mut self, value: Option<String>) -> Self {
        self.extra().retry_after = value;
        self
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::BadTag(_) => ApiError::new(Code::TagInvalid, e.to_string()),
            NameError::BadDigestReference(d) => d.into(),
            _ => ApiError::new(Code::NameInvalid, e.to_string()),
        }
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> Self {
        ApiError::new(Code::DigestInvalid, e.to_string())
    }
}

impl From<RangeError> for ApiError {
    fn from(e: RangeError) -> Self {
        let size = match &e {
            RangeError::Unsatisfiable(_, size) => Some(*size),
            _ => None,
        };
        let mut a = ApiError::new(Code::RangeInvalid, e.to_string());
        a.extra().unsatisfied_size = size;
        a
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::NotFound => ApiError::new(Code::NameUnknown, "not found upstream"),
            UpstreamError::Denied(m) => ApiError::new(
                Code::NameUnknown,
                format!("repository does not exist upstream or the upstream denied access ({m})"),
            ),
            UpstreamError::CredentialsRefused(m) => ApiError::new(
                Code::Denied,
                format!(
                    "the upstream refused the mirror's credentials ({m}); the mirror's operator \
                     has to renew them"
                ),
            ),
            UpstreamError::RateLimited { retry_after } => ApiError::new(
                Code::TooManyRequests,
                "the upstream registry's rate limit is exhausted and this content is not cached",
            )
            .with_retry_after_header(retry_after),
            UpstreamError::Unavailable(m) => ApiError::new(
                Code::Unavailable,
                format!("content is not cached and the upstream is unavailable: {m}"),
            ),
            UpstreamError::NotAllowed => ApiError::new(
                Code::Denied,
                "this repository is not in the mirror's allow-list and is not cached",
            ),
            UpstreamError::ManifestTooLarge => {
                tracing::warn!(
                    reason = "larger than 4 MiB",
                    "upstream manifest refused as invalid"
                );
                ApiError::new(
                    Code::ManifestInvalid,
                    "the upstream manifest is larger than 4 MiB and is refused",
                )
                .with_status(StatusCode::BAD_GATEWAY)
            }
            UpstreamError::ManifestRefused(m) => {
                tracing::warn!(reason = %m, "upstream manifest refused as invalid");
                ApiError::new(Code::ManifestInvalid, m).with_status(StatusCode::BAD_GATEWAY)
            }
            UpstreamError::Invalid(m) => {
                // The client sees a 502; the operator needs the reason.
                tracing::warn!(reason = %m, "upstream answer refused as invalid");
                ApiError::new(
                    Code::Unavailable,
                    format!("the upstream sent an invalid response: {m}"),
                )
                .with_status(StatusCode::BAD_GATEWAY)
            }
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::BlobUnknown => ApiError::new(Code::BlobUnknown, e.to_string()),
            RegistryError::ManifestUnknown(_) => {
                ApiError::new(Code::ManifestUnknown, e.to_string())
            }
            RegistryError::NameUnknown => ApiError::new(Code::NameUnknown, e.to_string()),
            RegistryError::ManifestInvalid(_) => {
                ApiError::new(Code::ManifestInvalid, e.to_string())
                    .with_status(StatusCode::INTERNAL_SERVER_ERROR)
            }
            RegistryError::Range(r) => r.into(),
            RegistryError::Upstream(u) => u.into(),
            // An I/O error is the backend failing (S3 unreachable, a disk error): 503, which
            // clients retry, as for an upstream outage. A bad key stays an internal error.
            RegistryError::Storage(s @ crate::storage::StorageError::Io { .. }) => {
                tracing::error!(error = %s, "storage error");
                ApiError::new(Code::Unavailable, "storage unavailable")
            }
            // The breaker is open: logged once per transition, not per request.
            RegistryError::Storage(crate::storage::StorageError::Unavailable(_)) => ApiError::new(
                Code::Unavailable,
                "storage unavailable: it failed repeatedly and is being probed; retry shortly",
            ),
            RegistryError::Storage(s) => {
                tracing::error!(error = %s, "storage error");
                ApiError::new(Code::Internal, "storage error")
            }
            RegistryError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ApiError::new(Code::Internal, "internal error")
            }
            RegistryError::Unverified(r) => ApiError::new(
                Code::Denied,
                format!("refused by the mirror's signature policy: {r}"),
            ),
            RegistryError::StorageAndUpstreamDown(_) => ApiError::new(
                Code::Unavailable,
                format!("{e}; nothing can serve this content now, retry shortly"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let extra = self.extra.map(|e| *e).unwrap_or_default();
        let body = json!({
            "errors": [{
                "code": self.code.as_str(),
                "message": self.message,
                "detail": serde_json::Value::Null,
            }]
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        if let Some(ra) = extra
            .retry_after
            .and_then(|r| HeaderValue::from_str(&r).ok())
        {
            h.insert(header::RETRY_AFTER, ra);
        }
        if let Some(c) = extra.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        if let Some(size) = extra.unsatisfied_size
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        resp
    }
}
