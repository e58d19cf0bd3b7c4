//! HTTP helpers for assertions: a raw HTTP/1.1 request (for paths a URL library would
//! normalise), OCI error bodies, streamed body hashing, headers.

use std::time::Duration;

use aws_lc_rs::digest;
use futures_util::StreamExt;
use serde_json::Value;

use super::ACCEPT_MANIFESTS;

pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send one request with the path exactly as given (no URL normalisation), `Connection: close`.
pub async fn raw_request(hostport: &str, method: &str, path: &str) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: {ACCEPT_MANIFESTS}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("raw request timed out")
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_str = String::from_utf8_lossy(&rest[..eol]).to_string();
            let size =
                usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap_or(0);
            if size == 0 || rest.len() < eol + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[(eol + 2 + size + 2).min(rest.len())..];
        }
        body = out;
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// The `code`s of an OCI error body; panics (with the body) when it is not `{"errors":[...]}`.
/// The digests an image index (a referrers answer, say) lists, in order.
pub fn index_digests(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect()
}

pub fn error_codes(body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let errs = v["errors"].as_array().unwrap_or_else(|| {
        panic!(
            "error body has no errors array: {:?}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(!errs.is_empty(), "empty errors array");
    errs.iter()
        .map(|e| {
            assert!(e["message"].is_string(), "error without a message: {e}");
            e["code"].as_str().expect("error code").to_string()
        })
        .collect()
}

/// Assert a reqwest response is an OCI error with `status` and one of `codes`; returns it.
pub async fn expect_oci_error(
    resp: reqwest::Response,
    status: u16,
    codes: &[&str],
) -> reqwest::header::HeaderMap {
    let got = resp.status().as_u16();
    let headers = resp.headers().clone();
    let url = resp.url().to_string();
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        got,
        status,
        "{url}: body {:?}",
        String::from_utf8_lossy(&body)
    );
    let found = error_codes(&body);
    assert!(
        found.iter().any(|c| codes.contains(&c.as_str())),
        "{url}: expected one of {codes:?}, got {found:?}"
    );
    headers
}

/// Read a whole response body as a stream, hashing it; returns (bytes read, sha256 digest) or the
/// error that ended the body (and how many bytes came before it).
pub async fn stream_hash(resp: reqwest::Response) -> Result<(u64, String), (u64, String)> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut n = 0u64;
    let mut s = resp.bytes_stream();
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => {
                n += b.len() as u64;
                ctx.update(&b);
            }
            Err(e) => return Err((n, e.to_string())),
        }
    }
    Ok((n, format!("sha256:{}", hex::encode(ctx.finish().as_ref()))))
}

/// Send `req`, require a 200, and hash the body as it streams: (bytes, digest), or what went
/// wrong as text (including a body shorter or longer than its Content-Length).
pub async fn fetch_hash(req: reqwest::RequestBuilder) -> Result<(u64, String), String> {
    let r = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = r.status().as_u16();
    if status != 200 {
        let body = r.text().await.unwrap_or_default();
        return Err(format!("status {status}: {body}"));
    }
    let cl = r
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let got = stream_hash(r)
        .await
        .map_err(|(n, e)| format!("body broke after {n} bytes: {e}"))?;
    if let Some(cl) = cl
        && cl != got.0.to_string()
    {
        return Err(format!("Content-Length {cl} but {} bytes", got.0));
    }
    Ok(got)
}

pub fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("missing header {name}: {h:?}"))
        .to_str()
        .unwrap()
}
