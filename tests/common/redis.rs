//! A real `redis-server` on loopback for fleet tests: started, stopped and restarted on the same
//! port (an outage), and read directly; also the deployments managed Redis comes as, made of
//! real servers: a master, its replica and Sentinels (`redis-server --sentinel`) that fail it
//! over, and a three-node Cluster.

use std::process::Command;
use std::time::Duration;

use super::{free_port, q, tool_or_skip};

#[path = "../parts/redis_process.rs"]
mod process;

use process::{RedisProcess, redis_server_runs};

/// A real `redis-server` on a loopback port, no persistence, in a temporary directory; killed on
/// drop. [`RedisServer::stop`] and [`RedisServer::run`] again on the same port make an outage.
pub struct RedisServer {
    process: RedisProcess,
    pub port: u16,
    /// `requirepass`, when started with [`RedisServer::start_with_password`].
    password: Option<String>,
}

fn redis_installed() -> bool {
    tool_or_skip(
        redis_server_runs(),
        "redis-server",
        "apt-get install redis-server",
    )
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
        if !redis_installed() {
            return None;
        }
        let mut s = RedisServer::new(password, None, Vec::new(), "Ready to accept connections");
        s.run().await;
        Some(s)
    }

    /// `conf`: a `redis.conf` passed first; `extra`: arguments after the port and password;
    /// `ready`: the log line that says it serves.
    fn new(
        password: Option<String>,
        conf: Option<String>,
        extra: Vec<String>,
        ready: &'static str,
    ) -> RedisServer {
        let port = free_port();
        let mut args = vec!["--port".to_string(), port.to_string()];
        if let Some(pw) = &password {
            args.extend(["--requirepass".to_string(), pw.clone()]);
        }
        args.extend(extra);
        RedisServer {
            process: RedisProcess::new(conf, args, ready),
            port,
            password,
        }
    }

    /// A plain server with `extra` arguments (`--replicaof`, `--cluster-enabled`, …).
    async fn start_with(extra: &[&str]) -> RedisServer {
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut s = RedisServer::new(None, None, extra, "Ready to accept connections");
        s.run().await;
        s
    }

    /// Start (again) on the same port, empty.
    pub async fn run(&mut self) {
        self.process.run().await;
    }

    /// SIGKILL (an outage: connections drop, the port refuses).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    pub fn is_running(&self) -> bool {
        self.process.pid().is_some()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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

    /// A direct connection, with bounds generous enough for a loaded test machine (the
    /// client's own defaults are tuned for production).
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(10)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
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

/// A master, one replica of it, and two Sentinels watching it (quorum 1, the master declared down
/// after 500 ms without an answer), all real servers on loopback.
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

/// The master name the Sentinels know.
pub const SENTINEL_MASTER: &str = "mirrorcache";

impl RedisSentinels {
    pub async fn start() -> Option<RedisSentinels> {
        if !redis_installed() {
            return None;
        }
        let master = RedisServer::start_with(&[]).await;
        let port = master.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
        let conf = format!(
            "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {port} 1\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} 500\n\
             sentinel failover-timeout {SENTINEL_MASTER} 5000\n"
        );
        let mut sentinels = Vec::new();
        for _ in 0..2 {
            let mut s = RedisServer::new(
                None,
                Some(conf.clone()),
                vec!["--sentinel".into()],
                "+monitor master",
            );
            s.run().await;
            sentinels.push(s);
        }
        let group = RedisSentinels {
            master,
            replica,
            sentinels,
        };
        group.wait_master(group.master.port).await;
        // The replica must have caught up, or the Sentinels have nothing to promote.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut group.replica.conn().await)
                .await
                .unwrap();
            if info.contains("master_link_status:up") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica never synced:\n{info}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(group)
    }

    /// `redis+sentinel://s1,s2/<master>/0`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| s.addr()).collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}/0", hosts.join(","))
    }

    pub fn cache_yaml(&self) -> String {
        format!(
            "cache:\n  backend: redis\n  redis:\n    url: {}\n",
            q(&self.url())
        )
    }

    /// The master's port, as the first Sentinel tells it.
    pub async fn master_port(&self) -> u16 {
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(SENTINEL_MASTER)
            .query_async(&mut self.sentinels[0].conn().await)
            .await
            .unwrap();
        addr[1].parse().unwrap()
    }

    /// Wait (up to 20 s) until the Sentinels name `port` the master.
    pub async fn wait_master(&self, port: u16) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.master_port().await != port {
            assert!(
                std::time::Instant::now() < deadline,
                "the Sentinels never named port {port} the master"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill the master and wait until the Sentinels have promoted the replica.
    pub async fn fail_over(&mut self) {
        self.master.stop();
        self.wait_master(self.replica.port).await;
    }
}

/// Three masters of a Redis Cluster (no replicas; a node that is down leaves only its own
/// slots unserved), each slot range on one node.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Option<RedisCluster> {
        if !redis_installed() {
            return None;
        }
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // A bus port of its own: the default (the client port + 10000) may be taken by
            // another test's server, which would stop this node from starting.
            let bus = free_port().to_string();
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-port",
                    &bus,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                ])
                .await,
            );
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| n.addr()))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster { nodes };
        c.wait_ok().await;
        Some(c)
    }

    /// Wait (up to 20 s) until every running node says the cluster is ok.
    pub async fn wait_ok(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut n.conn().await)
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "node {} never ok:\n{info}",
                    n.port
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn cache_yaml(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("      - {}\n", q(&format!("redis://{}", n.addr()))))
            .collect();
        format!(
            "cache:\n  backend: redis\n  redis:\n    cluster:\n{}",
            nodes.concat()
        )
    }

    /// The keys each node holds (direct `KEYS` on each, so each node's own slots).
    pub async fn keys_per_node(&self, pattern: &str) -> Vec<Vec<String>> {
        let mut all = Vec::new();
        for n in &self.nodes {
            all.push(if n.is_running() {
                n.keys(pattern).await
            } else {
                Vec::new()
            });
        }
        all
    }
}
