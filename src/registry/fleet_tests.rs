//! A fleet's replicas streaming each other's fills, in one process: replicas sharing a memory
//! storage and a lease store, their peer seam wired straight to each other's
//! `Registry::fill_in_progress`, and a scripted upstream that can hold a fetch half-way (so the
//! order of events is fixed, not timed) and counts every byte it sends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use tokio::sync::Semaphore;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::rules_tests::{
    Fake, Fault, MemLeases, get_range, latest, name, read_all, replica, repo,
};
use super::*;
use crate::storage::MemoryStorage;

/// The replicas of a test fleet, by peer address.
#[derive(Default)]
struct Net {
    replicas: Mutex<HashMap<String, Arc<Registry>>>,
    /// Replicas that died: nothing listens at their address.
    gone: Mutex<HashSet<String>>,
    /// Cancelled when a replica dies: its streams break.
    alive: Mutex<HashMap<String, CancellationToken>>,
    /// Replicas alive but out of reach (a partition): opening a stream from them times out.
    cut: Mutex<HashSet<String>>,
    opened: AtomicUsize,
    /// The offset each opened stream started at.
    opened_from: Mutex<Vec<u64>>,
}

struct NetPeers {
    me: String,
    net: Arc<Net>,
}

#[async_trait]
impl Peers for NetPeers {
    fn advertise(&self) -> &str {
        &self.me
    }

    async fn open(
        &self,
        holder: &str,
        digest: &Digest,
        from: u64,
    ) -> Result<PeerStream, PeerError> {
        if self.net.gone.lock().unwrap().contains(holder) {
            return Err(PeerError::Gone(format!("{holder}: connection refused")));
        }
        if self.net.cut.lock().unwrap().contains(holder) {
            return Err(PeerError::Failed(format!("{holder}: timed out")));
        }
        let reg = self.net.replicas.lock().unwrap().get(holder).cloned();
        let alive = self.net.alive.lock().unwrap().get(holder).cloned();
        let (Some(reg), Some(alive)) = (reg, alive) else {
            return Err(PeerError::Failed(format!("no replica at {holder}")));
        };
        let f = reg
            .fill_in_progress(digest, from)
            .await
            .ok_or(PeerError::NoFill)?;
        self.net.opened.fetch_add(1, Ordering::SeqCst);
        self.net.opened_from.lock().unwrap().push(from);
        let stream = futures_util::stream::unfold(
            (f.body, alive, false),
            |(mut body, alive, ended)| async move {
                if ended {
                    return None;
                }
                tokio::select! {
                    _ = alive.cancelled() => {
                        let e = PeerError::Failed("connection reset".into());
                        Some((Err(e), (body, alive, true)))
                    }
                    item = body.next() => match item {
                        None => None,
                        Some(Ok(b)) => Some((Ok(b), (body, alive, false))),
                        Some(Err(e)) => {
                            let e = PeerError::Failed(e.to_string());
                            Some((Err(e), (body, alive, true)))
                        }
                    },
                }
            },
        )
        .boxed();
        Ok(PeerStream {
            size: f.size,
            name: f.name,
            stream,
        })
    }
}

struct Fleet3 {
    replicas: Vec<Arc<Registry>>,
    net: Arc<Net>,
    leases: Arc<MemLeases>,
    storage: MemoryStorage,
    fake: Arc<Fake>,
    _spool: tempfile::TempDir,
    /// Held shut, the fake's fetch from byte 0 stops half-way; one permit lets it finish.
    gate: Arc<Semaphore>,
    /// Where clients report `(replica, bytes so far)`.
    seen: UnboundedSender<(usize, usize)>,
    reported: tokio::sync::Mutex<UnboundedReceiver<(usize, usize)>>,
}

impl Fleet3 {
    /// Three replicas of a blob of `size`; the fake's fetches from byte 0 stop half-way until
    /// `gate` opens.
    async fn start(size: usize) -> Fleet3 {
        Self::start_with(size, Duration::from_secs(30)).await
    }

    async fn start_with(size: usize, lease_ttl: Duration) -> Fleet3 {
        let spool = tempfile::tempdir().unwrap();
        let storage = MemoryStorage::new();
        let fake = Fake::new(size);
        let gate = Arc::new(Semaphore::new(0));
        *fake.pause.lock().unwrap() = Some((size / 2, gate.clone()));
        let leases = MemLeases::new(lease_ttl);
        let net = Arc::new(Net::default());
        let mut replicas = Vec::new();
        for i in 0..3 {
            let me = format!("peer-{i}");
            let r = replica(&storage, &fake, &leases, &spool);
            assert!(r.set_peers(Arc::new(NetPeers {
                me: me.clone(),
                net: net.clone(),
            })));
            net.replicas.lock().unwrap().insert(me.clone(), r.clone());
            net.alive
                .lock()
                .unwrap()
                .insert(me, CancellationToken::new());
            r.manifest(&name(), &latest()).await.unwrap();
            replicas.push(r);
        }
        let (seen, reported) = tokio::sync::mpsc::unbounded_channel();
        Fleet3 {
            replicas,
            net,
            leases,
            storage,
            fake,
            _spool: spool,
            gate,
            seen,
            reported: tokio::sync::Mutex::new(reported),
        }
    }

    fn kill(&self, i: usize) {
        let me = format!("peer-{i}");
        self.net.gone.lock().unwrap().insert(me.clone());
        self.net.alive.lock().unwrap()[&me].cancel();
    }

    /// A client of replica `i`: reports `(i, bytes so far)` after its first chunk and once it
    /// has `report_at` bytes, and returns the whole body.
    fn client(
        &self,
        i: usize,
        report_at: usize,
    ) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
        let seen = self.seen.clone();
        let reg = self.replicas[i].clone();
        let d = self.fake.blob_digest.clone();
        tokio::spawn(async move {
            let reply = reg
                .blob(&name(), &d, None, false)
                .await
                .map_err(std::io::Error::other)?;
            let mut body = reply.body.expect("a body");
            let mut got = Vec::new();
            let mut reported = 0;
            while let Some(chunk) = body.next().await {
                got.extend_from_slice(&chunk?);
                if reported == 0 || (reported < report_at && got.len() >= report_at) {
                    reported = got.len();
                    let _ = seen.send((i, got.len()));
                }
            }
            Ok(got)
        })
    }

    /// A client of replica 0 once it has its first bytes: replica 0 holds the lease.
    async fn holder(&self) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
        let holder = self.client(0, 0);
        self.reports(1, 1).await;
        holder
    }

    async fn stored(&self) -> Option<Bytes> {
        self.storage
            .read(&crate::layout::blob_data(&self.fake.blob_digest))
            .await
            .ok()
    }

    /// Wait for `n` reports of at least `min` bytes, one per client (up to 60 s: a bound on a
    /// hang, not a measure); the replicas they came from.
    async fn reports(&self, n: usize, min: usize) -> Vec<usize> {
        let mut rx = self.reported.lock().await;
        let mut by = Vec::new();
        while by.len() < n {
            let (i, len) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} clients reached {min} bytes", by.len()))
                .expect("clients report");
            if len >= min {
                by.push(i);
            }
        }
        by
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_streams_the_holders_fill_while_it_runs() {
    const SIZE: usize = 2 << 20;
    let f = Fleet3::start(SIZE).await;
    let clients: Vec<_> = (0..18).map(|k| f.client(k % 3, 0)).collect();
    // Every client of every replica has its first bytes while the one upstream fetch is held
    // half-way: the fill is still running.
    let firsts = f.reports(18, 1).await;
    for i in 0..3 {
        assert_eq!(firsts.iter().filter(|&&r| r == i).count(), 6, "replica {i}");
    }
    assert!(f.fake.blob_bytes.load(Ordering::SeqCst) <= SIZE / 2);
    assert_eq!(f.fake.blob_gets.load(Ordering::SeqCst), 1);
    // A lazily pulling client asks a range of what has arrived, on every replica.
    for (i, r) in f.replicas.iter().enumerate() {
        let reply = tokio::time::timeout(
            Duration::from_secs(60),
            get_range(r, &f.fake.blob_digest, 100000, 199999),
        )
        .await
        .expect("a range of what has arrived is answered during the fill");
        let got = tokio::time::timeout(Duration::from_secs(60), read_all(reply))
            .await
            .expect("the range completes during the fill")
            .unwrap();
        assert_eq!(got, f.fake.blob[100000..200000], "replica {i}");
    }
    f.gate.add_permits(1);
    for c in clients {
        assert_eq!(c.await.unwrap().unwrap(), f.fake.blob);
    }
    assert_eq!(f.fake.blob_gets.load(Ordering::SeqCst), 1);
    // One peer stream per replica that does not hold the lease, however many clients.
    assert_eq!(f.net.opened.load(Ordering::SeqCst), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while f.stored().await.is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.stored().await.as_deref(), Some(&f.fake.blob[..]));
}

/// Replica 0 takes the lease and fetches; its upstream stalls half-way and it dies. The other
/// two, each with part of the blob from it, carry on: one takes the lease over and asks the
/// upstream for the rest only, the other streams from it; every client completes.
async fn holder_dies_half_way(ignore_ranges: bool) -> Fleet3 {
    const SIZE: usize = 2 << 20;
    let f = Fleet3::start(SIZE).await;
    f.fake.ignore_ranges.store(ignore_ranges, Ordering::SeqCst);
    let holder = f.holder().await;
    // Every relay has all the holder could give it (all it fetched but its last byte), and
    // gives its clients all it has but its own last byte.
    let clients: Vec<_> = (0..8).map(|k| f.client(1 + k % 2, SIZE / 2 - 2)).collect();
    f.reports(8, SIZE / 2 - 2).await;
    assert_eq!(f.fake.blob_gets.load(Ordering::SeqCst), 1);
    f.kill(0);
    for c in clients {
        assert_eq!(c.await.unwrap().unwrap(), f.fake.blob);
    }
    holder.abort();
    assert_eq!(
        f.stored().await.as_deref(),
        Some(&f.fake.blob[..]),
        "the replica that took over committed the whole blob"
    );
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_resumes_with_a_range_when_the_holder_dies() {
    let f = holder_dies_half_way(false).await;
    let froms = f.fake.blob_gets_from.lock().unwrap().clone();
    assert_eq!(
        froms.len(),
        2,
        "the holder's fetch and one resume: {froms:?}"
    );
    assert_eq!(froms[0], 0);
    assert!(froms[1] > 0, "the resume asks for the rest only: {froms:?}");
    let sent = f.fake.blob_bytes.load(Ordering::SeqCst);
    let size = f.fake.blob.len();
    assert!(
        sent <= size + 64 * 1024,
        "the upstream sent {sent} bytes for a blob of {size}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_skips_what_it_has_when_the_upstream_ignores_ranges() {
    let f = holder_dies_half_way(true).await;
    assert_eq!(f.fake.blob_gets.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_upstream_bytes_complete_no_response_on_any_replica() {
    const SIZE: usize = 1 << 20;
    let f = Fleet3::start(SIZE).await;
    f.fake.set(Fault::Corrupt);
    let mut clients = vec![f.holder().await];
    clients.extend((0..6).map(|k| f.client(1 + k % 2, 0)));
    f.reports(6, 1).await;
    f.gate.add_permits(1);
    for (k, c) in clients.into_iter().enumerate() {
        let r = c.await.unwrap();
        assert!(
            r.is_err(),
            "client {k} got a complete response of corrupt bytes"
        );
    }
    assert_eq!(f.stored().await, None, "corrupt bytes committed");
}

/// The holder is alive but out of reach of the others (a partition): they wait, and finish
/// from storage once it has committed; the upstream sends the blob once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_cut_off_from_a_live_holder_finish_from_its_commit() {
    let f = Fleet3::start(1 << 20).await;
    let holder = f.holder().await;
    f.net.cut.lock().unwrap().insert("peer-0".into());
    let clients: Vec<_> = (0..4).map(|k| f.client(1 + k % 2, 0)).collect();
    f.gate.add_permits(1);
    assert_eq!(holder.await.unwrap().unwrap(), f.fake.blob);
    for c in clients {
        assert_eq!(c.await.unwrap().unwrap(), f.fake.blob);
    }
    assert_eq!(f.fake.blob_gets.load(Ordering::SeqCst), 1);
}

/// The holder stalls, out of reach and no longer renewing its lease (cut off from the fleet):
/// when the lease lapses, a relay takes it and resumes from the upstream with a range.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lapsed_lease_of_an_unreachable_holder_is_taken_over() {
    const SIZE: usize = 1 << 20;
    // Longer than the renewal period, so the lease lives until the holder is cut off.
    let f = Fleet3::start_with(SIZE, Duration::from_secs(5)).await;
    let _holder = f.holder().await;
    let clients: Vec<_> = (0..4).map(|k| f.client(1 + k % 2, SIZE / 2 - 2)).collect();
    f.reports(4, SIZE / 2 - 2).await;
    f.leases.frozen.store(true, Ordering::SeqCst);
    f.net.cut.lock().unwrap().insert("peer-0".into());
    f.net.alive.lock().unwrap()["peer-0"].cancel();
    for c in clients {
        assert_eq!(c.await.unwrap().unwrap(), f.fake.blob);
    }
    let froms = f.fake.blob_gets_from.lock().unwrap().clone();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[1] > 0, "resumed with a range: {froms:?}");
}

/// Issue 20 across replicas: a relay is a join of another replica's fill. The holder's GET
/// confirms the blob for the repository it fetched under only: a request under another name on
/// a relaying replica is asked of the upstream with a HEAD first (and refused where the
/// upstream denies it), one under the same name costs nothing beyond the holder's one GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_of_another_repositorys_fill_asks_the_upstream_first() {
    let f = Fleet3::start(1 << 20).await;
    let d = f.fake.blob_digest.clone();
    f.fake.deny("library/evil");
    let heads = || f.fake.blob_heads.load(Ordering::SeqCst);
    let reply = |i: usize, n: &str| {
        let (reg, d, n) = (f.replicas[i].clone(), d.clone(), repo(n));
        async move { reg.blob(&n, &d, None, false).await }
    };
    // Replica 0 holds the lease and fetches under `private`, held half-way.
    let holder = reply(0, "private").await.unwrap();
    assert_eq!(f.fake.blob_gets.load(Ordering::SeqCst), 1);
    // Replica 1 relays it, but under `evil` the upstream denies the blob: nothing is served.
    assert!(matches!(
        reply(1, "evil").await,
        Err(RegistryError::BlobUnknown)
    ));
    assert_eq!(heads(), 1);
    // Under `shared`, which the upstream allows, replica 1 serves the relay after one HEAD.
    let shared = reply(1, "shared").await.unwrap();
    assert_eq!(heads(), 2);
    // Under `private` on replica 2, the holder's GET is the confirmation: no HEAD.
    let private = reply(2, "private").await.unwrap();
    assert_eq!(heads(), 2);
    assert_eq!(
        f.net.opened.load(Ordering::SeqCst),
        2,
        "replicas 1 and 2 relay the holder's fill"
    );
    f.gate.add_permits(1);
    for r in [holder, shared, private] {
        assert_eq!(read_all(r).await.unwrap(), f.fake.blob);
    }
    assert_eq!(f.fake.blob_gets.load(Ordering::SeqCst), 1);
    for r in &f.replicas {
        r.wait_for_fills().await;
    }
    for (n, linked) in [("private", true), ("shared", true), ("evil", false)] {
        let key = crate::layout::layer_link(&repo(&format!("library/{n}")), &d);
        assert_eq!(f.storage.stat(&key).await.unwrap().is_some(), linked, "{n}");
    }
}

/// A relay is no way around the blob bounds (issue 21): a relaying replica holds the holder's
/// stream to its own `upstream.max_blob_size`, so its clients get an error, never the blob,
/// while the holder (whose upstream here ignores the bound) serves its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_holds_the_holders_stream_to_the_blob_size_bound() {
    const SIZE: usize = 1 << 20;
    let f = Fleet3::start(SIZE).await;
    let holder = f.holder().await;
    f.fake.bounds.lock().unwrap().max_size = (SIZE / 4) as u64;
    let relayed = f.client(1, 0);
    f.gate.add_permits(1);
    assert_eq!(holder.await.unwrap().unwrap(), f.fake.blob);
    assert!(
        relayed.await.unwrap().is_err(),
        "a relay served a blob above upstream.max_blob_size"
    );
    assert_eq!(f.fake.blob_gets.load(Ordering::SeqCst), 1);
    assert_eq!(f.net.opened.load(Ordering::SeqCst), 1);
}

/// A relay is held to `upstream.min_blob_rate` too (issue 21): a holder whose stream falls
/// behind it (here: its upstream stalls half-way) is dropped like a slow upstream, and the relay
/// goes on from the next source, here the same holder again from the relay's own offset (the
/// holder is alive and holds the lease, so the relay neither fetches the blob itself nor starts
/// over). Its clients wait on, and complete once the holder's bytes flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_drops_a_holder_that_falls_below_the_blob_rate_and_goes_on() {
    const SIZE: usize = 1 << 20;
    let f = Fleet3::start(SIZE).await;
    {
        // Far below the fake's pace, so only the stall trips it.
        let mut b = f.fake.bounds.lock().unwrap();
        b.min_rate = 256 << 10;
        b.grace = Duration::from_millis(200);
    }
    let holder = f.holder().await;
    let relayed: Vec<_> = (0..3).map(|_| f.client(1, SIZE / 2 - 2)).collect();
    // The relay's clients have all the holder fetched before its upstream stalled.
    f.reports(3, SIZE / 2 - 2).await;
    // The stalled holder sends nothing more: the relay drops its stream and opens another from
    // where it is, again and again, while its clients wait.
    let before = f.net.opened.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while f.net.opened.load(Ordering::SeqCst) < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay kept a stream that fell below upstream.min_blob_rate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let froms = f.net.opened_from.lock().unwrap().clone();
    assert!(
        froms[before..].iter().all(|&o| o >= (SIZE / 2 - 2) as u64),
        "a dropped relay goes on from its own offset: {froms:?}"
    );
    assert_eq!(f.fake.blob_gets.load(Ordering::SeqCst), 1);
    assert!(f.fake.blob_bytes.load(Ordering::SeqCst) <= SIZE / 2);
    f.gate.add_permits(1);
    assert_eq!(holder.await.unwrap().unwrap(), f.fake.blob);
    for c in relayed {
        assert_eq!(c.await.unwrap().unwrap(), f.fake.blob);
    }
    assert_eq!(
        f.fake.blob_gets.load(Ordering::SeqCst),
        1,
        "the relay fetched the blob itself"
    );
}
