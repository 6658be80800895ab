//! The Redis client of both binaries — one Redis shared in one of two ways
//! (see [`RedisClientMode`]), or a Redis Cluster (see [`RedisMode`]) — with
//! one rule for every caller: a request's Redis work either finishes within
//! the command timeout or fails as [`Error::CacheUnavailable`]. Connections
//! that die are replaced on the next use, so the service recovers by itself
//! when Redis comes back.

pub mod cluster;
mod conn;
mod startup;
mod walk;

pub use conn::{Conn, Shard};
pub use startup::{StartupRefusal, check_credentials};
pub use walk::ScanPages;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use deadpool_redis::redis::cluster::{ClusterClient, ClusterConfig};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::{self, AsyncConnectionConfig};
use deadpool_redis::{Manager, Pool, PoolError, Runtime};

use crate::config::{RedisClientMode, RedisMode, RedisSettings};
use crate::error::Error;

/// How long Redis must have been failing for its recovery to count as a failover.
const FAILOVER_AFTER: Duration = Duration::from_secs(1);

/// A cheap-to-clone handle on Redis shared by every request and job.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Milliseconds; an operator may change it at run time.
    command_timeout_ms: AtomicU64,
    timeouts: AtomicU64,
    /// When Redis began failing (ms since the store was built; 0: it is not).
    failing_since_ms: AtomicU64,
    failovers: AtomicU64,
    created: std::time::Instant,
}

enum Backend {
    Multiplexed {
        connections: Vec<ConnectionManager>,
        /// One per serving thread (see [`pin_thread_to_connection`]).
        pinned: Vec<ConnectionManager>,
        next: AtomicUsize,
    },
    Pool(Pool),
    /// One multiplexed connection per node behind a slot-routing client.
    Cluster(Box<ClusterBackend>),
}

struct ClusterBackend {
    /// For background work and threads without a pinned connection.
    shared: ClusterConnection,
    client: ClusterClient,
    config: ClusterConfig,
    /// One per serving thread, opened on first use from that thread, so
    /// its driver task runs on that thread's runtime (as [`Backend::Multiplexed`]'s).
    pinned: Vec<std::sync::OnceLock<ClusterConnection>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("mode", &self.mode())
            .field("command_timeout", &self.command_timeout())
            .finish()
    }
}

/// Server-wide figures of Redis at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerFigures {
    pub used_memory_bytes: u64,
    /// `0` when no limit is set.
    pub max_memory_bytes: u64,
    pub total_keys: u64,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub connected_clients: u64,
    pub ops_per_second: u64,
    pub evicted_keys: u64,
    pub expired_keys: u64,
}

/// Bytes in a MiB, the unit the design reports memory in.
pub const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// Connection counters for health and the connections report.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStats {
    pub mode: &'static str,
    /// Connections open (pool) or shared (multiplexed).
    pub size: usize,
    pub max_size: usize,
    /// Pooled connections idle right now (multiplexed: all of them).
    pub idle: usize,
    /// Pooled connections lent to requests right now.
    pub in_use: usize,
    /// Requests waiting for a pooled connection.
    pub waiting: usize,
    /// Requests that gave up on Redis since start.
    pub timeouts: u64,
    /// Times Redis answered again after failing for a second or more.
    pub failovers: u64,
}

thread_local! {
    static PINNED_SLOT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Gives this thread's Redis work connection `slot` of the pinned set (see
/// [`RedisStore::with_pinned`]): a thread that runs its own single-threaded
/// runtime then has a connection whose driver task lives on that runtime
/// (connections open lazily, on first use), so a command and the reply's
/// wake-up never cross threads.
pub fn pin_thread_to_connection(slot: usize) {
    PINNED_SLOT.with(|s| s.set(Some(slot)));
}

impl RedisStore {
    /// Builds the client without touching the network: the api starts even
    /// while Redis is down and reports `503` until it answers.
    ///
    /// # Errors
    ///
    /// When the URL cannot be parsed.
    pub fn new(settings: &RedisSettings) -> Result<Self, redis::RedisError> {
        Self::with_pinned(settings, 0)
    }

    /// [`RedisStore::new`] with `pinned` more connections in multiplexed
    /// mode, one per thread that calls [`pin_thread_to_connection`].
    ///
    /// # Errors
    ///
    /// When the URL cannot be parsed.
    pub fn with_pinned(settings: &RedisSettings, pinned: usize) -> Result<Self, redis::RedisError> {
        let urls = settings.urls();
        let backend = match (settings.redis_mode, settings.redis_client) {
            (RedisMode::Standalone, _) if urls.len() != 1 => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "REDIS_URL lists several URLs",
                    "give one URL, or REDIS_MODE=cluster for the seed nodes of a cluster".into(),
                )));
            }
            (RedisMode::Cluster, _) => {
                let client = ClusterClient::builder(urls)
                    .connection_timeout(settings.connect_timeout())
                    .response_timeout(settings.command_timeout())
                    .retries(4)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .build()?;
                let config = cluster_config(settings, settings.command_timeout());
                // Connects in the background: the api starts while the
                // cluster is down, and requests answer 503 until it is up.
                Backend::Cluster(Box::new(ClusterBackend {
                    shared: client.get_pending_async_connection_with_config(config.clone()),
                    client,
                    config,
                    pinned: (0..pinned).map(|_| std::sync::OnceLock::new()).collect(),
                }))
            }
            (RedisMode::Standalone, RedisClientMode::Multiplexed) => {
                let client = redis::Client::open(settings.redis_url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout()))
                    .set_response_timeout(Some(settings.command_timeout()))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let open = |n: usize| {
                    (0..n)
                        .map(|_| {
                            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                Backend::Multiplexed {
                    connections: open(usize::from(settings.redis_multiplexed_connections))?,
                    pinned: open(pinned)?,
                    next: AtomicUsize::new(0),
                }
            }
            (RedisMode::Standalone, RedisClientMode::Pool) => {
                let connection = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout()))
                    .set_response_timeout(Some(settings.command_timeout()));
                let manager = Manager::new_with_config(settings.redis_url.as_str(), connection)?;
                let pool = Pool::builder(manager)
                    .max_size(usize::from(settings.redis_pool_size))
                    .wait_timeout(Some(settings.wait_timeout()))
                    .create_timeout(Some(settings.connect_timeout()))
                    .recycle_timeout(Some(settings.command_timeout()))
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "building the redis pool",
                            e.to_string(),
                        ))
                    })?;
                Backend::Pool(pool)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                command_timeout_ms: AtomicU64::new(settings.redis_command_timeout_ms),
                timeouts: AtomicU64::new(0),
                failing_since_ms: AtomicU64::new(0),
                failovers: AtomicU64::new(0),
                created: std::time::Instant::now(),
            }),
        })
    }

    pub fn mode(&self) -> &'static str {
        match self.inner.backend {
            Backend::Multiplexed { .. } => "multiplexed",
            Backend::Pool(_) => "pool",
            Backend::Cluster(_) => "cluster",
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.backend, Backend::Cluster(_))
    }

    /// The nodes of the cluster (`None` on a standalone Redis).
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when no node answers in time.
    pub async fn cluster_nodes(&self) -> Result<Option<Vec<cluster::ClusterNode>>, Error> {
        self.timed(self.nodes_untimed()).await
    }

    /// [`RedisStore::cluster_nodes`] for callers already inside [`RedisStore::timed`].
    async fn nodes_untimed(&self) -> Result<Option<Vec<cluster::ClusterNode>>, Error> {
        if !self.is_cluster() {
            return Ok(None);
        }
        let mut conn = self.conn().await?;
        cluster::nodes(&mut conn).await.map(Some)
    }

    /// Each node of the cluster with what it answers now (`None` on a
    /// standalone Redis): for `/health` and per-node metrics. Primaries
    /// serving slots are asked concurrently, each within the command
    /// timeout; other nodes (replicas, to which the client keeps no
    /// connection since reads go to primaries, and empty primaries) are
    /// reported as the cluster sees them.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when no node says what the cluster is.
    pub async fn probe_nodes(&self) -> Result<Option<Vec<NodeProbe>>, Error> {
        let (Backend::Cluster(backend), Some(nodes)) =
            (&self.inner.backend, self.cluster_nodes().await?)
        else {
            return Ok(None);
        };
        let cluster = &backend.shared;
        let deadline = self.command_timeout();
        let mut asks = tokio::task::JoinSet::new();
        for (index, node) in nodes.iter().enumerate() {
            let Some((host, port)) = node.host_port().filter(|_| node.serves_slots()) else {
                continue;
            };
            let mut conn = Conn::Routed {
                cluster: cluster.clone(),
                route: SingleNodeRoutingInfo::ByAddress { host, port },
            };
            asks.spawn(async move {
                let started = std::time::Instant::now();
                let answer = tokio::time::timeout(
                    deadline,
                    redis::cmd("INFO")
                        .arg("memory")
                        .arg("keyspace")
                        .query_async::<String>(&mut conn),
                )
                .await;
                (index, answer.ok().and_then(Result::ok), started.elapsed())
            });
        }
        let mut probes: Vec<NodeProbe> = nodes
            .into_iter()
            .map(|node| NodeProbe {
                node,
                latency: None,
                used_memory_bytes: None,
                keys: None,
            })
            .collect();
        while let Some(Ok((index, text, took))) = asks.join_next().await {
            let (Some(probe), Some(text)) = (probes.get_mut(index), text) else {
                continue;
            };
            let info = parse_info(&text);
            probe.latency = Some(took);
            probe.used_memory_bytes = info.get("used_memory").and_then(|v| v.parse().ok());
            probe.keys = Some(keyspace_keys(&info));
        }
        Ok(Some(probes))
    }

    /// The parts of the keyspace a walk over every key goes through: the
    /// one Redis, or each primary of the cluster that serves slots. Call it
    /// inside [`RedisStore::timed`], as [`RedisStore::conn`].
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`].
    pub async fn shards(&self) -> Result<Vec<Shard>, Error> {
        let Some(nodes) = self.nodes_untimed().await? else {
            return Ok(vec![Shard::Whole]);
        };
        Ok(nodes
            .iter()
            .filter(|n| n.serves_slots() && !n.failing)
            .filter_map(|n| {
                let (host, port) = n.host_port()?;
                Some(Shard::Node { host, port })
            })
            .collect())
    }

    /// A connection whose commands all go to `shard`.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when no connection can be had.
    pub async fn conn_on(&self, shard: &Shard) -> Result<Conn, Error> {
        match (shard, &self.inner.backend) {
            (Shard::Node { host, port }, Backend::Cluster(cluster)) => Ok(Conn::Routed {
                cluster: cluster.shared.clone(),
                route: SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                },
            }),
            _ => self.conn().await,
        }
    }

    /// A connection to the primary owning `slot` (cluster mode; the one
    /// Redis otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when no connection can be had.
    pub async fn conn_on_slot(&self, slot: u16) -> Result<Conn, Error> {
        match &self.inner.backend {
            Backend::Cluster(cluster) => Ok(Conn::Routed {
                cluster: cluster.shared.clone(),
                route: SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)),
            }),
            _ => self.conn().await,
        }
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.command_timeout_ms.load(Ordering::Relaxed))
    }

    /// Changes the pool size (pool mode) and the per-request deadline at run time.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for out-of-range values or a pool size in multiplexed mode.
    pub fn reconfigure(
        &self,
        max_size: Option<usize>,
        command_timeout: Option<Duration>,
    ) -> Result<ConnectionStats, Error> {
        if let Some(timeout) = command_timeout {
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            if !(1..=60_000).contains(&ms) {
                return Err(Error::validation(
                    "commandTimeoutMs",
                    "commandTimeoutMs must be from 1 to 60000",
                ));
            }
        }
        if let Some(size) = max_size {
            let Backend::Pool(pool) = &self.inner.backend else {
                return Err(Error::validation(
                    "maxSize",
                    "maxSize applies to REDIS_CLIENT=pool; multiplexed mode shares a fixed set of connections",
                ));
            };
            if !(1..=1024).contains(&size) {
                return Err(Error::validation(
                    "maxSize",
                    "maxSize must be from 1 to 1024",
                ));
            }
            pool.resize(size);
        }
        if let Some(timeout) = command_timeout {
            self.inner.command_timeout_ms.store(
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        Ok(self.connection_stats())
    }

    /// `CONFIG GET` of one parameter.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`].
    pub async fn config_get(&self, parameter: &str) -> Result<Option<String>, Error> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let pairs: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(parameter)
                .query_async(&mut conn)
                .await?;
            Ok(pairs.into_iter().nth(1))
        })
        .await
    }

    /// `CONFIG SET` of one parameter.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`]; [`Error::Internal`] when Redis refuses the value.
    pub async fn config_set(&self, parameter: &str, value: &str) -> Result<(), Error> {
        self.timed(async {
            let mut conn = self.conn().await?;
            let () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(parameter)
                .arg(value)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// A connection for one unit of work. Call it inside [`RedisStore::timed`]
    /// so that waiting for it counts against the request's deadline.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when no connection can be had.
    pub async fn conn(&self) -> Result<Conn, Error> {
        match &self.inner.backend {
            Backend::Multiplexed {
                connections,
                pinned,
                next,
            } => {
                let connection = match PINNED_SLOT.with(std::cell::Cell::get) {
                    Some(slot) if !pinned.is_empty() => &pinned[slot % pinned.len()],
                    _ => &connections[next.fetch_add(1, Ordering::Relaxed) % connections.len()],
                };
                Ok(Conn::Shared(connection.clone()))
            }
            // Boxed: the pool's future is kilobytes, and inline it would
            // swell every caller's future, which axum boxes per request,
            // in the default multiplexed mode too.
            Backend::Pool(pool) => Box::pin(pool.get())
                .await
                .map(Conn::Pooled)
                .map_err(pool_error),
            Backend::Cluster(cluster) => {
                let connection = match PINNED_SLOT.with(std::cell::Cell::get) {
                    Some(slot) if !cluster.pinned.is_empty() => {
                        cluster.pinned[slot % cluster.pinned.len()].get_or_init(|| {
                            cluster
                                .client
                                .get_pending_async_connection_with_config(cluster.config.clone())
                        })
                    }
                    _ => &cluster.shared,
                };
                Ok(Conn::Cluster(connection.clone()))
            }
        }
    }

    /// Says `member` of a group of processes (the api instances) is alive
    /// and answers how many members were alive within `window`: the group
    /// is a sorted set scored by last report, old members dropped.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`].
    pub async fn report_alive(
        &self,
        group: &str,
        member: &str,
        window: Duration,
    ) -> Result<u64, Error> {
        let now = chrono::Utc::now().timestamp_millis();
        let oldest = now - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.timed(async {
            let mut conn = self.conn().await?;
            let (alive,): (u64,) = redis::pipe()
                .zadd(group, member, now)
                .ignore()
                .zrembyscore(group, "-inf", format!("({oldest}"))
                .ignore()
                .zcard(group)
                .query_async(&mut conn)
                .await?;
            Ok(alive)
        })
        .await
    }

    /// Runs one unit of Redis work under the command timeout.
    ///
    /// # Errors
    ///
    /// The work's own error, or [`Error::CacheUnavailable`] when the deadline passes.
    pub async fn timed<T>(&self, work: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        self.timed_for(self.command_timeout(), work).await
    }

    /// [`RedisStore::timed`] with an explicit deadline, for longer job steps.
    ///
    /// # Errors
    ///
    /// As [`RedisStore::timed`].
    pub async fn timed_for<T>(
        &self,
        deadline: Duration,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => {
                match &result {
                    Err(Error::CacheUnavailable(_)) => self.failed(),
                    Ok(_) => self.answered(),
                    Err(_) => {}
                }
                result
            }
            Err(_) => {
                self.failed();
                Err(Error::CacheUnavailable(
                    format!("redis did not answer within {} ms", deadline.as_millis()).into(),
                ))
            }
        }
    }

    fn failed(&self) {
        self.inner.timeouts.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.inner.created.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self.inner.failing_since_ms.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A success after an outage of at least [`FAILOVER_AFTER`] counts as a
    /// failover (Redis restarted or another node took over); a single slow
    /// command does not.
    fn answered(&self) {
        if self.inner.failing_since_ms.load(Ordering::Relaxed) == 0 {
            return;
        }
        let since = self.inner.failing_since_ms.swap(0, Ordering::Relaxed);
        let now = u64::try_from(self.inner.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        if since != 0 && now.saturating_sub(since) >= FAILOVER_AFTER.as_millis() as u64 {
            self.inner.failovers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Round trip time of a `PING`.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when Redis does not answer in time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = std::time::Instant::now();
        self.timed(async {
            let mut conn = self.conn().await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(())
        })
        .await?;
        Ok(started.elapsed())
    }

    /// One section of `INFO` as field/value pairs. On a cluster, the
    /// primaries' answers merged: counters summed, anything else (versions,
    /// ratios) as the first primary says.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`].
    pub async fn info(
        &self,
        section: &str,
    ) -> Result<std::collections::HashMap<String, String>, Error> {
        let mut merged = std::collections::HashMap::new();
        for (index, answer) in self
            .info_per_shard(&[section])
            .await?
            .into_iter()
            .enumerate()
        {
            for (field, value) in answer {
                match merged.entry(field) {
                    std::collections::hash_map::Entry::Vacant(slot) if index == 0 => {
                        slot.insert(value);
                    }
                    std::collections::hash_map::Entry::Vacant(_) => {}
                    std::collections::hash_map::Entry::Occupied(mut slot) => {
                        if let (Ok(a), Ok(b)) = (slot.get().parse::<u64>(), value.parse::<u64>()) {
                            slot.insert((a + b).to_string());
                        }
                    }
                }
            }
        }
        Ok(merged)
    }

    /// `INFO` of `sections` from each shard (the one Redis, or every
    /// primary), in one round trip a shard.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`].
    pub async fn info_per_shard(
        &self,
        sections: &[&str],
    ) -> Result<Vec<std::collections::HashMap<String, String>>, Error> {
        self.timed(async {
            let mut answers = Vec::new();
            for shard in self.shards().await? {
                let mut conn = self.conn_on(&shard).await?;
                let text: String = redis::cmd("INFO")
                    .arg(sections)
                    .query_async(&mut conn)
                    .await?;
                answers.push(parse_info(&text));
            }
            Ok(answers)
        })
        .await
    }

    /// The server-wide figures reports need, from `INFO` (on a cluster, the
    /// primaries' figures added up).
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`].
    pub async fn server_figures(&self) -> Result<ServerFigures, Error> {
        let shards = self
            .info_per_shard(&["memory", "stats", "clients", "keyspace"])
            .await?;
        let number = |field: &str| {
            shards
                .iter()
                .filter_map(|map| map.get(field)?.parse::<u64>().ok())
                .sum::<u64>()
        };
        Ok(ServerFigures {
            used_memory_bytes: number("used_memory"),
            max_memory_bytes: number("maxmemory"),
            total_keys: shards.iter().map(keyspace_keys).sum(),
            keyspace_hits: number("keyspace_hits"),
            keyspace_misses: number("keyspace_misses"),
            connected_clients: number("connected_clients"),
            ops_per_second: number("instantaneous_ops_per_sec"),
            evicted_keys: number("evicted_keys"),
            expired_keys: number("expired_keys"),
        })
    }

    pub fn connection_stats(&self) -> ConnectionStats {
        let timeouts = self.inner.timeouts.load(Ordering::Relaxed);
        let failovers = self.inner.failovers.load(Ordering::Relaxed);
        match &self.inner.backend {
            Backend::Multiplexed {
                connections,
                pinned,
                ..
            } => ConnectionStats {
                mode: "multiplexed",
                size: connections.len() + pinned.len(),
                max_size: connections.len() + pinned.len(),
                idle: connections.len() + pinned.len(),
                in_use: 0,
                waiting: 0,
                timeouts,
                failovers,
            },
            Backend::Cluster(cluster) => {
                // Cluster clients (each one connection per node): the shared
                // one and the serving threads' opened so far.
                let open = 1 + cluster.pinned.iter().filter(|c| c.get().is_some()).count();
                ConnectionStats {
                    mode: "cluster",
                    size: open,
                    max_size: 1 + cluster.pinned.len(),
                    idle: open,
                    in_use: 0,
                    waiting: 0,
                    timeouts,
                    failovers,
                }
            }
            Backend::Pool(pool) => {
                let status = pool.status();
                ConnectionStats {
                    mode: "pool",
                    size: status.size,
                    max_size: status.max_size,
                    idle: status.available,
                    in_use: status.size.saturating_sub(status.available),
                    waiting: status.waiting,
                    timeouts,
                    failovers,
                }
            }
        }
    }
}

/// A client of one server of `settings`: the one Redis, or the cluster node
/// `shard` names, with the seed URL's password and TLS (a subscription to
/// what a node announces of its own keys: keyspace notifications).
///
/// # Errors
///
/// When the URL cannot be parsed.
pub fn client_of(
    settings: &RedisSettings,
    shard: &Shard,
) -> Result<redis::Client, redis::RedisError> {
    use redis::IntoConnectionInfo;
    let seed = settings.first_url().into_connection_info()?;
    let Shard::Node { host, port } = shard else {
        return redis::Client::open(seed);
    };
    let (host, port) = (host.clone(), *port);
    let addr = match seed.addr().clone() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            tls_params,
        },
        _ => redis::ConnectionAddr::Tcp(host, port),
    };
    redis::Client::open(seed.set_addr(addr))
}

/// A connection of its own (for the job queues), reconnecting by itself, with
/// a response timeout suited to its callers; connects on first use.
///
/// # Errors
///
/// When the URL cannot be parsed.
pub fn dedicated_connection(
    settings: &RedisSettings,
    response_timeout: Duration,
) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(settings.redis_url.as_str())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout()))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// A data-plane connection of its own, for a command that blocks (a
/// stream read waiting for events) and must not hold up the shared
/// connections' other commands: to the one Redis, or a cluster client of
/// its own that routes the command to the node owning its key.
///
/// # Errors
///
/// When the URLs cannot be parsed.
pub fn dedicated_data_connection(
    settings: &RedisSettings,
    response_timeout: Duration,
) -> Result<Conn, redis::RedisError> {
    if !settings.is_cluster() {
        return dedicated_connection(settings, response_timeout).map(Conn::Shared);
    }
    let client = ClusterClient::builder(settings.urls())
        .connection_timeout(settings.connect_timeout())
        .response_timeout(response_timeout)
        .build()?;
    Ok(Conn::Cluster(
        client.get_pending_async_connection_with_config(cluster_config(settings, response_timeout)),
    ))
}

/// How a cluster connection connects and how long it waits for an answer.
fn cluster_config(settings: &RedisSettings, response_timeout: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(settings.connect_timeout())
        .set_response_timeout(response_timeout)
}

/// The `field:value` lines of an `INFO` answer.
fn parse_info(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Keys of every database in a parsed `INFO keyspace`, whose lines look
/// like `db0:keys=12,expires=3,avg_ttl=0`.
fn keyspace_keys(info: &std::collections::HashMap<String, String>) -> u64 {
    info.iter()
        .filter(|(field, _)| field.starts_with("db"))
        .filter_map(|(_, v)| {
            v.split(',')
                .next()?
                .strip_prefix("keys=")?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn pool_error(err: PoolError) -> Error {
    match err {
        PoolError::Backend(e) => Error::from(e),
        other => Error::CacheUnavailable(Box::new(other)),
    }
}

/// One cluster node and what it answered (nothing: it did not answer in time).
#[derive(Debug, Clone)]
pub struct NodeProbe {
    pub node: cluster::ClusterNode,
    pub latency: Option<Duration>,
    pub used_memory_bytes: Option<u64>,
    /// Keys the node holds (a replica: its copy of its primary's).
    pub keys: Option<u64>,
}

impl NodeProbe {
    /// Up: the cluster does not hold it as failing and, serving slots, it
    /// answered (a replica or an empty primary is taken on the cluster's word).
    pub fn is_up(&self) -> bool {
        (self.latency.is_some() || !self.node.serves_slots()) && !self.node.failing
    }
}
