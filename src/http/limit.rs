//! Per-client request rate limits on `/v2`: a token bucket per account (when a token names one)
//! or per client address (IPv6 by /64), so one runaway CI job cannot starve everyone else. Over
//! the limit a request is answered 429 `TOOMANYREQUESTS` with `Retry-After`, before any work.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::authn::client_key;
use crate::auth::realip::RealIp;
use crate::error::{ApiError, Code};

/// How often idle clients' buckets are dropped.
const PURGE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    pub requests_per_second: u32,
    pub burst: u32,
}

impl LimitSettings {
    /// From the `limits` section: a burst left unset is twice the rate.
    pub fn new(requests_per_second: u32, burst: Option<u32>) -> Self {
        LimitSettings {
            requests_per_second,
            burst: burst.unwrap_or(requests_per_second.saturating_mul(2)),
        }
    }

    /// The `limits` section's problems, keyed within it: the rate, and how the client address
    /// is found behind proxies (`real_ip_header`, `trusted_proxies`; every per-client bound
    /// uses it, not only the rate).
    pub fn check(
        burst: Option<u32>,
        real_ip_header: Option<&str>,
        trusted_proxies: &[String],
    ) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if burst == Some(0) {
            problems.push(("burst".into(), "must be at least 1".into()));
        }
        if let Err(ps) = RealIp::new(real_ip_header, trusted_proxies) {
            problems.extend(ps);
        }
        problems
    }
}

pub struct ClientLimits {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl ClientLimits {
    /// None when no limit is configured.
    pub fn new(s: &LimitSettings) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(s.requests_per_second)?;
        let burst = NonZeroU32::new(s.burst.max(1)).expect("at least 1");
        let limits = Arc::new(ClientLimits {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
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

    /// Count a request by `account` (from a verified token) or else the client's address (as
    /// [`RealIp`] found it).
    pub fn check(&self, account: Option<&str>, client: Option<IpAddr>) -> Result<(), ApiError> {
        let key = match account.filter(|a| !a.is_empty()) {
            Some(a) => format!("account:{a}"),
            None => match client {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> Arc<ClientLimits> {
        ClientLimits::new(&LimitSettings {
            requests_per_second: rate,
            burst,
        })
        .unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test]
    async fn each_client_has_its_own_bucket() {
        let l = limits(1, 3);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        for _ in 0..3 {
            l.check(None, a).unwrap();
        }
        let e = l.check(None, a).unwrap_err();
        let r = axum::response::IntoResponse::into_response(e);
        assert_eq!(r.status().as_u16(), 429);
        assert!(r.headers().contains_key("retry-after"));
        // Another address, and an account on the same address, are not affected.
        l.check(None, b).unwrap();
        l.check(Some("alice"), a).unwrap();
    }

    #[tokio::test]
    async fn ipv6_clients_share_their_64() {
        let l = limits(1, 1);
        l.check(None, ip("2001:db8::1")).unwrap();
        assert!(l.check(None, ip("2001:db8::2")).is_err());
        l.check(None, ip("2001:db8:0:1::1")).unwrap();
    }

    #[test]
    fn no_rate_no_limiter() {
        assert!(
            ClientLimits::new(&LimitSettings {
                requests_per_second: 0,
                burst: 10,
            })
            .is_none()
        );
    }

    #[test]
    fn the_address_settings_are_checked_with_the_section() {
        let keys = |h: Option<&str>, t: &[&str]| -> Vec<String> {
            let t: Vec<String> = t.iter().map(|s| s.to_string()).collect();
            LimitSettings::check(Some(0), h, &t)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(Some("x-real-ip"), &[]), ["burst", "real_ip_header"]);
        assert_eq!(keys(Some("x-real-ip"), &["10.0.0.0/8"]), ["burst"]);
        assert_eq!(
            keys(None, &["nope"]),
            ["burst", "trusted_proxies[0]", "trusted_proxies"]
        );
    }
}
