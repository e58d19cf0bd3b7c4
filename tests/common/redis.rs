//! A real `redis-server` on loopback for fleet tests: started, stopped and restarted on the same
//! port (an outage), and read directly.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, q, tool_or_skip};

/// A real `redis-server` on a loopback port, no persistence, in a temporary directory; killed on
/// drop. [`RedisServer::stop`] and [`RedisServer::run`] again on the same port make an outage.
pub struct RedisServer {
    dir: TempDir,
    pub port: u16,
    child: Option<Child>,
    /// `requirepass`, when started with [`RedisServer::start_with_password`].
    password: Option<String>,
}

impl RedisServer {
    /// `None` (skip) when redis-server is not installed, unless `OCIMIRROR_REQUIRE_ALL`.
    pub async fn start() -> Option<RedisServer> {
        Self::start_inner(None).await
    }

    /// Like [`RedisServer::start`], with `requirepass`: [`RedisServer::url`] carries the password.
    pub async fn start_with_password(password: &str) -> Option<RedisServer> {
        Self::start_inner(Some(password.to_string())).await
    }

    async fn start_inner(password: Option<String>) -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !tool_or_skip(found, "redis-server", "apt-get install redis-server") {
            return None;
        }
        let mut s = RedisServer {
            dir: tempfile::Builder::new()
                .prefix("ocim-redis")
                .tempdir()
                .unwrap(),
            port: free_port(),
            child: None,
            password,
        };
        s.run().await;
        Some(s)
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Top-level YAML for a mirror using this Redis as its descriptor cache.
    pub fn cache_yaml(&self) -> String {
        format!(
            "cache:\n  backend: redis\n  redis:\n    url: {}\n",
            q(&self.url())
        )
    }

    /// Start (again) on the same port, empty.
    pub async fn run(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = self.dir.path().join("redis.log");
        let _ = fs::remove_file(&log);
        let mut cmd = Command::new("redis-server");
        if let Some(pw) = &self.password {
            cmd.arg("--requirepass").arg(pw);
        }
        let mut child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        for _ in 0..200 {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// Keys matching the glob `pattern`, sorted.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut c = self.conn().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut c)
            .await
            .unwrap();
        keys.sort();
        keys
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        let mut c = self.conn().await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
