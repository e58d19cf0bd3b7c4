//! The fleet's fill lease: which replica fetches an uncached blob from the upstream, and where
//! the others get its bytes. A replica that misses a blob takes the digest's lease (or learns
//! which replica holds it) here, renews it while its fill runs and releases it after the commit.
//!
//! A replica that finds the lease held streams the holder's fill through the peer seam (when the
//! fleet has a `cluster` section and the lease names the holder's address), else waits for the
//! commit as replicas without peers always did. When a peer stream breaks, [`Fleet::after_break`]
//! says where the rest comes from: storage (the holder committed), the lease's new holder, or the
//! upstream under a lease taken over from a holder that is gone or whose lease lapsed.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::fill::Fill;
use super::peer::{PeerError, Peers};
use super::{Registry, RegistryError, miss_if_down, unshare};
use crate::cache::lease::{LeaseOutcome, Leases, fill_lease, holder_peer};
use crate::layout;
use crate::oci::{Digest, RepoName};
use crate::storage::{ObjectMeta, Storage};

/// How long a fleet lease lives without renewal: the longest a holder that died unseen (or sits
/// behind a partition) keeps the others from taking over.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// Renewals per lifetime: a missed renewal or two (a slow Redis) does not lose the lease.
const RENEWALS_PER_TTL: u32 = 4;
/// Polling of the shared storage (and of the lease) while another replica fills.
pub const REMOTE_POLL_MIN: Duration = Duration::from_millis(100);
pub const REMOTE_POLL_MAX: Duration = Duration::from_secs(1);
/// The first retry of the lease's holder when it had no fill to stream: it is between taking
/// the lease and starting its fill (a storage look-up apart), a window of milliseconds; waiting
/// the storage poll's 100 ms there put a relay's first byte 0.1 s behind the holder's.
pub const PEER_RETRY_MIN: Duration = Duration::from_millis(10);
/// After this long waiting for another replica, fetch here as well.
const MAX_REMOTE_WAIT: Duration = Duration::from_secs(600);

/// Where a missed blob comes from.
#[derive(Clone)]
pub(super) enum Source {
    Fill(Arc<Fill>),
    Stored(ObjectMeta),
}

/// How a new fill starts.
pub enum Start {
    /// Fetch from the upstream, holding this lease.
    Upstream(FillLease),
    /// Stream from the replica holding the lease with this value.
    Peer(String),
}

/// Where the rest of a fill comes from after its peer stream broke.
pub enum Next {
    Upstream(FillLease),
    /// The lease with this value (its holder, or a new one).
    Peer(String),
    /// The holder committed the blob.
    Stored,
    /// A holder that cannot be streamed from (no peer address) holds the lease: look again.
    Wait,
}

/// What this replica holds while it fills a digest.
pub enum FillLease {
    /// No fleet to coordinate with (a replica on its own, or a lease store that cannot answer):
    /// nothing to renew or release.
    Local,
    /// The fleet's lease on the digest, proven by `token`.
    Fleet {
        leases: Arc<dyn Leases>,
        name: String,
        token: String,
    },
}

impl FillLease {
    fn is_fleet(&self) -> bool {
        matches!(self, FillLease::Fleet { .. })
    }

    /// Run `work` while renewing the lease, so that the other replicas keep waiting for it.
    pub async fn hold<T>(&self, digest: &Digest, work: impl Future<Output = T>) -> T {
        let FillLease::Fleet {
            leases,
            name,
            token,
        } = self
        else {
            return work.await;
        };
        let renew = async {
            loop {
                tokio::time::sleep(LEASE_TTL / RENEWALS_PER_TTL).await;
                if !leases.renew(name, token, LEASE_TTL).await {
                    // Another replica may now fill too; storage commits are atomic, so both
                    // finishing is wasteful but correct.
                    tracing::warn!(digest = %digest, "fill lease lost");
                }
            }
        };
        tokio::select! {
            o = work => o,
            _ = renew => unreachable!("the renew loop never ends"),
        }
    }

    /// Give the lease up. Called only after the commit, so a waiting replica finds the blob in
    /// storage rather than a free lease and a second fetch.
    pub async fn release(&self) {
        if let FillLease::Fleet {
            leases,
            name,
            token,
        } = self
        {
            leases.release(name, token).await;
        }
    }
}

/// The fleet as a fill sees it: the lease store, the peers (with a `cluster` section, set once
/// the peer listener is up) and the shared storage.
pub struct Fleet {
    leases: Arc<dyn Leases>,
    peers: OnceLock<Arc<dyn Peers>>,
    storage: Arc<dyn Storage>,
}

impl Fleet {
    pub fn new(leases: Arc<dyn Leases>, storage: Arc<dyn Storage>) -> Self {
        Fleet {
            leases,
            peers: OnceLock::new(),
            storage,
        }
    }

    pub fn with_leases(&self, leases: Arc<dyn Leases>) -> Self {
        let f = Fleet::new(leases, self.storage.clone());
        if let Some(p) = self.peers() {
            f.set_peers(p.clone());
        }
        f
    }

    /// False when peers were set already.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) -> bool {
        self.peers.set(peers).is_ok()
    }

    pub fn peers(&self) -> Option<&Arc<dyn Peers>> {
        self.peers.get()
    }

    fn advertise(&self) -> Option<&str> {
        self.peers().map(|p| p.advertise())
    }

    /// Whether the holder of the lease with value `held` can be streamed from: it said where,
    /// and it is not this replica (replicas sharing one `cluster.advertise` would stream from
    /// themselves).
    fn streamable(&self, held: &str) -> bool {
        match (self.advertise(), holder_peer(held)) {
            (Some(me), Some(holder)) if holder == me => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::error!(holder, "another replica's fill lease names this replica's own peer address: cluster.advertise must differ per replica; waiting for commits instead");
                });
                false
            }
            (Some(_), Some(_)) => true,
            _ => false,
        }
    }

    fn lease(&self, name: String, token: String) -> FillLease {
        FillLease::Fleet {
            leases: self.leases.clone(),
            name,
            token,
        }
    }

    async fn stored(&self, digest: &Digest) -> bool {
        matches!(
            self.storage.stat(&layout::blob_data(digest)).await,
            Ok(Some(_))
        )
    }

    /// The stream from the holder of the lease `held` broke (`why`), with part of the blob
    /// here: where the rest comes from. A holder that is gone (nothing listens at its address)
    /// loses its lease at once; one that is only unreachable keeps it until it lapses.
    pub async fn after_break(&self, digest: &Digest, held: &str, why: &PeerError) -> Next {
        if self.stored(digest).await {
            return Next::Stored;
        }
        let name = fill_lease(digest);
        let (outcome, reason) = match why {
            PeerError::Gone(_) => (
                self.leases
                    .take_over(&name, held, LEASE_TTL, self.advertise())
                    .await,
                "holder_gone",
            ),
            _ => (
                self.leases
                    .try_acquire(&name, LEASE_TTL, self.advertise())
                    .await,
                "lease_free",
            ),
        };
        match outcome {
            LeaseOutcome::Acquired(token) => {
                let lease = self.lease(name, token);
                // The holder releases after its commit: a free lease may mean the blob has
                // just landed.
                if self.stored(digest).await {
                    lease.release().await;
                    return Next::Stored;
                }
                tracing::info!(digest = %digest, reason, "taking the fill over from its holder");
                metrics::counter!(crate::metrics::FILL_TAKEOVERS, "reason" => reason).increment(1);
                Next::Upstream(lease)
            }
            // Nobody to coordinate with any more (Redis down): fetch the rest alone.
            LeaseOutcome::Local | LeaseOutcome::Unavailable => Next::Upstream(FillLease::Local),
            LeaseOutcome::HeldElsewhere(v) if self.streamable(&v) => Next::Peer(v),
            LeaseOutcome::HeldElsewhere(_) => Next::Wait,
        }
    }
}

impl Registry {
    /// The fill to stream `digest` from, or the stored blob when another replica of the fleet
    /// committed it meanwhile. One decision per digest per replica at a time.
    pub(super) async fn obtain(
        self: &Arc<Self>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Source, RegistryError> {
        if let Some(f) = self.fills.get(digest) {
            metrics::counter!(crate::metrics::FILL_JOINS).increment(1);
            return Ok(Source::Fill(f));
        }
        let this = self.clone();
        let (repo2, digest2) = (repo.clone(), digest.clone());
        let (r, _) = self
            .decisions
            .run(digest.clone(), async move {
                this.decide(&repo2, &digest2).await.map_err(Arc::new)
            })
            .await;
        r.map_err(unshare)
    }

    async fn decide(&self, repo: &RepoName, digest: &Digest) -> Result<Source, RegistryError> {
        let started = Instant::now();
        let mut poll = REMOTE_POLL_MIN;
        let mut waited = false;
        let name = fill_lease(digest);
        let fleet = &self.fleet;
        loop {
            if let Some(f) = self.fills.get(digest) {
                return Ok(Source::Fill(f));
            }
            if waited && let Some(meta) = self.committed(digest).await? {
                metrics::counter!(crate::metrics::FILL_REMOTE_WAITS, "result" => "stored")
                    .increment(1);
                return Ok(Source::Stored(meta));
            }
            let lease = match fleet
                .leases
                .try_acquire(&name, LEASE_TTL, fleet.advertise())
                .await
            {
                LeaseOutcome::Acquired(token) => fleet.lease(name.clone(), token),
                LeaseOutcome::Local | LeaseOutcome::Unavailable => FillLease::Local,
                // Another replica is fetching it: stream its fill as it arrives.
                LeaseOutcome::HeldElsewhere(held) if fleet.streamable(&held) => {
                    return self.start(repo, digest, Start::Peer(held));
                }
                // Storage is down: no commit could be seen (nor, likely, made); fetch here.
                LeaseOutcome::HeldElsewhere(_) if self.storage.reads_refused() => FillLease::Local,
                LeaseOutcome::HeldElsewhere(_) if started.elapsed() < MAX_REMOTE_WAIT => {
                    // Another replica is fetching it and cannot stream it: wait for its commit
                    // rather than fetch the same bytes again.
                    waited = true;
                    tokio::time::sleep(poll).await;
                    poll = (poll * 3 / 2).min(REMOTE_POLL_MAX);
                    continue;
                }
                LeaseOutcome::HeldElsewhere(_) => {
                    tracing::warn!(digest = %digest, "another replica's fill is taking too long; fetching here too");
                    FillLease::Local
                }
            };
            // The previous holder releases only after its commit: a fleet lease that was free
            // may mean the blob has just landed, so look once more before fetching it again.
            // (A replica on its own was just told by storage that the blob is absent.)
            if (lease.is_fleet() || waited)
                && let Some(meta) = self.committed(digest).await?
            {
                lease.release().await;
                return Ok(Source::Stored(meta));
            }
            if waited {
                metrics::counter!(crate::metrics::FILL_REMOTE_WAITS, "result" => "took_over")
                    .increment(1);
            }
            return self.start(repo, digest, Start::Upstream(lease));
        }
    }

    /// The blob as another replica committed it; storage that cannot be read holds nothing.
    async fn committed(&self, digest: &Digest) -> Result<Option<ObjectMeta>, RegistryError> {
        let r = self.storage.stat(&layout::blob_data(digest)).await;
        miss_if_down(r.map_err(RegistryError::from), &mut false)
    }

    fn start(
        &self,
        repo: &RepoName,
        digest: &Digest,
        start: Start,
    ) -> Result<Source, RegistryError> {
        let fill = self
            .fills
            .join_or_start(
                repo,
                digest,
                self.declared.get(repo, digest),
                start,
                self.fleet.clone(),
            )
            .map_err(|e| RegistryError::Internal(format!("cannot create spool file: {e}")))?;
        Ok(Source::Fill(fill))
    }
}
