//! Tenant-scoped cache operations: one function per operation, called by the
//! internal plane and the public plane alike. Every operation validates its
//! input against API.md §2, touches only the caller's tenant namespace and runs
//! under the Redis command timeout.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use deadpool_redis::redis;

use crate::codec::{
    Codec, NEGATIVE_ENVELOPE, Stored, StoredExpiry, Value, split_expiry, unix_now_ms,
};
use crate::error::{Absence, Error};
use crate::keys::{TenantId, TenantKeyspace, validate_key};
use crate::leases::{self, LeaseRead, Waits};
use crate::limits::LimitBook;
use crate::namespaces::{NEGATIVE_DEFAULT_TTL, Namespace, NamespaceBook};
use crate::quota;
use crate::redis::RedisStore;
use crate::stats::live::LiveStats;
use crate::stats::op::Op;
use crate::ttl::{Expiry, from_redis_ttl};

/// Largest number of keys in one batch request.
pub const MAX_BATCH_KEYS: usize = 1000;

/// Limits and defaults of cache operations, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub default_ttl: Expiry,
    pub max_value_bytes: usize,
    pub compression_min_bytes: usize,
    /// Stored bytes one mget may answer.
    pub mget_max_bytes: usize,
    /// How long a lease a read hands out lasts (`LEASE_TTL_MS`).
    pub lease_ttl: std::time::Duration,
}

impl CacheLimits {
    pub fn from_settings(settings: &crate::config::CacheSettings) -> Self {
        Self {
            default_ttl: match settings.cache_default_ttl {
                0 => Expiry::Never,
                seconds => Expiry::Seconds(seconds),
            },
            // Bounded to 512 MiB by the setting's parser, so it fits any usize we run on.
            max_value_bytes: usize::try_from(settings.max_value_bytes).unwrap_or(usize::MAX),
            compression_min_bytes: settings.compression_min_bytes,
            mget_max_bytes: usize::try_from(settings.mget_max_bytes).unwrap_or(usize::MAX),
            lease_ttl: std::time::Duration::from_millis(settings.lease_ttl_ms),
        }
    }
}

/// A value as stored, with its remaining TTL (`-1`: no expiry). Answers
/// copy the stored payload as it is (see [`Stored`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub value: Stored,
    pub ttl: i64,
    /// Whether the caller is asked to recompute the value before it expires
    /// (refresh-ahead, [`crate::refresh`]).
    pub refresh: bool,
}

/// Where a write lands: its namespace, how it is encoded, when it expires.
#[derive(Debug, Clone)]
struct Placement {
    namespace: Option<Arc<Namespace>>,
    codec: Codec,
    /// The namespace is encrypted: the envelope is sealed.
    sealed: bool,
    /// Milliseconds, 0: none.
    ttl_ms: u64,
}

/// How a single write is made, beyond its key and value.
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    /// The caller's TTL; absent: its namespace's (with jitter), else the default.
    pub ttl: Option<Expiry>,
    /// Without `ttl`: the namespace's TTL exactly, without jitter.
    pub exact_ttl: bool,
    /// The lease token a read handed out for this key: the write is refused
    /// (`409`) unless it is still the key's lease.
    pub lease: Option<String>,
    /// How long the value took to compute, in milliseconds: reads ask for a
    /// refresh earlier the longer it took ([`crate::refresh`]).
    pub compute_ms: Option<u32>,
}

/// One item of a batch write; its key is validated by [`Cache::mset`].
#[derive(Debug, Clone)]
pub struct SetItem {
    pub key: String,
    pub value: Value,
    pub ttl: Option<Expiry>,
}

/// The cache data plane.
#[derive(Debug, Clone)]
pub struct Cache {
    redis: RedisStore,
    codec: Codec,
    limits: CacheLimits,
    stats: Arc<LiveStats>,
    tenants: Arc<LimitBook>,
    namespaces: Arc<NamespaceBook>,
    waits: Arc<Waits>,
    hints: Arc<crate::refresh::PreloadHints>,
    near: Option<Arc<crate::near_cache::NearCache>>,
    keys: Arc<crate::sealing::Keyring>,
    /// `ENCRYPT_PLATFORM_DATA`: sessions and permission results are sealed.
    seal_platform: bool,
}

impl Cache {
    pub fn new(
        redis: RedisStore,
        limits: CacheLimits,
        stats: Arc<LiveStats>,
        tenants: Arc<LimitBook>,
    ) -> Self {
        let namespaces = NamespaceBook::new(Namespace::defaults(
            u64::try_from(limits.compression_min_bytes).unwrap_or(u64::MAX),
        ));
        Self {
            redis,
            codec: Codec::new(limits.compression_min_bytes),
            limits,
            stats,
            tenants,
            namespaces: Arc::new(namespaces),
            waits: Arc::default(),
            hints: Arc::default(),
            near: None,
            keys: Arc::default(),
            seal_platform: false,
        }
    }

    /// This cache sealing encrypted namespaces' values (and, with
    /// `platform`, sessions and permission results) under `keys`.
    #[must_use]
    pub fn with_encryption(mut self, keys: crate::sealing::Keyring, platform: bool) -> Self {
        self.keys = Arc::new(keys);
        self.seal_platform = platform;
        self
    }

    /// Whether sessions and permission results are sealed (`ENCRYPT_PLATFORM_DATA`).
    pub fn seals_platform(&self) -> bool {
        self.seal_platform
    }

    /// The data keys, shared (for the metric of their seal counts).
    pub fn shared_keys(&self) -> Arc<crate::sealing::Keyring> {
        Arc::clone(&self.keys)
    }

    /// The data keys (empty: encrypted namespaces cannot be used here).
    pub fn keys(&self) -> &crate::sealing::Keyring {
        &self.keys
    }

    /// A session's or permission result's envelope, sealed when
    /// `ENCRYPT_PLATFORM_DATA` is on.
    ///
    /// # Errors
    ///
    /// [`Error::Sealing`] (cannot happen: the setting needs a key).
    pub(crate) fn encode_platform(&self, value: &Value) -> Result<Vec<u8>, Error> {
        self.sealed_if(self.seal_platform, self.codec.encode(value))
    }

    /// `envelope` sealed under the current key when `seal`, else as it is.
    fn sealed_if(&self, seal: bool, envelope: Vec<u8>) -> Result<Vec<u8>, Error> {
        if seal {
            self.keys.seal(&envelope)
        } else {
            Ok(envelope)
        }
    }

    /// A session's or permission result's value from its stored bytes
    /// (expiry header or not), opened first when sealed, whatever the
    /// setting is now.
    ///
    /// # Errors
    ///
    /// [`Error::Sealing`], or [`Error::Internal`] for bytes not ours.
    pub(crate) fn decode_platform(&self, stored: &[u8]) -> Result<Value, Error> {
        let envelope = split_expiry(stored).1;
        if crate::sealing::is_sealed(envelope) {
            self.codec.decode(&self.keys.open(envelope)?)
        } else {
            self.codec.decode(envelope)
        }
    }

    /// This cache with a near cache of `max_bytes` in front of Redis for
    /// namespaces that ask for one (`0`: none).
    #[must_use]
    pub fn with_near_cache(mut self, max_bytes: u64) -> Self {
        self.near = (max_bytes > 0).then(|| Arc::new(crate::near_cache::NearCache::new(max_bytes)));
        self
    }

    /// The near cache, when there is one (its tracker must run for it to serve).
    pub fn near_cache(&self) -> Option<&Arc<crate::near_cache::NearCache>> {
        self.near.as_ref()
    }

    /// The namespaces, shared (for tasks that follow their changes).
    pub fn namespace_book(&self) -> Arc<NamespaceBook> {
        Arc::clone(&self.namespaces)
    }

    /// The near cache to use for `tenant`'s `key`: when there is one, it is
    /// tracking, and the key's namespace asks for it.
    fn near_for(&self, tenant: &TenantId, key: &str) -> Option<&crate::near_cache::NearCache> {
        self.near
            .as_deref()
            .filter(|near| near.is_healthy())
            .filter(|_| self.namespaces.is_near_cached(tenant.as_str(), key))
    }

    /// Drops `redis_key` (of `namespace`) from the near cache after this
    /// instance changed it (the invalidation push follows; this instance
    /// must not wait for it). Keys of namespaces without a near cache are
    /// never in it: nothing to do.
    fn changed(&self, redis_key: &str, namespace: Option<&Namespace>) {
        if let Some(near) = &self.near
            && namespace.is_some_and(|ns| ns.near_cache)
        {
            near.invalidate(redis_key);
        }
    }

    /// Hot keys whose reads are asked to refresh earlier.
    pub fn preload_hints(&self) -> &crate::refresh::PreloadHints {
        &self.hints
    }

    /// Every tenant's namespaces, as writes apply them.
    pub fn namespaces(&self) -> &NamespaceBook {
        &self.namespaces
    }

    /// The codec and expiry (ms, 0: none) of a write of `key` in `tenant`
    /// that asked for `ttl` (see [`Namespace::expiry_ms`]).
    fn placement(
        &self,
        tenant: &TenantId,
        key: &str,
        ttl: Option<Expiry>,
        exact: bool,
    ) -> Placement {
        let namespace = self.namespaces.resolve(tenant.as_str(), key);
        let codec = match namespace.as_deref() {
            None => self.codec,
            Some(ns) => Codec::new(ns.compress_above().unwrap_or(usize::MAX)),
        };
        let ttl_ms = Namespace::expiry_ms(
            namespace.as_deref(),
            key,
            ttl,
            exact,
            self.limits.default_ttl,
        );
        Placement {
            sealed: namespace.as_deref().is_some_and(|ns| ns.encrypted),
            namespace,
            codec,
            ttl_ms,
        }
    }

    /// `value`'s envelope as `placed` stores it: compressed when that pays,
    /// then sealed in an encrypted namespace.
    fn encode(&self, placed: &Placement, value: &Value) -> Result<Vec<u8>, Error> {
        self.sealed_if(placed.sealed, placed.codec.encode(value))
    }

    /// Every tenant's limits, as writes check them.
    pub fn tenant_limits(&self) -> &LimitBook {
        &self.tenants
    }

    /// `tenant`'s usage against its quota (keys and bytes).
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`].
    pub async fn usage(&self, tenant: &TenantId) -> Result<quota::Usage, Error> {
        quota::usage(&self.redis, tenant).await
    }

    pub fn redis(&self) -> &RedisStore {
        &self.redis
    }

    /// Runs one operation's Redis work on a connection under the command
    /// deadline (the scaffold every operation shares; each then records its
    /// figures with `stats`).
    pub(crate) async fn on_redis<T>(
        &self,
        work: impl AsyncFnOnce(&mut crate::redis::Conn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.redis
            .timed(async {
                let mut conn = self.redis.conn().await?;
                work(&mut conn).await
            })
            .await
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    pub fn stats(&self) -> &LiveStats {
        &self.stats
    }

    /// Sessions and permission entries count under the platform namespace.
    pub(crate) fn platform_stats(&self) -> Arc<crate::stats::live::TenantStats> {
        self.stats.tenant(&TenantId::platform())
    }

    /// # Errors
    ///
    /// [`Error::Validation`] for a bad key, [`Error::KeyNotFound`] on a miss,
    /// [`Error::CacheUnavailable`] when Redis does not answer in time.
    pub async fn get(&self, tenant: &TenantId, key: &str) -> Result<Entry, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        validate_key(key, "key")?;
        let redis_key = TenantKeyspace::key_of(tenant, key);
        let near = self.near_for(tenant, key);
        if let Some(bytes) = near.and_then(|near| near.get(&redis_key)) {
            self.stats
                .observe(Op::Get, &tstats, started, Some(key), Ok(()))?;
            return self.found(&tstats, tenant, key, bytes, None);
        }
        let stamp = near.map(|near| near.stamp(&redis_key));
        let result = self
            .on_redis(async |conn| {
                let stored: Option<Vec<u8>> =
                    redis::cmd("GET").arg(&redis_key).query_async(conn).await?;
                // One command: the value's header carries its expiry, except
                // for values written before the header (see the codec).
                let legacy_ttl = match &stored {
                    Some(bytes) if split_expiry(bytes).0 == StoredExpiry::Unknown => {
                        let ttl: i64 = redis::cmd("TTL").arg(&redis_key).query_async(conn).await?;
                        Some(from_redis_ttl(ttl).unwrap_or(-1))
                    }
                    _ => None,
                };
                Ok((stored, legacy_ttl))
            })
            .await;
        let (stored, legacy_ttl) =
            self.stats
                .observe(Op::Get, &tstats, started, Some(key), result)?;
        let Some(stored) = stored else {
            self.count_read(&tstats, tenant, Op::Get, key, false);
            return Err(Error::missing(key));
        };
        let stored = bytes::Bytes::from(stored);
        if let (Some(near), Some(stamp)) = (near, stamp) {
            near.fill(stamp, &redis_key, stored.clone());
        }
        self.found(&tstats, tenant, key, stored, legacy_ttl)
    }

    /// Counts a read that found (`hit`) or missed `key`, for its tenant and
    /// its namespace.
    fn count_read(
        &self,
        tstats: &crate::stats::live::TenantStats,
        tenant: &TenantId,
        op: Op,
        key: &str,
        hit: bool,
    ) {
        self.stats.record_lookup(tstats, op, key, hit);
        if self.stats.is_enabled() {
            self.namespaces.with_prefix(tenant.as_str(), key, |prefix| {
                self.stats.record_namespace_lookup(tstats, prefix, hit);
            });
        }
    }

    /// A read's answer from the bytes it found (`legacy_ttl`: Redis's TTL of
    /// a value without expiry header).
    fn found(
        &self,
        tstats: &crate::stats::live::TenantStats,
        tenant: &TenantId,
        key: &str,
        stored: impl Into<bytes::Bytes>,
        legacy_ttl: Option<i64>,
    ) -> Result<Entry, Error> {
        let value = Stored::new(stored)?.open(&self.keys)?;
        if value.is_negative() {
            self.stats.record_negative(tstats, Op::Get, key);
            return Err(Error::KeyNotFound {
                key: key.into(),
                absence: Absence::Negative,
            });
        }
        self.count_read(tstats, tenant, Op::Get, key, true);
        let now = unix_now_ms();
        let ttl = legacy_ttl
            .or_else(|| value.expiry().ttl_at(now))
            .unwrap_or(-1);
        let refresh = match value.expiry() {
            StoredExpiry::At(at) => crate::refresh::draw(
                at.saturating_sub(now),
                value.compute_ms(),
                self.hints.contains(tenant.as_str(), key),
            ),
            _ => false,
        };
        Ok(Entry {
            value,
            ttl,
            refresh,
        })
    }

    /// A read with stampede protection (API.md §10): on a miss the first
    /// caller gets the key's lease ([`Absence::LeaseGranted`]), the others
    /// wait up to `wait` for the value it sets ([`Absence::Leased`] if it
    /// does not come in time).
    ///
    /// # Errors
    ///
    /// As [`Cache::get`], with the lease outcomes above.
    pub async fn get_leased(
        &self,
        tenant: &TenantId,
        key: &str,
        wait: std::time::Duration,
    ) -> Result<Entry, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        validate_key(key, "key")?;
        let keyspace = TenantKeyspace::new(tenant);
        let redis_key = keyspace.key(key);
        let lease_key = keyspace.lease_key(key);
        let lease_ttl = self.limits.lease_ttl;
        let result = self
            .on_redis(async |conn| leases::read(conn, &redis_key, &lease_key, lease_ttl).await)
            .await;
        let read = self
            .stats
            .observe(Op::Get, &tstats, started, Some(key), result)?;
        let lease = match read {
            LeaseRead::Found(bytes) => return self.found(&tstats, tenant, key, bytes, None),
            LeaseRead::Granted(token) => Absence::LeaseGranted(token),
            LeaseRead::Held => {
                let redis = self.redis.clone();
                let polled = redis_key.clone();
                let written = self
                    .waits
                    .wait_for(&redis_key, wait.min(leases::MAX_WAIT), move || {
                        let (redis, key) = (redis.clone(), polled.clone());
                        async move {
                            redis
                                .timed(async {
                                    let mut conn = redis.conn().await?;
                                    let bytes: Option<Vec<u8>> =
                                        redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                                    Ok(bytes)
                                })
                                .await
                        }
                    })
                    .await?;
                match written {
                    Some(bytes) => {
                        return self.found(&tstats, tenant, key, bytes, None);
                    }
                    None => Absence::Leased,
                }
            }
        };
        self.count_read(&tstats, tenant, Op::Get, key, false);
        Err(Error::KeyNotFound {
            key: key.into(),
            absence: lease,
        })
    }

    /// Stores `value` under `key`; returns the TTL a read would now report.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`], [`Error::PayloadTooLarge`] (nothing stored),
    /// [`Error::CacheUnavailable`].
    pub async fn set(
        &self,
        tenant: &TenantId,
        key: &str,
        value: &Value,
        options: &SetOptions,
    ) -> Result<i64, Error> {
        validate_key(key, "key")?;
        self.check_size(value, "value")?;
        let placed = self.placement(tenant, key, options.ttl, options.exact_ttl);
        let mut encoded = self.encode(&placed, value)?;
        if let Some(ms) = options.compute_ms {
            if ms > crate::refresh::MAX_COMPUTE_MS {
                return Err(Error::validation(
                    "computeMs",
                    format!(
                        "computeMs must be from 0 to {}",
                        crate::refresh::MAX_COMPUTE_MS
                    ),
                ));
            }
            encoded.splice(0..0, crate::codec::compute_block(ms));
        }
        let lease = options.lease.as_deref();
        self.write_one(tenant, key, &encoded, &placed, lease).await
    }

    /// Stores a negative entry: "`key` does not exist" for `ttl` (default
    /// [`NEGATIVE_DEFAULT_TTL`] s). Reads of it answer [`Absence::Negative`].
    ///
    /// # Errors
    ///
    /// As [`Cache::set`].
    pub async fn set_negative(
        &self,
        tenant: &TenantId,
        key: &str,
        ttl: Option<Expiry>,
        lease: Option<&str>,
    ) -> Result<i64, Error> {
        validate_key(key, "key")?;
        let ttl = ttl.unwrap_or(Expiry::Seconds(NEGATIVE_DEFAULT_TTL));
        let placed = Placement {
            ttl_ms: ttl_ms(ttl),
            ..self.placement(tenant, key, Some(ttl), true)
        };
        self.write_one(tenant, key, NEGATIVE_ENVELOPE, &placed, lease)
            .await
    }

    /// Writes one encoded value; returns the TTL a read would now report.
    async fn write_one(
        &self,
        tenant: &TenantId,
        key: &str,
        encoded: &[u8],
        placed: &Placement,
        lease: Option<&str>,
    ) -> Result<i64, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        let redis_key = TenantKeyspace::key_of(tenant, key);
        let limits = self.tenants.of(tenant.as_str());
        let item = quota::Write {
            redis_key: &redis_key,
            stored: encoded,
            ttl_ms: placed.ttl_ms,
            namespace: placed.namespace.as_deref().map(quota::InNamespace::of),
        };
        let result = self
            .on_redis(async |conn| {
                let items = std::slice::from_ref(&item);
                quota::write_leased(conn, tenant, &limits, items, false, lease.unwrap_or(""))
                    .await
                    .map(drop)
            })
            .await;
        self.stats.observe_write(
            Op::Set,
            &tstats,
            started,
            Some(key),
            Some(encoded.len()),
            result,
        )?;
        self.changed(&redis_key, placed.namespace.as_deref());
        if lease.is_some() {
            self.waits.written(&redis_key);
        }
        Ok(reported_ttl(placed.ttl_ms))
    }

    /// # Errors
    ///
    /// [`Error::Validation`], [`Error::CacheUnavailable`].
    pub async fn delete(&self, tenant: &TenantId, key: &str) -> Result<bool, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        validate_key(key, "key")?;
        let redis_key = TenantKeyspace::key_of(tenant, key);
        let ns = self.namespaces.resolve(tenant.as_str(), key);
        let result = self
            .on_redis(async |conn| {
                let keys = [(redis_key.as_str(), prefix_of(ns.as_deref()))];
                Ok(quota::delete(conn, tenant, &keys).await? > 0)
            })
            .await;
        let removed =
            self.stats
                .observe_write(Op::Delete, &tstats, started, Some(key), None, result)?;
        self.changed(&redis_key, ns.as_deref());
        Ok(removed)
    }

    /// Values of `keys` in request order, `None` for each miss.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming the first bad key or an oversized batch,
    /// [`Error::CacheUnavailable`].
    pub async fn mget(
        &self,
        tenant: &TenantId,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        check_batch(keys.len(), "keys")?;
        for (i, key) in keys.iter().enumerate() {
            validate_key(key, &format!("keys[{i}]"))?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ns = TenantKeyspace::new(tenant);
        let redis_keys: Vec<String> = keys.iter().map(|k| ns.key(k)).collect();
        let limit = self.limits.mget_max_bytes;
        let result = self
            .on_redis(async |conn| {
                let mut invocation = crate::scripts::BOUNDED_MGET.prepare_invoke();
                invocation.arg(limit);
                for key in &redis_keys {
                    invocation.key(key);
                }
                let (total, stored, ttls): (u64, Vec<Option<Vec<u8>>>, Vec<i64>) =
                    invocation.invoke_async(conn).await?;
                if stored.len() != redis_keys.len() {
                    return Err(Error::PayloadTooLarge {
                        message: format!(
                            "the values of these keys total {total} bytes, more than the \
                             {limit} one mget may answer (MGET_MAX_BYTES): ask for fewer keys"
                        ),
                        limit,
                    });
                }
                Ok((stored, ttls))
            })
            .await;
        let (stored, ttls) = self
            .stats
            .observe(Op::Mget, &tstats, started, None, result)?;
        let now = unix_now_ms();
        stored
            .into_iter()
            .zip(ttls)
            .zip(keys)
            .map(|((stored, ttl), key)| {
                let Some(bytes) = stored else {
                    self.count_read(&tstats, tenant, Op::Mget, key, false);
                    return Ok(None);
                };
                let value = Stored::new(bytes)?.open(&self.keys)?;
                // A negative entry answers as a miss (`found: false`).
                if value.is_negative() {
                    self.stats.record_negative(&tstats, Op::Mget, key);
                    return Ok(None);
                }
                self.count_read(&tstats, tenant, Op::Mget, key, true);
                let ttl = value
                    .expiry()
                    .ttl_at(now)
                    .unwrap_or_else(|| from_redis_ttl(ttl).unwrap_or(-1));
                Ok(Some(Entry {
                    value,
                    ttl,
                    refresh: false,
                }))
            })
            .collect()
    }

    /// Stores every item or none (one `MULTI`/`EXEC` inside the tenant's hash slot).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] or [`Error::PayloadTooLarge`] naming the first bad
    /// item (nothing stored), [`Error::CacheUnavailable`].
    pub async fn mset(&self, tenant: &TenantId, items: &[SetItem]) -> Result<usize, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        check_batch(items.len(), "items")?;
        for (i, item) in items.iter().enumerate() {
            validate_key(&item.key, &format!("items[{i}].key"))?;
            self.check_size(&item.value, &format!("items[{i}].value"))?;
        }
        if items.is_empty() {
            return Ok(0);
        }
        let ns = TenantKeyspace::new(tenant);
        // A key given twice is written once, with its last value (as
        // successive SETs would leave it).
        let mut last = std::collections::HashMap::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            last.insert(item.key.as_str(), i);
        }
        let encoded: Vec<(String, Vec<u8>, Placement)> = items
            .iter()
            .map(|item| {
                let placed = self.placement(tenant, &item.key, item.ttl, false);
                let stored = self.encode(&placed, &item.value)?;
                Ok((ns.key(&item.key), stored, placed))
            })
            .collect::<Result<_, Error>>()?;
        // Sizes only for the operation log, when there is one.
        let sizes: Vec<usize> = if self.stats.logs_writes() {
            encoded.iter().map(|(_, stored, _)| stored.len()).collect()
        } else {
            Vec::new()
        };
        let limits = self.tenants.of(tenant.as_str());
        let result = self
            .on_redis(async |conn| {
                let batch: Vec<quota::Write<'_>> = encoded
                    .iter()
                    .zip(items)
                    .enumerate()
                    .filter(|(i, (_, item))| last.get(item.key.as_str()) == Some(i))
                    .map(|(_, ((redis_key, stored, placed), _))| quota::Write {
                        redis_key,
                        stored,
                        ttl_ms: placed.ttl_ms,
                        namespace: placed.namespace.as_deref().map(quota::InNamespace::of),
                    })
                    .collect();
                quota::write(conn, tenant, &limits, &batch, false)
                    .await
                    .map(drop)
            })
            .await;
        let written = items
            .iter()
            .zip(sizes)
            .map(|(item, size)| (Some(item.key.as_str()), Some(size)));
        self.stats
            .observe_writes(Op::Mset, &tstats, started, None, written, result)?;
        for (redis_key, _, placed) in &encoded {
            self.changed(redis_key, placed.namespace.as_deref());
        }
        Ok(items.len())
    }

    /// Whether each key exists, in request order.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`], [`Error::CacheUnavailable`].
    pub async fn exists(&self, tenant: &TenantId, keys: &[String]) -> Result<Vec<bool>, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        check_batch(keys.len(), "keys")?;
        for (i, key) in keys.iter().enumerate() {
            validate_key(key, &format!("keys[{i}]"))?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ns = TenantKeyspace::new(tenant);
        let unique: Vec<&String> = {
            let mut seen = HashSet::new();
            keys.iter().filter(|k| seen.insert(k.as_str())).collect()
        };
        let result = self
            .on_redis(async |conn| {
                // The header and tag only: a negative entry is no value.
                let mut pipe = redis::pipe();
                for key in &unique {
                    pipe.getrange(ns.key(key), 0, 9);
                }
                let heads: Vec<Vec<u8>> = pipe.query_async(conn).await?;
                Ok(heads
                    .iter()
                    .map(|head| {
                        let envelope = split_expiry(head).1;
                        !head.is_empty() && envelope != NEGATIVE_ENVELOPE
                    })
                    .collect::<Vec<bool>>())
            })
            .await;
        let found = self
            .stats
            .observe(Op::Exists, &tstats, started, None, result)?;
        let by_key: std::collections::HashMap<&str, bool> =
            unique.iter().map(|k| k.as_str()).zip(found).collect();
        Ok(keys
            .iter()
            .map(|k| by_key.get(k.as_str()).copied().unwrap_or(false))
            .collect())
    }

    /// Sets or removes (`Expiry::Never`) the expiry of an existing key; `false`
    /// when the key does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`], [`Error::CacheUnavailable`].
    pub async fn expire(&self, tenant: &TenantId, key: &str, ttl: Expiry) -> Result<bool, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        validate_key(key, "key")?;
        let redis_key = TenantKeyspace::key_of(tenant, key);
        let ns = self.namespaces.resolve(tenant.as_str(), key);
        let prefix = prefix_of(ns.as_deref());
        let result = self
            .on_redis(async |conn| {
                // "No expiry" on a key without one is still an update: the
                // caller got what it asked for; only a missing key is `false`.
                quota::retime(conn, tenant, &redis_key, prefix, ttl_ms(ttl)).await
            })
            .await;
        let updated =
            self.stats
                .observe_write(Op::Expire, &tstats, started, Some(key), None, result)?;
        self.changed(&redis_key, ns.as_deref());
        Ok(updated)
    }

    /// Remaining TTL of a key, `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`], [`Error::CacheUnavailable`].
    pub async fn ttl(&self, tenant: &TenantId, key: &str) -> Result<Option<i64>, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        validate_key(key, "key")?;
        let redis_key = TenantKeyspace::key_of(tenant, key);
        let result = self
            .on_redis(async |conn| {
                let ttl: i64 = redis::cmd("TTL").arg(&redis_key).query_async(conn).await?;
                Ok(from_redis_ttl(ttl))
            })
            .await;
        self.stats
            .observe(Op::Ttl, &tstats, started, Some(key), result)
    }

    /// Marks a key as used (and resets its TTL when one is given); returns its
    /// TTL afterwards, `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`], [`Error::CacheUnavailable`].
    pub async fn touch(
        &self,
        tenant: &TenantId,
        key: &str,
        ttl: Option<Expiry>,
    ) -> Result<Option<i64>, Error> {
        let started = Instant::now();
        let tstats = self.stats.tenant(tenant);
        validate_key(key, "key")?;
        let redis_key = TenantKeyspace::key_of(tenant, key);
        // Only a touch that re-times writes, and needs the namespace.
        let ns = ttl.and_then(|_| self.namespaces.resolve(tenant.as_str(), key));
        let result = self
            .on_redis(async |conn| {
                if let Some(ttl) = ttl {
                    let prefix = prefix_of(ns.as_deref());
                    quota::retime(conn, tenant, &redis_key, prefix, ttl_ms(ttl)).await?;
                }
                let (_, remaining): (i64, i64) = redis::pipe()
                    .cmd("TOUCH")
                    .arg(&redis_key)
                    .ttl(&redis_key)
                    .query_async(conn)
                    .await?;
                Ok(from_redis_ttl(remaining))
            })
            .await;
        // A touch that sets a TTL is a write; one that only reads is not.
        let written = ttl.map(|_| (Some(key), None));
        let remaining =
            self.stats
                .observe_writes(Op::Touch, &tstats, started, Some(key), written, result)?;
        self.changed(&redis_key, ns.as_deref());
        Ok(remaining)
    }

    /// Re-encodes one stored value compressed when that makes it smaller,
    /// keeping its TTL; a value changed meanwhile is left alone.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`], [`Error::Validation`], [`Error::CacheUnavailable`].
    pub async fn compress(&self, tenant: &TenantId, key: &str) -> Result<Compressed, Error> {
        validate_key(key, "key")?;
        let redis_key = TenantKeyspace::key_of(tenant, key);
        let stored: Option<Vec<u8>> = self
            .on_redis(async |conn| {
                let stored: Option<Vec<u8>> =
                    redis::cmd("GET").arg(&redis_key).query_async(conn).await?;
                Ok(stored)
            })
            .await?;
        let stored = stored.ok_or_else(|| Error::missing(key))?;
        let ns = self.namespaces.resolve(tenant.as_str(), key);
        compress_stored(
            &self.redis,
            self.codec,
            (&redis_key, prefix_of(ns.as_deref())),
            &stored,
            self.redis.command_timeout(),
        )
        .await
    }

    /// Refuses a value over `MAX_VALUE_BYTES` before anything is stored.
    ///
    /// # Errors
    ///
    /// [`Error::PayloadTooLarge`] naming `field`.
    pub fn check_size(&self, value: &Value, field: &str) -> Result<(), Error> {
        if value.len() > self.limits.max_value_bytes {
            return Err(Error::PayloadTooLarge {
                message: format!(
                    "{field} is {} bytes, more than the limit of {} bytes",
                    value.len(),
                    self.limits.max_value_bytes
                ),
                limit: self.limits.max_value_bytes,
            });
        }
        Ok(())
    }
}

/// The outcome of compressing one stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compressed {
    /// Stored bytes before and after.
    pub bytes_before: usize,
    pub bytes_after: usize,
    /// Whether the value is stored compressed now.
    pub compressed: bool,
}

/// Compresses the value `stored` at `redis_key` (of namespace `prefix`) if that makes it smaller,
/// replacing it (TTL kept) only if nobody changed it meanwhile.
///
/// # Errors
///
/// [`Error::Internal`] for bytes not written by this service,
/// [`Error::CacheUnavailable`].
pub async fn compress_stored(
    redis_store: &RedisStore,
    codec: Codec,
    (redis_key, prefix): (&str, Option<&str>),
    stored: &[u8],
    deadline: std::time::Duration,
) -> Result<Compressed, Error> {
    let envelope = split_expiry(stored).1;
    let unchanged = Compressed {
        bytes_before: envelope.len(),
        bytes_after: envelope.len(),
        compressed: crate::codec::is_compressed(envelope),
    };
    // A sealed value was compressed (when that paid) before it was sealed.
    if unchanged.compressed || envelope == NEGATIVE_ENVELOPE || crate::sealing::is_sealed(envelope)
    {
        return Ok(unchanged);
    }
    let packed = codec.encode_compressed(&codec.decode(envelope)?);
    if !crate::codec::is_compressed(&packed) || packed.len() >= envelope.len() {
        return Ok(unchanged);
    }
    if swap_envelope(redis_store, (redis_key, prefix), stored, &packed, deadline).await? {
        Ok(Compressed {
            bytes_before: envelope.len(),
            bytes_after: packed.len(),
            compressed: true,
        })
    } else {
        Ok(unchanged)
    }
}

/// Replaces the envelope of the tenant value `stored` at `redis_key` (of
/// namespace `prefix`) with `envelope`, only if the key still holds
/// `stored`: headers and TTL kept, the size change accounted. Returns
/// whether it was replaced (a newer write stands otherwise).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub(crate) async fn swap_envelope(
    redis_store: &RedisStore,
    (redis_key, prefix): (&str, Option<&str>),
    stored: &[u8],
    envelope: &[u8],
    deadline: std::time::Duration,
) -> Result<bool, Error> {
    let replacement = crate::codec::with_envelope(stored, envelope);
    redis_store
        .timed_for(deadline, async {
            let mut conn = redis_store.conn().await?;
            quota::compare_and_set(&mut conn, redis_key, prefix, stored, &replacement).await
        })
        .await
}

/// The prefix of a key's namespace, as the accounting scripts name it.
fn prefix_of(namespace: Option<&Namespace>) -> Option<&str> {
    namespace.map(|ns| ns.prefix.as_str())
}

/// An expiry as the accounting scripts take it: milliseconds, 0 for none.
fn ttl_ms(expiry: Expiry) -> u64 {
    expiry.seconds().map_or(0, |s| u64::from(s) * 1000)
}

/// The TTL a read reports right after a write of `ttl_ms` (0: none, `-1`),
/// rounded as [`StoredExpiry::ttl_at`] rounds.
fn reported_ttl(ttl_ms: u64) -> i64 {
    if ttl_ms == 0 {
        -1
    } else {
        i64::try_from(ttl_ms.saturating_add(500) / 1000).unwrap_or(i64::MAX)
    }
}

fn check_batch(len: usize, field: &'static str) -> Result<(), Error> {
    if len > MAX_BATCH_KEYS {
        return Err(Error::validation(
            field,
            format!("{field} must hold at most {MAX_BATCH_KEYS} entries, not {len}"),
        ));
    }
    Ok(())
}
