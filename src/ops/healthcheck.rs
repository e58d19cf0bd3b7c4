//! `ocimirror healthcheck`: one GET against a running mirror's probe, for container runtimes'
//! `HEALTHCHECK` (images without curl or wget).

use std::time::Duration;

/// GET `url` once within `timeout` (a duration like `5s`): `Ok` with the line to print when it
/// answers 2xx, `Err` with why not (the whole cause chain, so a TLS or DNS failure names itself).
pub fn check(url: &str, insecure: bool, timeout: &str) -> Result<String, String> {
    let timeout = match humantime::parse_duration(timeout) {
        Ok(t) if !t.is_zero() => t,
        _ => return Err(format!("--timeout {timeout:?} is not a duration like 5s")),
    };
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => return Err(format!("--url {url:?} is not an http:// or https:// URL")),
    }
    // One request: a single-threaded runtime starts faster than the server's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    match runtime.block_on(get(url, insecure, timeout)) {
        Ok(status) if status.is_success() => Ok(format!("{url}: {status}")),
        Ok(status) => Err(format!("unhealthy: {url} answered {status}")),
        Err(e) => {
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why += &format!(": {c}");
                cause = c.source();
            }
            Err(format!("unhealthy: {why}"))
        }
    }
}

async fn get(
    url: &str,
    insecure: bool,
    timeout: Duration,
) -> Result<reqwest::StatusCode, reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .tls_danger_accept_invalid_certs(insecure)
        .user_agent(concat!("ocimirror-healthcheck/", env!("CARGO_PKG_VERSION")))
        .build()?;
    Ok(client.get(url).send().await?.status())
}
