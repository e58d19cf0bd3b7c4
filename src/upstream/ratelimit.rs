//! Living within an upstream's pull limit. Docker Hub reports the limit on every manifest
//! response (`ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 76;w=21600`); those go to
//! metrics. After a 429 the upstream is left alone for manifest requests until `Retry-After`
//! (or, without one, the reported window; else a minute) has passed: asking again only
//! lengthens the penalty, and cached tags are served stale meanwhile. Blob requests go on,
//! since Docker Hub does not count them.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Without `Retry-After` or a reported window.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// Whatever the upstream says, look again after this.
const MAX_COOLDOWN: Duration = Duration::from_secs(6 * 3600);

/// `100;w=21600` → (100, Some(21600 s)).
pub fn parse_quota(v: &str) -> Option<(u64, Option<Duration>)> {
    let mut parts = v.split(';').map(str::trim);
    let n = parts.next()?.parse().ok()?;
    let window = parts
        .filter_map(|p| p.strip_prefix("w="))
        .find_map(|w| w.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Some((n, window))
}

/// `Retry-After` as seconds or an HTTP date, as a delay from `now`.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[derive(Default)]
pub struct RateLimits {
    /// The `upstream` label of its metrics.
    upstream: String,
    cooldown_until: Mutex<Option<Instant>>,
    /// The last reported window, used when a 429 carries no `Retry-After`.
    window: Mutex<Option<Duration>>,
    /// The last reported (limit, remaining), for the status page.
    quota: Mutex<(Option<u64>, Option<u64>)>,
}

impl RateLimits {
    pub fn new(upstream: &str) -> Self {
        RateLimits {
            upstream: upstream.to_owned(),
            ..RateLimits::default()
        }
    }

    /// Read the quota headers of any upstream response.
    pub fn observe(&self, h: &HeaderMap) {
        let quota = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_quota)
        };
        if let Some((limit, w)) = quota("ratelimit-limit") {
            metrics::gauge!(crate::metrics::UPSTREAM_RATELIMIT_LIMIT, "upstream" => self.upstream.clone()).set(limit as f64);
            self.quota.lock().expect("lock").0 = Some(limit);
            if w.is_some() {
                *self.window.lock().expect("lock") = w;
            }
        }
        if let Some((remaining, _)) = quota("ratelimit-remaining") {
            metrics::gauge!(crate::metrics::UPSTREAM_RATELIMIT_REMAINING, "upstream" => self.upstream.clone()).set(remaining as f64);
            self.quota.lock().expect("lock").1 = Some(remaining);
        }
    }

    /// A 429 arrived: start (or extend) the cooldown. Returns its length.
    pub fn limited(&self, h: &HeaderMap) -> Duration {
        let told = h
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let wait = told
            .or(*self.window.lock().expect("lock"))
            .unwrap_or(DEFAULT_COOLDOWN)
            .min(MAX_COOLDOWN);
        let until = Instant::now() + wait;
        let mut c = self.cooldown_until.lock().expect("lock");
        if c.is_none_or(|t| t < until) {
            *c = Some(until);
        }
        metrics::counter!(crate::metrics::UPSTREAM_COOLDOWNS, "upstream" => self.upstream.clone())
            .increment(1);
        tracing::warn!(
            ?wait,
            "upstream rate limit reached; no manifest requests until it passes"
        );
        wait
    }

    /// The last reported limit and remaining requests, and the cooldown left: the status page.
    pub fn snapshot(&self) -> (Option<u64>, Option<u64>, Option<Duration>) {
        let (limit, remaining) = *self.quota.lock().expect("lock");
        (limit, remaining, self.cooling())
    }

    /// Time left in the cooldown, if one is running.
    pub fn cooling(&self) -> Option<Duration> {
        let mut c = self.cooldown_until.lock().expect("lock");
        match *c {
            Some(t) if t > Instant::now() => Some(t - Instant::now()),
            Some(_) => {
                *c = None;
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_headers() {
        assert_eq!(
            parse_quota("100;w=21600"),
            Some((100, Some(Duration::from_secs(21600))))
        );
        assert_eq!(
            parse_quota(" 76 ; w=60"),
            Some((76, Some(Duration::from_secs(60))))
        );
        assert_eq!(parse_quota("5"), Some((5, None)));
        assert_eq!(parse_quota("lots;w=1"), None);
        assert_eq!(parse_quota(""), None);
    }

    #[test]
    fn retry_after_as_seconds_or_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        // 2015-10-21 07:28:00 GMT is 1_445_412_480.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cooldown_follows_retry_after_then_the_window_then_a_minute() {
        let r = RateLimits::default();
        assert_eq!(r.cooling(), None);
        assert_eq!(
            r.limited(&headers(&[("retry-after", "30")])),
            Duration::from_secs(30)
        );
        assert!(r.cooling().unwrap() <= Duration::from_secs(30));

        let r = RateLimits::default();
        r.observe(&headers(&[("ratelimit-limit", "100;w=120")]));
        assert_eq!(r.limited(&HeaderMap::new()), Duration::from_secs(120));

        let r = RateLimits::default();
        assert_eq!(r.limited(&HeaderMap::new()), DEFAULT_COOLDOWN);
        // Capped, whatever the upstream says.
        assert_eq!(
            r.limited(&headers(&[("retry-after", "999999")])),
            MAX_COOLDOWN
        );

        let r = RateLimits::default();
        r.limited(&headers(&[("retry-after", "0")]));
        assert_eq!(r.cooling(), None, "over at once");
    }
}
