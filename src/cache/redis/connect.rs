//! Connections to the Redis deployment: a self-reconnecting manager for one server (also the
//! master a Sentinel group names), or a Cluster connection that routes each key to its slot's
//! node and follows `MOVED`/`ASK` by itself.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, FromRedisValue, RedisResult};

use super::config::Target;

/// One way to send commands; cheap to clone (every clone shares the connection).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(m) => cmd.query_async(m).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

impl Target {
    /// A connection. For one server no network is used (the manager connects on first use);
    /// under Sentinel the Sentinels are asked which server is the master (and it is checked to
    /// say so itself); for a Cluster the slot map is fetched from a seed node.
    pub async fn connect(&self, manager: &ConnectionManagerConfig) -> RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                ConnectionManager::new_lazy_with_config(client.clone(), manager.clone())
                    .map(Conn::Single)
            }
            Target::Sentinel(s) => {
                let mut b = SentinelClientBuilder::new(
                    s.sentinels.clone(),
                    &s.master_name,
                    SentinelServerType::Master,
                )?
                .set_client_to_redis_db(s.db)
                .set_client_to_redis_tcp_settings(s.tcp.clone())
                .set_client_to_sentinel_tcp_settings(s.tcp.clone());
                if let Some(u) = &s.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &s.password {
                    b = b.set_client_to_redis_password(p);
                }
                let master = b.build()?.async_get_client().await?;
                ConnectionManager::new_lazy_with_config(master, manager.clone()).map(Conn::Single)
            }
            Target::Cluster(c) => c.get_async_connection().await.map(Conn::Cluster),
        }
    }
}
