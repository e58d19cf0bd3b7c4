//! Per-client request rate limits on `/v2`: a token bucket per account (when a token names one)
//! or per client address (IPv6 by /64), so one runaway CI job cannot starve everyone else. Over
//! the limit a request is answered 429 `TOOMANYREQUESTS` with `Retry-After`, before any work.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::authn::client_key;
use crate::error::{ApiError, Code};

/// How often idle clients' buckets are dropped.
const PURGE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    pub requests_per_second: u32,
    pub burst: u32,
    /// Behind a proxy that sets it: the header holding the client address.
    pub real_ip_header: Option<String>,
}

impl LimitSettings {
    /// From the `limits` section: a burst left unset is twice the rate; an empty header name is
    /// none.
    pub fn new(requests_per_second: u32, burst: Option<u32>, real_ip_header: Option<&str>) -> Self {
        LimitSettings {
            requests_per_second,
            burst: burst.unwrap_or(requests_per_second.saturating_mul(2)),
            real_ip_header: real_ip_header.filter(|h| !h.is_empty()).map(str::to_owned),
        }
    }

    /// The `limits` section's problems, keyed within it.
    pub fn check(burst: Option<u32>, real_ip_header: Option<&str>) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if burst == Some(0) {
            problems.push(("burst".into(), "must be at least 1".into()));
        }
        if let Some(h) = real_ip_header
            && axum::http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            problems.push((
                "real_ip_header".into(),
                format!("{h:?} is not a header name"),
            ));
        }
        problems
    }
}

pub struct ClientLimits {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    real_ip_header: Option<String>,
}

impl ClientLimits {
    /// None when no limit is configured.
    pub fn new(s: &LimitSettings) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(s.requests_per_second)?;
        let burst = NonZeroU32::new(s.burst.max(1)).expect("at least 1");
        let limits = Arc::new(ClientLimits {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            real_ip_header: s.real_ip_header.clone(),
        });
        let weak = Arc::downgrade(&limits);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PURGE_EVERY).await;
                match weak.upgrade() {
                    Some(l) => {
                        l.limiter.retain_recent();
                        l.limiter.shrink_to_fit();
                    }
                    None => return,
                }
            }
        });
        Some(limits)
    }

    /// Count a request by `account` (from a verified token) or else the client's address.
    pub fn check(
        &self,
        account: Option<&str>,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<(), ApiError> {
        let key = match account.filter(|a| !a.is_empty()) {
            Some(a) => format!("account:{a}"),
            None => match client_ip(self.real_ip_header.as_deref(), headers, peer) {
                Some(ip) => format!("addr:{}", client_key(ip)),
                None => "addr:unknown".to_owned(),
            },
        };
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                metrics::counter!(crate::metrics::CLIENT_RATE_LIMITED).increment(1);
                let wait = not_until.wait_time_from(self.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(ApiError::new(
                    Code::TooManyRequests,
                    "too many requests from this client; slow down",
                )
                .with_retry_after(secs.max(1)))
            }
        }
    }
}

/// The client's address: the first entry of `real_ip_header` when configured and present (set
/// by the proxy in front), else the connection's peer.
pub(crate) fn client_ip(
    real_ip_header: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<std::net::IpAddr> {
    real_ip_header
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .or(peer.map(|p| p.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> Arc<ClientLimits> {
        ClientLimits::new(&LimitSettings {
            requests_per_second: rate,
            burst,
            real_ip_header: Some("x-real-ip".into()),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn each_client_has_its_own_bucket() {
        let l = limits(1, 3);
        let h = HeaderMap::new();
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        for _ in 0..3 {
            l.check(None, &h, Some(a)).unwrap();
        }
        let e = l.check(None, &h, Some(a)).unwrap_err();
        let r = axum::response::IntoResponse::into_response(e);
        assert_eq!(r.status().as_u16(), 429);
        assert!(r.headers().contains_key("retry-after"));
        // Another address, and an account on the same address, are not affected.
        l.check(None, &h, Some(b)).unwrap();
        l.check(Some("alice"), &h, Some(a)).unwrap();
    }

    #[tokio::test]
    async fn ipv6_clients_share_their_64_and_the_proxy_header_is_honoured() {
        let l = limits(1, 1);
        let h = HeaderMap::new();
        l.check(None, &h, Some("[2001:db8::1]:1".parse().unwrap()))
            .unwrap();
        assert!(
            l.check(None, &h, Some("[2001:db8::2]:1".parse().unwrap()))
                .is_err()
        );
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", "192.0.2.7".parse().unwrap());
        let proxy: SocketAddr = "10.9.9.9:1".parse().unwrap();
        l.check(None, &h, Some(proxy)).unwrap();
        assert!(l.check(None, &h, Some(proxy)).is_err());
        h.insert("x-real-ip", "192.0.2.8".parse().unwrap());
        l.check(None, &h, Some(proxy)).unwrap();
    }

    #[test]
    fn no_rate_no_limiter() {
        assert!(
            ClientLimits::new(&LimitSettings {
                requests_per_second: 0,
                burst: 10,
                real_ip_header: None
            })
            .is_none()
        );
    }
}
