//! A real `redis-server` process (or `redis-server --sentinel`) on loopback, in a temporary
//! directory, without persistence; killed on drop. The one way the tests start Redis: the
//! integration harness (`tests/common/redis.rs`) and the library's own Redis tests both include
//! this file (`#[path]`), each adding what it needs on top.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether `redis-server` runs here (the callers decide whether a missing one skips or fails).
pub fn redis_server_runs() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One server process. [`RedisProcess::stop`] then [`RedisProcess::run`] again on the same
/// arguments (and port) makes an outage.
pub struct RedisProcess {
    dir: tempfile::TempDir,
    /// Written to `redis.conf` in the directory before the first start and passed first (a
    /// Sentinel rewrites it, and reads it back on a restart).
    conf: Option<String>,
    /// How to listen (`--port`, or TLS ports) and anything else, after the common arguments.
    args: Vec<String>,
    /// The log line that says the server serves.
    ready: &'static str,
    child: Option<Child>,
}

impl RedisProcess {
    /// Not started yet: [`RedisProcess::run`] starts it.
    pub fn new(conf: Option<String>, args: Vec<String>, ready: &'static str) -> RedisProcess {
        RedisProcess {
            dir: tempfile::Builder::new()
                .prefix("ocim-redis")
                .tempdir()
                .expect("temp dir"),
            conf,
            args,
            ready,
            child: None,
        }
    }

    /// Its working directory (logs, `redis.conf`, anything a test puts beside them).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start (again), empty, and wait for the ready line in its log.
    pub async fn run(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = self.dir.path().join("redis.log");
        let _ = fs::remove_file(&log);
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.conf {
            let conf_path = self.dir.path().join("redis.conf");
            if !conf_path.exists() {
                fs::write(&conf_path, conf).expect("write redis.conf");
            }
            cmd.arg(&conf_path);
        }
        let mut child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        for _ in 0..200 {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains(self.ready) {
                self.child = Some(child);
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server exited ({status}):\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "redis-server not ready after 10s:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// SIGKILL (an outage: connections drop, the port refuses).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `STOP` freezes the server (a hung Redis: connections open, no answers); `CONT` resumes.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("redis-server running");
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {pid}");
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too.
        self.stop();
    }
}
