//! What a unit of Redis work holds: a connection of one of the client's
//! kinds (see [`Conn`]), and the parts of the keyspace walks go through
//! (see [`Shard`]).

use deadpool_redis::redis::aio::{ConnectionLike, ConnectionManager};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use deadpool_redis::redis::{self, Cmd, Pipeline, RedisFuture};

/// A part of the keyspace held by one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shard {
    /// A standalone Redis: every key.
    Whole,
    /// A cluster primary: the keys of its slots.
    Node { host: String, port: u16 },
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole => f.write_str("redis"),
            Self::Node { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One connection lent to a unit of work: a clone of a shared multiplexed
/// connection, a pooled one returned to the pool on drop, or the cluster
/// client — routing each command by its key's slot, or bound to one node.
pub enum Conn {
    Shared(ConnectionManager),
    Pooled(deadpool_redis::Connection),
    Cluster(ClusterConnection),
    /// Every command and pipeline goes to one node: the one at an address
    /// (a walk over one primary reads its keys where they are, keys of many
    /// slots in one pipeline: a node checks multi-key commands across slots,
    /// not pipelines) or the primary owning a slot (its key index).
    Routed {
        cluster: ClusterConnection,
        route: SingleNodeRoutingInfo,
    },
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shared(_) => f.write_str("Conn::Shared"),
            Self::Pooled(_) => f.write_str("Conn::Pooled"),
            Self::Cluster(_) => f.write_str("Conn::Cluster"),
            Self::Routed { route, .. } => write!(f, "Conn::Routed({route:?})"),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Self::Shared(c) => c.req_packed_command(cmd),
            Self::Pooled(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Routed { cluster, route } => {
                Box::pin(cluster.route_command(cmd.clone(), RoutingInfo::SingleNode(route.clone())))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Shared(c) => c.req_packed_commands(cmd, offset, count),
            Self::Pooled(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Self::Routed { cluster, route } => {
                Box::pin(cluster.route_pipeline(cmd.clone(), offset, count, route.clone()))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Shared(c) => c.get_db(),
            Self::Pooled(c) => c.get_db(),
            Self::Cluster(c) | Self::Routed { cluster: c, .. } => c.get_db(),
        }
    }
}
