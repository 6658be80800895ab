//! The near cache (L1, API.md §10): values of namespaces with `nearCache`
//! kept in this api instance's memory (bounded by bytes), in front of Redis.
//!
//! Coherence comes from Redis's server-assisted client-side caching: a
//! connection of its own, in RESP3, asks for `CLIENT TRACKING ON BCAST` on
//! the key prefixes of every near-cached namespace, so Redis pushes the name
//! of every key written under them, by any instance or straight to Redis,
//! and the entry is dropped as the push arrives. When that connection drops,
//! the cache is emptied and bypassed until tracking is on again. Entries
//! also end with their key's TTL (the value's expiry header).
//!
//! On a Redis Cluster the tracking connection is a cluster client of its
//! own with tracking on at every primary; a node's connection dropping
//! (a failover) or the set of primaries changing (a node added) empties
//! the cache and starts tracking again on the primaries there are now.
//!
//! A read that misses fills the cache only if no invalidation of its key's
//! shard arrived while it read Redis: a push racing the read can never
//! leave the older value behind.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster::ClusterClient;
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo,
};
use deadpool_redis::redis::{self, AsyncConnectionConfig, Cmd, PushInfo, PushKind};
use tokio::sync::{Notify, watch};

use crate::codec::{StoredExpiry, split_expiry, unix_now_ms};
use crate::config::RedisSettings;
use crate::namespaces::NamespaceBook;

/// Invalidation shards: a fill is refused when its key's shard saw an
/// invalidation during the read.
const SHARDS: usize = 256;

/// How often the tracker checks its connection and the prefixes to track.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The near cache of one api instance.
#[derive(Debug)]
pub struct NearCache {
    entries: moka::sync::Cache<String, Bytes>,
    /// Whether tracking is on: only then is the cache read or filled.
    healthy: AtomicBool,
    invalidated: [AtomicU64; SHARDS],
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    /// Rings when the tracking connection reports it dropped.
    dropped: Notify,
    /// The prefixes tracked now.
    tracked: Mutex<Vec<String>>,
}

/// Counters of the near cache since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NearFigures {
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
    pub entries: u64,
    pub bytes: u64,
}

impl NearCache {
    /// A near cache of at most `max_bytes` (keys and values).
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, value: &Bytes| {
                    u32::try_from(key.len() + value.len() + 64).unwrap_or(u32::MAX)
                })
                .build(),
            healthy: AtomicBool::new(false),
            invalidated: std::array::from_fn(|_| AtomicU64::new(0)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            dropped: Notify::new(),
            tracked: Mutex::new(Vec::new()),
        }
    }

    /// Whether reads may use the cache (tracking is on).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// The stored bytes of `redis_key`, if cached and not expired.
    pub fn get(&self, redis_key: &str) -> Option<Bytes> {
        if !self.is_healthy() {
            return None;
        }
        let found = self
            .entries
            .get(redis_key)
            .filter(|bytes| match split_expiry(bytes).0 {
                StoredExpiry::At(at) => at > unix_now_ms(),
                StoredExpiry::Never => true,
                StoredExpiry::Unknown => false,
            });
        match found {
            Some(bytes) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(bytes)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The invalidation stamp of `redis_key`'s shard, taken before reading Redis.
    pub fn stamp(&self, redis_key: &str) -> u64 {
        self.invalidated[shard(redis_key)].load(Ordering::Acquire)
    }

    /// Keeps what a read found, unless its shard was invalidated since
    /// `stamp` or tracking is off. Values without an expiry header are not
    /// kept (their TTL is unknown here).
    pub fn fill(&self, stamp: u64, redis_key: &str, bytes: Bytes) {
        if !self.is_healthy() || split_expiry(&bytes).0 == StoredExpiry::Unknown {
            return;
        }
        if self.stamp(redis_key) == stamp {
            self.entries.insert(redis_key.to_owned(), bytes);
            // A push that landed between the check and the insert wins.
            if self.stamp(redis_key) != stamp {
                self.entries.invalidate(redis_key);
            }
        }
    }

    /// Drops `redis_key` (it changed).
    pub fn invalidate(&self, redis_key: &str) {
        self.invalidated[shard(redis_key)].fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(redis_key);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops everything (tracking lost or changed, or Redis flushed).
    pub fn clear(&self) {
        for shard in &self.invalidated {
            shard.fetch_add(1, Ordering::AcqRel);
        }
        self.entries.invalidate_all();
    }

    pub fn figures(&self) -> NearFigures {
        NearFigures {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
        }
    }

    fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                let mut keys = Vec::new();
                for value in push.data {
                    match value {
                        redis::Value::Array(list) => keys.extend(list),
                        // A null list: Redis flushed everything.
                        redis::Value::Nil => {
                            self.clear();
                            return;
                        }
                        key => keys.push(key),
                    }
                }
                for key in keys {
                    if let Ok(key) = redis::from_redis_value::<String>(key) {
                        self.invalidate(&key);
                    }
                }
            }
            PushKind::Disconnection => {
                self.healthy.store(false, Ordering::Release);
                self.clear();
                self.dropped.notify_one();
            }
            _ => {}
        }
    }

    /// Keeps tracking on for the prefixes of every near-cached namespace,
    /// reconnecting when the connection drops, until `stop` changes.
    pub async fn track(
        self: Arc<Self>,
        settings: RedisSettings,
        namespaces: Arc<NamespaceBook>,
        name: String,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            if let Err(err) = self
                .tracking(&settings, &namespaces, &name, &mut stop)
                .await
            {
                tracing::warn!(%err, "near cache off: no invalidation connection; retrying");
            }
            self.healthy.store(false, Ordering::Release);
            self.clear();
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// One tracking connection's life; returns when it drops or at `stop`.
    async fn tracking(
        self: &Arc<Self>,
        settings: &RedisSettings,
        namespaces: &NamespaceBook,
        name: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), crate::Error> {
        let mut conn = Tracker::open(settings, Arc::clone(self)).await?;
        let mut setname = redis::cmd("CLIENT");
        setname.arg("SETNAME").arg(name);
        conn.everywhere(setname).await?;
        let primaries = conn.primaries().await?;
        loop {
            let wanted = prefixes(namespaces);
            let current = self
                .tracked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if wanted != current || !self.is_healthy() {
                self.healthy.store(false, Ordering::Release);
                let mut off = redis::cmd("CLIENT");
                off.arg("TRACKING").arg("OFF");
                conn.everywhere(off).await?;
                if !wanted.is_empty() {
                    let mut on = redis::cmd("CLIENT");
                    on.arg("TRACKING").arg("ON").arg("BCAST");
                    for prefix in &wanted {
                        on.arg("PREFIX").arg(prefix);
                    }
                    conn.everywhere(on).await?;
                }
                // Emptied only now that tracking is on: a read that began
                // before could hold a value written while nothing was
                // tracked; this refuses its fill (see `fill`).
                self.clear();
                if !wanted.is_empty() {
                    self.healthy.store(true, Ordering::Release);
                }
                *self.tracked.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
            }
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {
                    conn.everywhere(redis::cmd("PING")).await?;
                    if conn.primaries().await? != primaries {
                        // A primary no tracking was asked of may hold keys now.
                        return Ok(());
                    }
                }
                () = self.dropped.notified() => return Ok(()),
                _ = stop.changed() => return Ok(()),
            }
        }
    }
}

/// The tracking connection: to the one Redis, or a cluster client whose
/// tracking commands go to every primary.
enum Tracker {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Tracker {
    /// Connects in RESP3, invalidation pushes going to `near`.
    async fn open(settings: &RedisSettings, near: Arc<NearCache>) -> Result<Self, crate::Error> {
        let push = move |push: PushInfo| {
            near.on_push(push);
            Ok::<(), std::convert::Infallible>(())
        };
        if settings.is_cluster() {
            let client = ClusterClient::builder(settings.urls())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push)
                .connection_timeout(settings.connect_timeout())
                .response_timeout(settings.command_timeout())
                .build()?;
            return Ok(Self::Cluster(client.get_async_connection().await?));
        }
        let client = redis::Client::open(resp3_url(&settings.redis_url).as_str())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout()))
            .set_response_timeout(Some(settings.command_timeout()))
            .set_push_sender(push);
        Ok(Self::One(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        ))
    }

    /// Sends `cmd` to the Redis, or to every primary of the cluster.
    async fn everywhere(&mut self, cmd: Cmd) -> Result<(), crate::Error> {
        match self {
            Self::One(conn) => {
                conn.req_packed_command(&cmd).await?;
            }
            Self::Cluster(conn) => {
                let every = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                conn.route_command(cmd, every).await?;
            }
        }
        Ok(())
    }

    /// The primaries serving slots (none for one Redis).
    async fn primaries(&mut self) -> Result<Vec<String>, crate::Error> {
        match self {
            Self::One(_) => Ok(Vec::new()),
            Self::Cluster(conn) => Ok(crate::redis::cluster::nodes(conn)
                .await?
                .into_iter()
                .filter(|n| n.serves_slots())
                .map(|n| n.address)
                .collect()),
        }
    }
}

/// `redis_url` asking for RESP3 (pushes need it).
fn resp3_url(redis_url: &str) -> String {
    let joiner = if redis_url.contains('?') { '&' } else { '?' };
    format!("{redis_url}{joiner}protocol=resp3")
}

/// The Redis key prefixes of every near-cached namespace, without those
/// another one covers (Redis refuses overlapping prefixes).
fn prefixes(namespaces: &NamespaceBook) -> Vec<String> {
    let mut all: Vec<String> = namespaces
        .near_cached()
        .into_iter()
        .map(|(tenant, prefix)| crate::keys::TenantKeyspace::key_of_raw(&tenant, &prefix))
        .collect();
    all.sort();
    let mut kept: Vec<String> = Vec::with_capacity(all.len());
    for prefix in all {
        if !kept.iter().any(|k| prefix.starts_with(k.as_str())) {
            kept.push(prefix);
        }
    }
    kept
}

fn shard(redis_key: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    redis_key.hash(&mut hasher);
    usize::try_from(hasher.finish() % SHARDS as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(expires_at: u64) -> Bytes {
        let mut bytes = vec![b'T'];
        bytes.extend_from_slice(&expires_at.to_be_bytes());
        bytes.extend_from_slice(b"J1");
        Bytes::from(bytes)
    }

    #[test]
    fn a_fill_racing_an_invalidation_is_dropped_and_expired_entries_are_misses() {
        let near = NearCache::new(1 << 20);
        near.healthy.store(true, Ordering::Release);
        let later = unix_now_ms() + 60_000;
        let stamp = near.stamp("c:{t}:a");
        near.fill(stamp, "c:{t}:a", stored(later));
        assert!(near.get("c:{t}:a").is_some());

        let stamp = near.stamp("c:{t}:b");
        near.invalidate("c:{t}:b");
        near.fill(stamp, "c:{t}:b", stored(later));
        assert!(
            near.get("c:{t}:b").is_none(),
            "an older read must not be kept"
        );

        near.fill(near.stamp("c:{t}:c"), "c:{t}:c", stored(unix_now_ms() - 1));
        assert!(near.get("c:{t}:c").is_none(), "expired");

        near.on_push(PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        });
        assert!(!near.is_healthy());
        assert!(near.get("c:{t}:a").is_none(), "bypassed without tracking");
    }
}
