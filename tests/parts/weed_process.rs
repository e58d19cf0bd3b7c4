//! SeaweedFS (`weed server`: master, volume, filer and S3) as a real S3 service on free loopback
//! ports, in a temporary directory; killed on drop, and killed, restarted, paused and resumed on
//! demand (storage outages). The one way the tests start SeaweedFS: the integration harness
//! (`tests/common/weed.rs`) and the library's S3 tests both include this file (`#[path]`), each
//! probing readiness with its own S3 client.

use std::fs;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `weed` on PATH (the callers decide whether a missing one skips or fails).
pub fn find_weed() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("weed"))
        .find(|p| p.is_file())
}

pub struct WeedProcess {
    weed: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
    /// master, master gRPC, volume, volume gRPC, filer, filer gRPC, S3, S3 gRPC.
    ports: Vec<u16>,
    /// How many times it was started (each run logs to its own file).
    runs: usize,
    /// `http://127.0.0.1:<port>` of its S3 API.
    pub endpoint: String,
    started: Instant,
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

fn log_name(run: usize) -> String {
    match run {
        0 | 1 => "weed.log".to_string(),
        n => format!("weed-{}.log", n - 1),
    }
}

/// Start `weed` in `dir` (its `data` and `s3.json`) on `ports`, logging to run `run`'s file.
fn launch(weed: &Path, dir: &Path, ports: &[u16], run: usize) -> Child {
    let log = fs::File::create(dir.join(log_name(run))).expect("weed log");
    let [
        master,
        master_grpc,
        volume,
        volume_grpc,
        filer,
        filer_grpc,
        s3,
        s3_grpc,
    ] = ports[..]
    else {
        unreachable!("eight ports")
    };
    Command::new(weed)
        .arg("server")
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-dir={}", dir.join("data").display()))
        .arg(format!("-master.port={master}"))
        .arg(format!("-master.port.grpc={master_grpc}"))
        // No reports to the project's telemetry service: loopback only.
        .arg("-master.telemetry=false")
        .arg("-master.volumeSizeLimitMB=64")
        .arg(format!("-volume.port={volume}"))
        .arg(format!("-volume.port.grpc={volume_grpc}"))
        .arg("-filer")
        .arg(format!("-filer.port={filer}"))
        .arg(format!("-filer.port.grpc={filer_grpc}"))
        .arg("-s3")
        .arg(format!("-s3.port={s3}"))
        .arg(format!("-s3.port.grpc={s3_grpc}"))
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
        .arg(format!("-s3.config={}", dir.join("s3.json").display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("weed log"))
        .stderr(log)
        .spawn()
        .expect("start weed")
}

/// The Unix sockets `weed` keeps beside its ports, in /tmp whatever -dir says.
fn remove_sockets(ports: &[u16]) {
    for port in ports {
        for kind in [
            "master-grpc",
            "volume-grpc",
            "filer",
            "filer-grpc",
            "s3",
            "s3-grpc",
        ] {
            let _ = fs::remove_file(format!("/tmp/seaweedfs-{kind}-{port}.sock"));
        }
    }
}

impl WeedProcess {
    /// Start `weed` with one S3 identity (`access_key`/`secret_key`, all actions); not ready
    /// until [`WeedProcess::ready`].
    pub fn spawn(weed: &Path, access_key: &str, secret_key: &str) -> WeedProcess {
        let dir = tempfile::Builder::new()
            .prefix("ocim-weed")
            .tempdir()
            .expect("temp dir");
        fs::create_dir(dir.path().join("data")).expect("data dir");
        fs::write(
            dir.path().join("s3.json"),
            serde_json::json!({"identities": [{
                "name": "ocimirror",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        )
        .expect("write s3.json");
        let ports = free_ports(8);
        let child = launch(weed, dir.path(), &ports, 1);
        WeedProcess {
            weed: weed.to_path_buf(),
            child,
            endpoint: format!("http://127.0.0.1:{}", ports[6]),
            dir,
            ports,
            runs: 1,
            started: Instant::now(),
        }
    }

    /// Wait until `bucket` exists (a directory under /buckets on the filer; `None` after a
    /// restart, when it is there already) and `writes()` succeeds: a signed write through the
    /// caller's S3 client (a volume server must have joined first). Panics with the log's tail
    /// after 90 s.
    pub async fn ready<F, Fut>(&self, bucket: Option<&str>, writes: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut made = bucket.is_none();
        loop {
            if let (false, Some(bucket)) = (made, bucket) {
                made = http
                    .post(format!(
                        "http://127.0.0.1:{}/buckets/{bucket}/",
                        self.ports[4]
                    ))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            }
            if made && writes().await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not come up in 90 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "SeaweedFS up in {:.1} s on {}",
            self.started.elapsed().as_secs_f64(),
            self.endpoint
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last 30 lines of the current run's log.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join(log_name(self.runs))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGKILL, as a crash; [`WeedProcess::restart`] brings it back on the same ports and data.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again after [`WeedProcess::kill`]: same ports, same data (the bucket and what
    /// it held); then [`WeedProcess::ready`] with no bucket.
    pub fn restart(&mut self) {
        remove_sockets(&self.ports);
        self.runs += 1;
        self.started = Instant::now();
        self.child = launch(&self.weed, self.dir.path(), &self.ports, self.runs);
    }

    /// SIGSTOP (`"-STOP"`): the process holds its ports and answers nothing (a hung store);
    /// `"-CONT"` resumes it.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} weed");
    }
}

impl Drop for WeedProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- weed log tail ----\n{}", self.log_tail());
        }
        // A stopped process is killed all the same (SIGKILL needs no SIGCONT).
        self.kill();
        remove_sockets(&self.ports);
    }
}
