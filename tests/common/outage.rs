//! Storage outages seen through the mirror's counters: how many operations reached the store,
//! were refused by the breaker, and how many requests were answered while storage was down;
//! and eight clients of one uncached blob held at the upstream until all of them are in.

use std::time::{Duration, Instant};

use super::{Image, Mirror, Registry, client, stream_hash};

/// What the mirror's counters say of its store.
#[derive(Debug, Clone, Copy)]
pub struct StoreCounts {
    /// Look-ups and reads (what a request asks of the store) that reached it and failed; a
    /// fill's writes and commit, which no request waits on, are not counted.
    pub store_failures: f64,
    /// Probes let through by an open circuit (either circuit).
    pub probes: f64,
    /// Operations refused by the read circuit without asking the store.
    pub refused: f64,
    /// Requests answered while storage could not be read.
    pub degraded: f64,
}

impl StoreCounts {
    pub async fn of(m: &Mirror) -> StoreCounts {
        StoreCounts {
            store_failures: m
                .metric("ocimirror_storage_errors_total", &["op=\"stat\""])
                .await
                + m.metric("ocimirror_storage_errors_total", &["op=\"read\""])
                    .await,
            probes: m
                .metric(
                    "ocimirror_storage_breaker_transitions_total",
                    &["to=\"half-open\""],
                )
                .await,
            refused: m
                .metric(
                    "ocimirror_storage_breaker_refused_total",
                    &["circuit=\"read\""],
                )
                .await,
            degraded: m.metric("ocimirror_degraded_served_total", &[]).await,
        }
    }
}

/// The breaker's circuit `circuit` (`read`, `write`): 0 closed, 1 half-open, 2 open.
pub async fn circuit_state(m: &Mirror, circuit: &str) -> f64 {
    m.metric(
        "ocimirror_storage_breaker_state",
        &[&format!("circuit=\"{circuit}\"")],
    )
    .await
}

/// Eight clients GET `img`'s biggest layer (uncached) while storage is down. The upstream is
/// held (SIGSTOP) until every one of them has been refused by the read circuit, so all of them
/// find the one fill in flight; each gets every byte, and the upstream is asked once.
pub async fn eight_clients_of_one_uncached_blob(m: &Mirror, reg: &Registry, img: &Image) {
    let big = img.biggest_layer().digest;
    reg.pause();
    let at_start = StoreCounts::of(m).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let url = format!("{}/v2/{}/blobs/{big}", m.url(), img.name);
        clients.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            stream_hash(r).await
        }));
    }
    // Two look-ups each; a client whose look-up was a probe (none, unless `open_for` passed
    // meanwhile) was refused one of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = StoreCounts::of(m).await;
        if now.refused - at_start.refused + now.probes - at_start.probes >= 16.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the clients did not all arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reg.resume();
    let want = (img.blob(&big).len() as u64, big.clone());
    for c in clients {
        assert_eq!(c.await.unwrap(), Ok(want.clone()));
    }
    assert_eq!(
        reg.count_requests("GET", &format!("/blobs/{big}")).await,
        1,
        "concurrent clients of one blob cost more than one upstream fetch"
    );
}

/// GET a blob of `img` and check its bytes; the status and body on failure.
pub async fn get_blob_checked(m: &Mirror, img: &Image, digest: &str) -> Result<(), String> {
    let r = m
        .get_blob(&img.name, digest)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!(
            "{}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    let want = (img.blob(digest).len() as u64, digest.to_string());
    match stream_hash(r).await {
        Ok(got) if got == want => Ok(()),
        other => Err(format!("{other:?}")),
    }
}
