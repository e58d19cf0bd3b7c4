//! The chain's cache of successful logins: keyed by an HMAC-SHA-256 of user and password under
//! a random per-process key (a memory dump yields no fast-to-crack hash), bounded, each entry
//! remembered for the configured time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;

use super::{Clock, lock};
use crate::auth::Identity;

pub(super) struct CachedLogin {
    identity: Identity,
    authenticator: &'static str,
    expires: Instant,
}

/// Successful checks, keyed by HMAC(user, password) under a per-process random key.
pub(super) struct LoginCache {
    mac_key: hmac::Key,
    ttl: Duration,
    max_entries: usize,
    clock: Clock,
    entries: Mutex<HashMap<[u8; 32], CachedLogin>>,
}

impl LoginCache {
    pub(super) fn new(ttl: Duration, max_entries: usize, clock: Clock) -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mac_key =
            hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the system random source works");
        LoginCache {
            mac_key,
            ttl,
            max_entries,
            clock,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_entries > 0
    }

    pub(super) fn key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.mac_key);
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password.as_bytes());
        let tag = ctx.sign();
        let mut key = [0u8; 32];
        key.copy_from_slice(tag.as_ref());
        key
    }

    pub(super) fn get(&self, key: &[u8; 32]) -> Option<(Identity, &'static str)> {
        if !self.enabled() {
            return None;
        }
        let now = self.clock.now();
        let mut entries = lock(&self.entries);
        match entries.get(key) {
            Some(c) if c.expires > now => Some((c.identity.clone(), c.authenticator)),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(super) fn insert(&self, key: [u8; 32], identity: Identity, authenticator: &'static str) {
        if !self.enabled() {
            return;
        }
        let now = self.clock.now();
        let mut entries = lock(&self.entries);
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            entries.retain(|_, c| c.expires > now);
            while entries.len() >= self.max_entries {
                // Same TTL for all: the earliest expiry is the oldest entry.
                let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            CachedLogin {
                identity,
                authenticator,
                expires: now + self.ttl,
            },
        );
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}
