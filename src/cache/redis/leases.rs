//! Fleet leases in Redis: one key per lease (`<prefix><name>`, holding the holder's random
//! token and where its peer endpoint is), and scripts that touch only that key, so a lease lives on one node of a Cluster and
//! moves with its slot.

use std::time::Duration;

use async_trait::async_trait;

use super::RedisCache;
use super::health::Op;
use crate::cache::lease::{LeaseOutcome, Leases, lease_value};

/// Compare-and-act scripts: only the holder (the token's owner) may extend or drop a lease.
/// Renewing a lease that has vanished takes it again: after a Sentinel failover the new master
/// may have missed the write that took it, and the holder is still doing the work. A lease that
/// another replica took meanwhile stays theirs.
const RENEW_SCRIPT: &str = "local v = redis.call('get', KEYS[1]) \
    if v == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) \
    elseif not v then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 \
    else return 0 end";
const RELEASE_SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/// Take the lease, or say who holds it, in one round trip: answers the lease's value (ours
/// when taken; empty when it expired in between).
const ACQUIRE_SCRIPT: &str = "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end return redis.call('get', KEYS[1]) or ''";
/// Take a lease from a gone holder only if it still has the value seen (or expired meanwhile).
const TAKE_OVER_SCRIPT: &str = "local v = redis.call('get', KEYS[1]) if v == false or v == ARGV[1] then redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) return ARGV[2] end return v";

impl RedisCache {
    /// `EVAL script` on the key of lease `name`; the script's arguments are added after.
    fn eval(&self, script: &str, name: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(1).arg(self.lease_key(name));
        cmd
    }

    /// Run a script that sets the lease to `value` if it may and answers the lease's value.
    async fn claim(&self, cmd: redis::Cmd, value: String) -> LeaseOutcome {
        match self.query::<String>(Op::AcquireLease, cmd).await {
            Ok(v) if v == value => LeaseOutcome::Acquired(value),
            Ok(held) => LeaseOutcome::HeldElsewhere(held),
            Err(_) => LeaseOutcome::Unavailable,
        }
    }
}

#[async_trait]
impl Leases for RedisCache {
    async fn try_acquire(&self, name: &str, ttl: Duration, peer: Option<&str>) -> LeaseOutcome {
        let value = lease_value(peer);
        let mut cmd = self.eval(ACQUIRE_SCRIPT, name);
        cmd.arg(&value).arg(ttl.as_millis() as u64);
        self.claim(cmd, value).await
    }

    async fn take_over(
        &self,
        name: &str,
        held: &str,
        ttl: Duration,
        peer: Option<&str>,
    ) -> LeaseOutcome {
        let value = lease_value(peer);
        let mut cmd = self.eval(TAKE_OVER_SCRIPT, name);
        cmd.arg(held).arg(&value).arg(ttl.as_millis() as u64);
        self.claim(cmd, value).await
    }

    async fn renew(&self, name: &str, token: &str, ttl: Duration) -> bool {
        let mut cmd = self.eval(RENEW_SCRIPT, name);
        cmd.arg(token).arg(ttl.as_millis() as u64);
        match self.query::<i64>(Op::RenewLease, cmd).await {
            Ok(2) => {
                metrics::counter!(crate::metrics::CACHE_LEASES_RETAKEN).increment(1);
                tracing::info!(
                    lease = name,
                    "redis cache: a vanished lease was taken again"
                );
                true
            }
            Ok(n) => n == 1,
            // A Redis that cannot answer has not given the lease away: keep working.
            Err(_) => true,
        }
    }

    async fn release(&self, name: &str, token: &str) {
        let mut cmd = self.eval(RELEASE_SCRIPT, name);
        cmd.arg(token);
        let _ = self.query::<i64>(Op::ReleaseLease, cmd).await;
    }
}
