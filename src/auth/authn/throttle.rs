//! Throttling of failed logins per client address.
//!
//! Each address may fail `max_failures` times within any sliding `window`; after that its
//! attempts are refused, without checking the password, until the oldest failure leaves the
//! window. IPv6 clients are counted per /64 (one host usually owns a whole /64, so per-address
//! counting would give it 2^64 allowances), and their failures also count against their /48,
//! which may fail `max_failures_per_48` times in the window: a site is usually given a /48, so
//! without it an attacker could move through 65,536 /64s. Checks in progress hold one of the address's remaining
//! allowances, so a burst of concurrent guesses cannot overshoot the limit; attempts beyond the
//! allowance wait for the ones in progress instead of being refused, so concurrent legitimate
//! logins from one address (a NAT, a CI runner) only queue.
//!
//! Successes reset nothing: otherwise an attacker holding one valid account could interleave
//! its own logins with guesses at another's password.
//!
//! The table is bounded by `max_clients`: addresses without recent failures are dropped first,
//! then the one whose last failure is oldest. Entries with checks in progress are never evicted
//! (their number is bounded by the number of concurrent requests, not by the addresses seen).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Clock, ConfigProblem, lock, parse_duration};

/// The `login_throttle` config section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures allowed per address within `window`; `0` disables throttling.
    pub max_failures: u32,
    pub window: String,
    /// Addresses tracked at most.
    pub max_clients: usize,
    /// Failures allowed per IPv6 /48 within `window`; `0`: IPv6 is counted per /64 only.
    pub max_failures_per_48: u32,
    /// Password checks that may wait for a free CPU; beyond them a login gets 503 at once.
    pub max_pending_checks: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            max_failures: 5,
            window: "1m".into(),
            max_clients: 10_000,
            max_failures_per_48: 50,
            max_pending_checks: super::static_users::DEFAULT_MAX_PENDING,
        }
    }
}

impl ThrottleConfig {
    /// Validate; `prefix` is the section's key path, for problem reports.
    pub fn settings(&self, prefix: &str) -> Result<ThrottleSettings, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let window = parse_duration(&format!("{prefix}.window"), &self.window, &mut problems);
        if window.is_some_and(|w| w.is_zero()) && self.max_failures > 0 {
            problems.push(ConfigProblem::new(
                format!("{prefix}.window"),
                "must be greater than zero (set max_failures: 0 to disable throttling)",
            ));
        }
        if self.max_clients == 0 && self.max_failures > 0 {
            problems.push(ConfigProblem::new(
                format!("{prefix}.max_clients"),
                "must be greater than zero",
            ));
        }
        match window {
            Some(window) if problems.is_empty() => Ok(ThrottleSettings {
                max_failures: self.max_failures,
                window,
                max_clients: self.max_clients,
                max_failures_per_48: self.max_failures_per_48,
            }),
            _ => Err(problems),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    pub max_failures: u32,
    pub window: Duration,
    pub max_clients: usize,
    pub max_failures_per_48: u32,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            max_failures: 5,
            window: Duration::from_secs(60),
            max_clients: 10_000,
            max_failures_per_48: 50,
        }
    }
}

struct Client {
    /// Recent failures, oldest first, at most `max_failures` of them.
    failures: VecDeque<Instant>,
    in_flight: u32,
    wake: Arc<Notify>,
}

impl Client {
    fn new() -> Self {
        Client {
            failures: VecDeque::new(),
            in_flight: 0,
            wake: Arc::new(Notify::new()),
        }
    }

    fn prune(&mut self, now: Instant, window: Duration) {
        while self.failures.front().is_some_and(|&f| f + window <= now) {
            self.failures.pop_front();
        }
    }

    fn idle(&self) -> bool {
        self.in_flight == 0 && self.failures.is_empty()
    }
}

/// The address a client is counted under: IPv4 as is (also when mapped into IPv6), IPv6 by /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// A counted group of addresses: the [`client_key`] of an address (prefix 0), or its IPv6 /48.
type Key = (IpAddr, u8);

/// The IPv6 /48 an address belongs to, if it is a native IPv6 address.
fn site_48(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => Some(IpAddr::V6(Ipv6Addr::from(
            u128::from(v6) & 0xffff_ffff_ffff_0000_0000_0000_0000_0000,
        ))),
        _ => None,
    }
}

pub struct LoginThrottle {
    settings: ThrottleSettings,
    clock: Clock,
    clients: Mutex<HashMap<Key, Client>>,
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings, clock: Clock) -> Self {
        LoginThrottle {
            settings,
            clock,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.settings.max_failures > 0
    }

    /// The groups `ip` is counted in, each with the failures it may have.
    fn keys(&self, ip: IpAddr) -> Vec<(Key, u32)> {
        let mut keys = vec![((client_key(ip), 0), self.settings.max_failures)];
        if self.settings.max_failures_per_48 > 0
            && let Some(site) = site_48(ip)
        {
            keys.push(((site, 48), self.settings.max_failures_per_48));
        }
        keys
    }

    fn retry_after(&self, c: &Client, now: Instant) -> Duration {
        c.failures
            .front()
            .map_or(Duration::ZERO, |&f| (f + self.settings.window) - now)
    }

    /// Refuse (with the time until the next attempt is allowed) if `ip` has used up its failures.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let now = self.clock.now();
        let mut clients = lock(&self.clients);
        let mut refused = None;
        for (key, limit) in self.keys(ip) {
            if let Some(c) = clients.get_mut(&key) {
                c.prune(now, self.settings.window);
                if c.failures.len() as u32 >= limit {
                    refused = refused.max(Some(self.retry_after(c, now)));
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Start a password check for `ip`: refuse if it (or its IPv6 /48) has used up its failures,
    /// wait while checks in progress hold its remaining allowance. Report the outcome on the
    /// returned [`Attempt`]; dropping it unreported releases the allowance and counts nothing.
    pub async fn begin(self: &Arc<Self>, ip: IpAddr) -> Result<Attempt, Duration> {
        let keys = self.keys(ip);
        if !self.enabled() {
            return Ok(Attempt {
                throttle: None,
                keys: Vec::new(),
            });
        }
        loop {
            let mut woken = {
                let now = self.clock.now();
                let mut clients = lock(&self.clients);
                let mut refused = None;
                let mut full = None;
                for &(key, limit) in &keys {
                    if !clients.contains_key(&key) {
                        self.make_room(&mut clients, now);
                    }
                    let c = clients.entry(key).or_insert_with(Client::new);
                    c.prune(now, self.settings.window);
                    let failures = c.failures.len() as u32;
                    if failures >= limit {
                        refused = refused.max(Some(self.retry_after(c, now)));
                    } else if failures + c.in_flight >= limit && full.is_none() {
                        full = Some(key);
                    }
                }
                if let Some(retry) = refused {
                    for (key, _) in &keys {
                        if clients.get(key).is_some_and(Client::idle) {
                            clients.remove(key);
                        }
                    }
                    return Err(retry);
                }
                let Some(full) = full else {
                    for (key, _) in &keys {
                        clients.get_mut(key).expect("inserted above").in_flight += 1;
                    }
                    return Ok(Attempt {
                        throttle: Some(self.clone()),
                        keys: keys.into_iter().map(|(k, _)| k).collect(),
                    });
                };
                // Register for the wake-up before letting go of the lock, so none is missed.
                let c = clients.get(&full).expect("inserted above");
                let mut woken = Box::pin(c.wake.clone().notified_owned());
                woken.as_mut().enable();
                woken
            };
            (&mut woken).await;
        }
    }

    fn finish(&self, keys: &[Key], failed: bool) {
        let now = self.clock.now();
        let mut clients = lock(&self.clients);
        for &key in keys {
            if !clients.contains_key(&key) {
                if !failed {
                    continue;
                }
                self.make_room(&mut clients, now);
            }
            let limit = match key.1 {
                48 => self.settings.max_failures_per_48,
                _ => self.settings.max_failures,
            };
            let c = clients.entry(key).or_insert_with(Client::new);
            c.in_flight = c.in_flight.saturating_sub(1);
            if failed {
                c.failures.push_back(now);
                while c.failures.len() > limit as usize {
                    c.failures.pop_front();
                }
            }
            c.wake.notify_waiters();
            c.prune(now, self.settings.window);
            if c.idle() {
                clients.remove(&key);
            }
        }
    }

    /// Make room for one more entry if the table is full.
    fn make_room(&self, clients: &mut HashMap<Key, Client>, now: Instant) {
        if clients.len() < self.settings.max_clients {
            return;
        }
        clients.retain(|_, c| {
            c.prune(now, self.settings.window);
            !c.idle()
        });
        if clients.len() < self.settings.max_clients {
            return;
        }
        let victim = clients
            .iter()
            .filter(|(_, c)| c.in_flight == 0)
            .min_by_key(|(_, c)| c.failures.back().copied())
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            clients.remove(&k);
            metrics::counter!(crate::metrics::AUTHN_THROTTLE_EVICTIONS).increment(1);
        }
    }

    /// Addresses currently tracked (for tests and metrics).
    pub fn tracked_clients(&self) -> usize {
        lock(&self.clients).len()
    }
}

/// A password check in progress; see [`LoginThrottle::begin`].
#[must_use = "report the outcome with failed() or succeeded()"]
pub struct Attempt {
    throttle: Option<Arc<LoginThrottle>>,
    keys: Vec<Key>,
}

impl Attempt {
    pub fn failed(mut self) {
        if let Some(t) = self.throttle.take() {
            t.finish(&self.keys, true);
        }
    }

    pub fn succeeded(mut self) {
        if let Some(t) = self.throttle.take() {
            t.finish(&self.keys, false);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(t) = self.throttle.take() {
            t.finish(&self.keys, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn throttle(max_failures: u32, max_clients: usize) -> (Arc<LoginThrottle>, Clock) {
        let clock = Clock::manual();
        let settings = ThrottleSettings {
            max_failures,
            window: Duration::from_secs(60),
            max_clients,
            max_failures_per_48: 4,
        };
        (Arc::new(LoginThrottle::new(settings, clock.clone())), clock)
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    async fn fail(t: &Arc<LoginThrottle>, ip: IpAddr) -> Result<(), Duration> {
        t.begin(ip).await.map(Attempt::failed)
    }

    #[tokio::test]
    async fn sliding_window() {
        let (t, clock) = throttle(3, 100);
        let ip = v4(1);
        for _ in 0..3 {
            fail(&t, ip).await.unwrap();
            clock.advance(Duration::from_secs(10));
        }
        // Failures at 0, 10, 20; now 30: refused until 60.
        assert_eq!(t.check(ip), Err(Duration::from_secs(30)));
        assert_eq!(fail(&t, ip).await, Err(Duration::from_secs(30)));
        clock.advance(Duration::from_secs(30));
        assert_eq!(t.check(ip), Ok(()));
        fail(&t, ip).await.unwrap();
        // Failures at 10, 20, 60: refused until 70.
        assert_eq!(t.check(ip), Err(Duration::from_secs(10)));
        clock.advance(Duration::from_secs(60));
        assert_eq!(t.check(ip), Ok(()));
        t.begin(ip).await.unwrap().succeeded();
        assert_eq!(t.tracked_clients(), 0, "idle entries are dropped");
    }

    #[tokio::test]
    async fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let (t, _) = throttle(2, 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        fail(&t, a).await.unwrap();
        fail(&t, b).await.unwrap();
        assert!(t.check(a).is_err());
        assert!(t.check(other).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        fail(&t, mapped).await.unwrap();
        fail(&t, v4(7)).await.unwrap();
        assert!(t.check(v4(7)).is_err());
    }

    #[tokio::test]
    async fn ipv6_also_counts_per_48() {
        let (t, clock) = throttle(2, 100);
        // One failure from each of four /64s of one /48 (the test's limit per /48 is 4).
        for n in 0..4 {
            let ip: IpAddr = format!("2001:db8:7:{n}::1").parse().unwrap();
            fail(&t, ip).await.unwrap();
        }
        let fresh: IpAddr = "2001:db8:7:ff::1".parse().unwrap();
        assert_eq!(t.check(fresh), Err(Duration::from_secs(60)));
        assert!(
            fail(&t, fresh).await.is_err(),
            "a new /64 of that /48 is refused"
        );
        // Another /48 and IPv4 are not.
        let other: IpAddr = "2001:db8:8::1".parse().unwrap();
        assert!(t.check(other).is_ok());
        assert!(t.check(v4(1)).is_ok());
        clock.advance(Duration::from_secs(60));
        assert!(t.check(fresh).is_ok());
        t.begin(fresh).await.unwrap().succeeded();
        // In-flight checks hold the /48's allowance too: four /64s each start one, a fifth
        // waits until one of them ends.
        let held: Vec<_> = futures_util::future::join_all((10..14).map(|n| {
            let t = t.clone();
            async move {
                let ip: IpAddr = format!("2001:db8:9:{n}::1").parse().unwrap();
                t.begin(ip).await.unwrap()
            }
        }))
        .await;
        let t2 = t.clone();
        let waiter = tokio::spawn(async move {
            let ip: IpAddr = "2001:db8:9:99::1".parse().unwrap();
            t2.begin(ip).await.map(Attempt::succeeded)
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut held = held.into_iter();
        held.next().unwrap().succeeded();
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn dropped_attempts_count_nothing() {
        let (t, _) = throttle(1, 100);
        for _ in 0..5 {
            drop(t.begin(v4(1)).await.unwrap());
        }
        assert!(t.check(v4(1)).is_ok());
        assert_eq!(t.tracked_clients(), 0);
    }

    #[tokio::test]
    async fn disabled_with_zero_failures() {
        let (t, _) = throttle(0, 100);
        for _ in 0..50 {
            fail(&t, v4(1)).await.unwrap();
        }
        assert!(t.check(v4(1)).is_ok());
        assert_eq!(t.tracked_clients(), 0);
    }

    #[tokio::test]
    async fn the_table_is_bounded() {
        let (t, clock) = throttle(3, 50);
        for n in 0..10_000 {
            fail(&t, v4(n)).await.unwrap();
            assert!(t.tracked_clients() <= 50);
            if n % 100 == 0 {
                clock.advance(Duration::from_millis(1));
            }
        }
        assert_eq!(t.tracked_clients(), 50);
        // The most recent offenders are the ones kept.
        fail(&t, v4(9_999)).await.unwrap();
        fail(&t, v4(9_999)).await.unwrap();
        assert!(t.check(v4(9_999)).is_err());
        // Expired entries make room before anything recent is evicted.
        clock.advance(Duration::from_secs(61));
        fail(&t, v4(20_000)).await.unwrap();
        assert_eq!(t.tracked_clients(), 1);
    }

    #[tokio::test]
    async fn entries_in_flight_are_not_evicted() {
        let (t, _) = throttle(2, 2);
        let a = t.begin(v4(1)).await.unwrap();
        let b = t.begin(v4(2)).await.unwrap();
        fail(&t, v4(3)).await.unwrap();
        // Full of in-flight entries: the table grows past the bound rather than lose them.
        assert_eq!(t.tracked_clients(), 3);
        a.failed();
        b.failed();
        assert!(t.check(v4(1)).is_ok());
        fail(&t, v4(1)).await.unwrap();
        assert!(t.check(v4(1)).is_err(), "both failures of v4(1) were kept");
    }

    #[tokio::test]
    async fn waiters_proceed_when_a_check_succeeds() {
        let (t, _) = throttle(1, 100);
        let first = t.begin(v4(1)).await.unwrap();
        let t2 = t.clone();
        let waiter = tokio::spawn(async move { t2.begin(v4(1)).await.map(Attempt::succeeded) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        first.succeeded();
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[test]
    fn config_validation() {
        let ok = ThrottleConfig::default().settings("t").unwrap();
        assert_eq!(ok, ThrottleSettings::default());
        let bad = ThrottleConfig {
            max_failures: 3,
            window: "0s".into(),
            max_clients: 0,
            max_failures_per_48: 0,
            max_pending_checks: 0,
        };
        let p = bad.settings("t").unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
        let off = ThrottleConfig {
            max_failures: 0,
            window: "0s".into(),
            max_clients: 0,
            max_failures_per_48: 0,
            max_pending_checks: 0,
        };
        assert_eq!(off.settings("t").unwrap().max_failures, 0);
    }
}
