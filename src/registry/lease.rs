//! The fleet's fill lease: which replica fetches an uncached blob. A replica that misses a blob
//! takes the digest's lease (or learns that another replica holds it) here, renews it while its
//! fill runs and releases it after the commit. One decision per digest per replica at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fill::Fill;
use super::{Registry, RegistryError, unshare};
use crate::cache::lease::{LeaseOutcome, Leases, fill_lease};
use crate::layout;
use crate::oci::{Digest, RepoName};
use crate::storage::ObjectMeta;

/// How long a fleet lease lives without renewal: the time other replicas wait before taking
/// over from a holder that died.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// Polling of the shared storage while another replica fills.
const REMOTE_POLL_MIN: Duration = Duration::from_millis(100);
const REMOTE_POLL_MAX: Duration = Duration::from_secs(1);
/// After this long waiting for another replica, fetch here as well.
const MAX_REMOTE_WAIT: Duration = Duration::from_secs(600);

/// Where a missed blob comes from.
#[derive(Clone)]
pub(super) enum Source {
    Fill(Arc<Fill>),
    Stored(ObjectMeta),
}

/// What this replica holds while it fills a digest.
pub(super) enum FillLease {
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
                tokio::time::sleep(LEASE_TTL / 3).await;
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

impl Registry {
    /// The fill to stream `digest` from, or the stored blob when another replica of the fleet
    /// committed it meanwhile.
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
        loop {
            if let Some(f) = self.fills.get(digest) {
                return Ok(Source::Fill(f));
            }
            if waited && let Some(meta) = self.storage.stat(&layout::blob_data(digest)).await? {
                metrics::counter!(crate::metrics::FILL_REMOTE_WAITS, "result" => "stored")
                    .increment(1);
                return Ok(Source::Stored(meta));
            }
            let lease = match self.leases.try_acquire(&name, LEASE_TTL).await {
                LeaseOutcome::Acquired(token) => FillLease::Fleet {
                    leases: self.leases.clone(),
                    name: name.clone(),
                    token,
                },
                LeaseOutcome::Local | LeaseOutcome::Unavailable => FillLease::Local,
                LeaseOutcome::HeldElsewhere if started.elapsed() < MAX_REMOTE_WAIT => {
                    // Another replica is fetching it: wait for its commit rather than fetch
                    // the same bytes again.
                    waited = true;
                    tokio::time::sleep(poll).await;
                    poll = (poll * 3 / 2).min(REMOTE_POLL_MAX);
                    continue;
                }
                LeaseOutcome::HeldElsewhere => {
                    tracing::warn!(digest = %digest, "another replica's fill is taking too long; fetching here too");
                    FillLease::Local
                }
            };
            // The previous holder releases only after its commit: a fleet lease that was free
            // may mean the blob has just landed, so look once more before fetching it again.
            // (A replica on its own was just told by storage that the blob is absent.)
            if (lease.is_fleet() || waited)
                && let Some(meta) = self.storage.stat(&layout::blob_data(digest)).await?
            {
                lease.release().await;
                return Ok(Source::Stored(meta));
            }
            if waited {
                metrics::counter!(crate::metrics::FILL_REMOTE_WAITS, "result" => "took_over")
                    .increment(1);
            }
            let fill = self
                .fills
                .join_or_start(repo, digest, lease)
                .map_err(|e| RegistryError::Internal(format!("cannot create spool file: {e}")))?;
            return Ok(Source::Fill(fill));
        }
    }
}
