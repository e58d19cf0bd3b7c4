//! Multipart uploads left behind by writers killed before they could complete or abort them
//! (a writer that fails or is dropped aborts its own). They are invisible as objects but hold
//! storage until aborted. OpenDAL has no call for listing them, so the two requests needed,
//! `ListMultipartUploads` under the storage root and `AbortMultipartUpload`, are signed here
//! with reqsign, the signer OpenDAL itself uses, with the same static or environment credentials.

use std::time::{Duration, SystemTime};

use quick_xml::Reader;
use quick_xml::events::Event;
use reqsign_aws_v4::{Credential, EnvCredentialProvider, RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, OsEnv, Signer};
use url::Url;

use crate::storage::StorageError;

/// SHA-256 of an empty body: these requests have none.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Clone)]
pub struct UploadSweeper {
    client: reqwest::Client,
    /// The bucket's URL, path-style or virtual-hosted, ending in `/`.
    bucket: Url,
    /// Keys under the storage root start with this.
    prefix: String,
    signer: Signer<Credential>,
}

#[derive(Debug, PartialEq, Eq)]
struct Upload {
    key: String,
    id: String,
    initiated: Option<SystemTime>,
}

struct Page {
    uploads: Vec<Upload>,
    next: Option<(String, String)>,
}

fn io(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        key: "multipart uploads".into(),
        source: std::io::Error::other(format!("{what}: {e}")),
    }
}

impl UploadSweeper {
    pub fn new(
        bucket: Url,
        root: &str,
        region: &str,
        keys: Option<(String, String, Option<String>)>,
    ) -> Result<Self, StorageError> {
        let ctx = Context::new().with_env(OsEnv);
        let request = RequestSigner::new("s3", region);
        let signer = match keys {
            Some((id, secret, token)) => {
                let mut p = StaticCredentialProvider::new(&id, &secret);
                if let Some(t) = token {
                    p = p.with_session_token(&t);
                }
                Signer::new(ctx, p, request)
            }
            // The environment's keys; other sources of the AWS chain are left to the bucket's
            // lifecycle rule.
            None => Signer::new(ctx, EnvCredentialProvider::new(), request),
        };
        let root = root.trim_matches('/');
        Ok(UploadSweeper {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| io("client", e))?,
            bucket,
            prefix: if root.is_empty() {
                String::new()
            } else {
                format!("{root}/")
            },
            signer,
        })
    }

    async fn send(
        &self,
        method: http::Method,
        url: Url,
    ) -> Result<reqwest::Response, StorageError> {
        let (mut parts, ()) = http::Request::builder()
            .method(method)
            .uri(url.as_str())
            .header("x-amz-content-sha256", EMPTY_SHA256)
            .body(())
            .map_err(|e| io("request", e))?
            .into_parts();
        self.signer
            .sign(&mut parts, None)
            .await
            .map_err(|e| io("signing", e))?;
        let req = reqwest::Request::try_from(http::Request::from_parts(parts, Vec::<u8>::new()))
            .map_err(|e| io("request", e))?;
        self.client.execute(req).await.map_err(|e| io("request", e))
    }

    /// One page of the listing; None when the store does not implement the call (501).
    async fn page(&self, marker: Option<&(String, String)>) -> Result<Option<Page>, StorageError> {
        let mut url = self.bucket.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_key_only("uploads");
            q.append_pair("prefix", &self.prefix);
            if let Some((key, id)) = marker {
                q.append_pair("key-marker", key);
                q.append_pair("upload-id-marker", id);
            }
        }
        let resp = self.send(http::Method::GET, url).await?;
        if resp.status() == reqwest::StatusCode::NOT_IMPLEMENTED {
            return Ok(None);
        }
        let body = checked(resp)
            .await?
            .text()
            .await
            .map_err(|e| io("listing", e))?;
        parse_page(&body).map(Some).map_err(|e| io("listing", e))
    }

    /// Abort every upload under the root started more than `age` ago. Returns how many.
    pub async fn sweep(&self, age: Duration) -> Result<usize, StorageError> {
        let now = SystemTime::now();
        let mut aborted = 0;
        let mut marker = None;
        loop {
            let Some(page) = self.page(marker.as_ref()).await? else {
                tracing::debug!("the store does not list multipart uploads; nothing swept");
                return Ok(aborted);
            };
            for u in page.uploads {
                let old = u
                    .initiated
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|a| a >= age);
                if !old || !u.key.starts_with(&self.prefix) {
                    continue;
                }
                let mut url = self
                    .bucket
                    .join(&encode_key(&u.key))
                    .map_err(|e| io("key", e))?;
                url.query_pairs_mut().append_pair("uploadId", &u.id);
                checked(self.send(http::Method::DELETE, url).await?).await?;
                tracing::info!(key = %u.key, "aborted an abandoned multipart upload");
                aborted += 1;
            }
            match page.next {
                Some(n) => marker = Some(n),
                None => return Ok(aborted),
            }
        }
    }
}

async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, StorageError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    Err(io(
        "S3",
        format!("{status}: {}", body.chars().take(300).collect::<String>()),
    ))
}

/// Percent-encode each segment of `key`, keeping the `/` between them.
fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|s| {
            url::form_urlencoded::byte_serialize(s.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn parse_page(xml: &str) -> Result<Page, String> {
    let mut reader = Reader::from_str(xml);
    let mut uploads = Vec::new();
    let mut current: Option<Upload> = None;
    // The text of the element being read (entity references arrive as events of their own).
    let mut text = String::new();
    let (mut truncated, mut next_key, mut next_id) = (false, None, None);
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                text.clear();
                if e.local_name().as_ref() == "Upload" {
                    current = Some(Upload {
                        key: String::new(),
                        id: String::new(),
                        initiated: None,
                    });
                }
            }
            Event::Text(t) => text.push_str(&t.into_inner()),
            Event::GeneralRef(r) => {
                if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
                    text.push(c);
                } else if let Some(s) = quick_xml::escape::resolve_predefined_entity(r.as_ref()) {
                    text.push_str(s);
                }
            }
            Event::End(e) => {
                let value = std::mem::take(&mut text);
                match (e.local_name().as_ref(), current.as_mut()) {
                    ("Upload", _) => uploads.extend(current.take()),
                    ("Key", Some(u)) => u.key = value,
                    ("UploadId", Some(u)) => u.id = value,
                    ("Initiated", Some(u)) => {
                        u.initiated = humantime::parse_rfc3339_weak(value.trim()).ok()
                    }
                    ("IsTruncated", None) => truncated = value.trim() == "true",
                    ("NextKeyMarker", None) => next_key = Some(value),
                    ("NextUploadIdMarker", None) => next_id = Some(value),
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let next = match (truncated, next_key, next_id) {
        (true, Some(k), Some(i)) if !k.is_empty() => Some((k, i)),
        _ => None,
    };
    Ok(Page { uploads, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_pages_are_read() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>root/b</NextKeyMarker><NextUploadIdMarker>id-2</NextUploadIdMarker>
  <IsTruncated>true</IsTruncated>
  <Upload><Key>root/a&amp;b</Key><UploadId>id-1</UploadId><Initiated>2026-11-28T10:00:00.000Z</Initiated></Upload>
  <Upload><Key>root/b</Key><UploadId>id-2</UploadId><Initiated>2026-11-28T11:00:00Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let p = parse_page(xml).unwrap();
        assert_eq!(p.uploads.len(), 2);
        assert_eq!(p.uploads[0].key, "root/a&b");
        assert_eq!(p.uploads[0].id, "id-1");
        assert!(p.uploads[1].initiated.is_some());
        assert_eq!(p.next, Some(("root/b".into(), "id-2".into())));
        let last = parse_page("<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>").unwrap();
        assert!(last.uploads.is_empty() && last.next.is_none());
    }

    #[test]
    fn keys_are_encoded_per_segment() {
        assert_eq!(encode_key("a b/c+d/e"), "a%20b/c%2Bd/e");
    }
}
