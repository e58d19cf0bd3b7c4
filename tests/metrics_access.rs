//! `/metrics` kept off a mirror's public face (issue 20): behind a bearer token read from
//! `server.metrics_token_file`, and on a listener of its own with `server.metrics_listen`.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_and_move_to_their_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me-123\n").unwrap();
    let port = free_port();
    let m = Mirror::start(MirrorOpts::upstream(&closed_url()).extra(&format!(
        "server:\n  metrics_listen: {}\n  metrics_token_file: {}\n",
        q(&format!("127.0.0.1:{port}")),
        q(&token_file.display().to_string())
    )))
    .await;
    // Not on the main listener at all.
    let r = m.get("/metrics").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    // A prefix of the token is no token.
    for (token, status) in [("scrape-me-12", 401), ("scrape-me-123", 200)] {
        let r = client().get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{token}");
        if status == 200 {
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(ct.starts_with("text/plain"), "{ct}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_alone_guards_the_main_listener() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "t0ken").unwrap();
    let m = Mirror::start(MirrorOpts::upstream(&closed_url()).extra(&format!(
        "server:\n  metrics_token_file: {}\n",
        q(&token_file.display().to_string())
    )))
    .await;
    assert_eq!(
        m.get("/metrics").send().await.unwrap().status().as_u16(),
        401
    );
    let r = m.get("/metrics").bearer_auth("t0ken").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
