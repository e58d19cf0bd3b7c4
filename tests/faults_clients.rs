//! Misbehaving clients against the real binary (in front of a real Distribution registry): a
//! slowloris trickling its headers, thousands of idle connections (also past the process's
//! file-descriptor limit), and a client that reads one byte a second. In each case the mirror
//! must keep serving everyone else, and must not hold resources for the bad client without
//! bound.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `server:` section these tests run with: a short header read timeout, so that the
/// protections show within a test's time.
const SHORT_HEADER_TIMEOUT: &str = "server:\n  header_read_timeout: 2s\n";

async fn setup(extra: &str) -> (Registry, Image, Mirror) {
    let reg = Registry::start(RegistryOpts::default()).await;
    let img = reg.pusher().push_oci_image("clients/app", "v1", 31).await;
    let m = Mirror::start(MirrorOpts::upstream(&reg.url()).extra(extra)).await;
    (reg, img, m)
}

/// A full pull over HTTP (manifest by tag, then every blob), each byte checked.
async fn pull_ok(m: &Mirror, img: &Image) -> Result<(), String> {
    let r = m
        .get_manifest(&img.name, &img.tag)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| format!("manifest: {e}"))?;
    if r.status().as_u16() != 200 {
        return Err(format!("manifest: {}", r.status()));
    }
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if body != img.manifest {
        return Err("manifest bytes differ".into());
    }
    for d in img.all_blobs() {
        let r = m
            .get_blob(&img.name, &d.digest)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .map_err(|e| format!("blob: {e}"))?;
        if r.status().as_u16() != 200 {
            return Err(format!("blob {}: {}", d.digest, r.status()));
        }
        if stream_hash(r).await != Ok((d.size, d.digest.clone())) {
            return Err(format!("blob {}: wrong bytes", d.digest));
        }
    }
    Ok(())
}

/// Whether the server has closed `s`: a read gives EOF or an error. Waits up to `within`
/// (a bound against hanging, not a measured time).
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or other answer before the close: keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Clients that send a request line and then one header byte every 200 ms, forever (slowloris),
/// and clients that connect and send nothing: each is disconnected by the server (after
/// `server.header_read_timeout`), and a normal pull during the attack succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_connections_are_cut_and_others_served() {
    let (_reg, img, m) = setup(SHORT_HEADER_TIMEOUT).await;
    let hp = m.hostport();

    let mut trickling = Vec::new();
    for i in 0..20 {
        let s = TcpStream::connect(&hp).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let hp = hp.clone();
        let writer = tokio::spawn(async move {
            let head = format!("GET /v2/ HTTP/1.1\r\nHost: {hp}\r\nX-Slow-{i}: ");
            if wr.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if wr.write_all(b"a").await.is_err() {
                    return;
                }
            }
        });
        trickling.push((
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, rd.read(&mut buf)).await {
                        Err(_) => return false,
                        Ok(Ok(0)) | Ok(Err(_)) => return true,
                        Ok(Ok(_)) => continue,
                    }
                }
            }),
            writer,
        ));
    }
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(&hp).await.unwrap());
    }
    // Everyone else is served meanwhile.
    pull_ok(&m, &img).await.expect("pull during the attack");

    for (i, (reader, writer)) in trickling.into_iter().enumerate() {
        assert!(
            reader.await.unwrap(),
            "slowloris connection {i} was never cut off by the server"
        );
        writer.abort();
    }
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, Duration::from_secs(30)).await,
            "silent connection {i} was never closed by the server"
        );
    }
    pull_ok(&m, &img).await.expect("pull after the attack");
}

/// 2000 idle connections (some that never sent anything, some kept alive after a request):
/// a normal pull still succeeds while they are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_stop_a_pull() {
    let (_reg, img, m) = setup("").await;
    let hp = m.hostport();
    let mut idle = Vec::new();
    for i in 0..2000 {
        let mut s = TcpStream::connect(&hp).await.unwrap();
        if i % 4 == 0 {
            // One keep-alive request answered, then idle.
            let req = format!("GET /v2/ HTTP/1.1\r\nHost: {hp}\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        }
        idle.push(s);
    }
    pull_ok(&m, &img)
        .await
        .expect("pull beside 2000 idle connections");
    let r = m.get("/healthz").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(idle);
}

/// The process's file-descriptor limit lowered to 256 (`prlimit`), then 400 silent connections:
/// the mirror runs out of descriptors for a while, but idle connections are cut after the header
/// read timeout, so a pull made while all 400 are still open on the client side succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_fd_limit_are_shed() {
    let (_reg, img, m) = setup(SHORT_HEADER_TIMEOUT).await;
    let pid = m.pid().unwrap();
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=256:256"])
        .status();
    if !tool_or_skip(
        st.as_ref().is_ok_and(|s| s.success()),
        "prlimit (util-linux) allowed to lower a limit",
        "apt-get install util-linux",
    ) {
        return;
    }
    let hp = m.hostport();
    let mut idle = Vec::new();
    for _ in 0..400 {
        // The kernel completes handshakes into the listen backlog whatever the process does.
        idle.push(TcpStream::connect(&hp).await.unwrap());
    }
    // Retried: requests queue behind the flood until the server sheds it.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut last = String::new();
    while Instant::now() < deadline {
        match pull_ok(&m, &img).await {
            Ok(()) => {
                last.clear();
                break;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.is_empty(),
        "no pull succeeded with 400 idle connections open: {last}"
    );
    drop(idle);
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Four clients reading a 64 MiB blob one byte a second (a tiny receive window), while others
/// pull it in full: the others get every byte, and the mirror's memory does not grow by the
/// blob's size per slow client (it is not buffering what they have not read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reading_one_byte_a_second_cost_no_memory_and_block_no_one() {
    let size: u64 = 64 << 20;
    let reg = Registry::start(RegistryOpts::default()).await;
    let (img, _big) = reg
        .pusher()
        .push_big_image("clients/big", "v1", size, 41)
        .await;
    let digest = img.layers[0].digest.clone();
    let m = Mirror::start(MirrorOpts::upstream(&reg.url())).await;
    let pid = m.pid().unwrap();
    let hp = m.hostport();
    // Warm it once: the slow clients and the fast ones read it from storage.
    let r = m.get_blob("clients/big", &digest).send().await.unwrap();
    assert_eq!(stream_hash(r).await, Ok((size, digest.clone())));
    let rss0 = rss_bytes(pid);

    let mut slow = Vec::new();
    for _ in 0..4 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(hp.parse().unwrap()).await.unwrap();
        let req = format!("GET /v2/clients/big/blobs/{digest} HTTP/1.1\r\nHost: {hp}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        slow.push(tokio::spawn(async move {
            let mut got = 0usize;
            let mut b = [0u8; 1];
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return got,
                    Ok(_) => got += 1,
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    // Give the server time to push into the slow sockets whatever it would buffer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Fast clients are not held up.
    for _ in 0..3 {
        let r = m.get_blob("clients/big", &digest).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(stream_hash(r).await, Ok((size, digest.clone())));
    }
    let rss1 = rss_bytes(pid);
    let grown = rss1.saturating_sub(rss0);
    assert!(
        grown < size,
        "mirror RSS grew by {grown} bytes with 4 slow readers of a {size}-byte blob \
         ({rss0} -> {rss1})"
    );
    for t in &slow {
        assert!(!t.is_finished(), "a slow reader was disconnected early");
    }
    for t in slow {
        t.abort();
    }
}
