//! Structured logs: every response carries a request id (the proxy's `x-request-id` when it is
//! sane, else one unique across replicas), and the access log line in JSON names the same id.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_returned_and_logged() {
    let m = Mirror::start(MirrorOpts::upstream(&closed_url()).env("OCIMIRROR_LOG__FORMAT", "json"))
        .await;
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let r = m.get("/v2/").send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(id.len() > 8, "{id}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 3, "ids are unique");

    let r = m
        .get("/v2/team/app/manifests/v1")
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc.123");
    // A header that could smuggle anything into logs or responses is not echoed.
    let r = m
        .get("/v2/")
        .header("x-request-id", "a\"b;<script>")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "a\"b;<script>");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logged = m.log_text().lines().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["fields"]["request_id"] == "trace-abc.123" && v["fields"]["status"] == 503
            })
        });
        if logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no JSON access line:\n{}",
            m.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
