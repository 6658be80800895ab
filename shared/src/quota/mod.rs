//! How much each tenant stores (keys, and bytes = the caller's key bytes +
//! the value bytes as stored, less the expiry header), kept exact by the writes themselves, and the
//! quota check that refuses a write before anything is stored (API.md §9).
//!
//! # Accounting
//!
//! Every script that adds, replaces, re-times or removes a tenant's key
//! updates, in the same atomic step, the tenant's usage hash
//! (`q:{tenant}:usage`, fields `k` and `b`). Keys that expire on their own
//! are accounted ahead of time: a key written with an expiry is also added
//! to the expiry bucket of its absolute expiry time (10-second buckets in
//! `q:{tenant}:exp`, indexed by `q:{tenant}:expz`); once a bucket lies wholly
//! in the past, its keys are gone and it is subtracted from the usage
//! ("settled"), by the tenant's next write, delete, re-time or usage read; the usage
//! hash's field `d` is a lower bound of the index, so a script searches it
//! only once a bucket is due (see `lua/library.lua`). Replacing,
//! deleting or re-timing a key takes it out of its old bucket first
//! (`PEXPIRETIME`), so a key is subtracted exactly once. Keys Redis evicts
//! under `maxmemory` (and keys written before accounting existed) are what
//! no script sees: [`reconcile`] recounts every tenant from its keys, and
//! the worker runs it when Redis reports evictions. Every accounted change
//! bumps the tenant's write counter (`w`), so a recount that raced a write
//! is dropped instead of applied.
//!
//! All these keys carry the tenant's hash tag, so they share a slot with
//! the tenant's values.

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};

use crate::codec::EXPIRY_HEADER_LUA;
use crate::error::Error;
use crate::keys::TenantId;
use crate::limits::TenantLimits;
use crate::redis::RedisStore;

mod recount;

pub use recount::{COUNTED_MARKER, Reconciled, forget_namespaces, reconcile, request_recount};

/// Width of an expiry bucket in milliseconds.
pub const BUCKET_MS: i64 = 10_000;

/// The usage hash, the expiry buckets and their index of one tenant.
#[derive(Debug, Clone)]
pub struct UsageKeys {
    pub usage: String,
    pub buckets: String,
    pub index: String,
}

impl UsageKeys {
    pub fn of(tenant: &TenantId) -> Self {
        Self::named(tenant.as_str())
    }

    fn named(tenant: &str) -> Self {
        Self {
            usage: format!("q:{{{tenant}}}:usage"),
            buckets: format!("q:{{{tenant}}}:exp"),
            index: format!("q:{{{tenant}}}:expz"),
        }
    }

    /// The accounting of one namespace of a tenant: the same three keys
    /// under `q:{tenant}:n:{prefix}` (fixed endings, so no two prefixes
    /// share a key).
    pub fn of_namespace(tenant: &str, prefix: &str) -> Self {
        Self {
            usage: format!("q:{{{tenant}}}:n:{prefix}:usage"),
            buckets: format!("q:{{{tenant}}}:n:{prefix}:exp"),
            index: format!("q:{{{tenant}}}:n:{prefix}:expz"),
        }
    }
}

/// A tenant's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub keys: u64,
    pub bytes: u64,
}

/// Functions every accounting script starts with (after the codec's
/// [`EXPIRY_HEADER_LUA`]; sizes leave the header out). `plen` is the length
/// of the tenant's key prefix (`c:{tenant}:`), so `#key - plen` is the
/// caller's key length.
const LIBRARY: &str = include_str!("lua/library.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{EXPIRY_HEADER_LUA}{LIBRARY}{body}"))
}

/// KEYS: usage, buckets, index, then the keys to write, then the usage,
/// buckets and index of each namespace they fall in. ARGV: max keys, max
/// bytes (0: unlimited), `1` to write only absent keys, prefix length, a
/// lease token (`''`: none; with one key only), the number of namespaces,
/// each namespace's key limit and what happens over it (0: nothing, 1:
/// refuse, 2: trim later), then per key its envelope, TTL in milliseconds
/// (0: none) and namespace (its 1-based position, 0: none); each value is
/// stored behind the expiry header of the instant its `PXAT` names. Keys
/// are distinct. Writes all or nothing: returns `{'ok', written, j…}` with
/// the positions of the namespaces now over their limit that nobody is
/// trimming yet (their trim marker is set for a minute), `{limit, quota, usage}` when
/// the batch would go over a quota, or `{'lease'}` when the token is not the
/// key's current lease (it expired, or the key was written or deleted
/// since: a delete ends the key's lease, a write makes the key exist). The
/// lease key is `l:` and the rest of the cache key (same hash tag).
static WRITE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/write.lua")));

/// The SHA1 of the write script, for benchmarks that run it alone with
/// `EVALSHA` (Redis has it once the service wrote a value).
pub fn write_script_sha() -> &'static str {
    WRITE.get_hash()
}

/// KEYS: usage, buckets, index, then the keys, then the usage, buckets and
/// index of each namespace they fall in. ARGV: prefix length, the number of
/// namespaces, the event the removal is (`delete`, or `evicted` for a
/// trim), then per key its namespace (1-based, 0: none). Removes the keys
/// and ends their leases (see [`WRITE`]); returns how many existed.
static DELETE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/delete.lua")));

/// KEYS: usage, buckets, index, key, then the usage, buckets and index of
/// its namespace if it has one. ARGV: prefix length, TTL in milliseconds
/// (0: no expiry). Sets the key's expiry and its value's expiry header
/// together. Returns 1 when the key exists.
static RETIME: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/retime.lua")));

/// KEYS: usage, buckets, index, key, then the usage, buckets and index of
/// its namespace if it has one. ARGV: prefix length, the bytes expected at
/// the key, the bytes to store (with the expected bytes' expiry header).
/// Replaces the value, keeping its TTL, only if it is still the expected
/// one; returns 1 when replaced.
static COMPARE_AND_SET: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/compare_and_set.lua")));

/// KEYS: usage, buckets, index. Settles past buckets; returns `{keys, bytes}`.
static READ: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/read.lua")));

/// ARGV: cursor, pattern, page size, time budget in microseconds, most
/// keys examined. One step of a flush inside Redis: `SCAN` pages and the
/// `UNLINK` of what they found, each key taken out of its tenant's
/// accounting, until the cursor is done, the budget is spent or `most` keys
/// were examined, whichever comes first. The budget is what bounds the wait
/// of any other command queued behind the step, however sparse the
/// pattern's keys are in the keyspace (a sparse tenant costs many pages per
/// key found); `most` bounds it where `TIME` does not move inside a script.
/// Returns the next cursor, the keys removed and the keys examined. Runs
/// on one server (a cluster primary: its own keys, of many slots).
pub static SCAN_UNLINK: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/scan_unlink.lua")));

/// KEYS: keys of one slot (a page of a tenant's keys from the slot's index).
/// Removes them, each tenant value taken out of its tenant's accounting as
/// [`SCAN_UNLINK`] does; returns the keys removed.
pub static UNLINK_KEYS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/unlink_keys.lua")));

/// Length of `c:{tenant}:`.
fn prefix_len(tenant: &TenantId) -> usize {
    tenant.as_str().len() + 5
}

fn with_usage_keys(invocation: &mut redis::ScriptInvocation<'_>, tenant: &TenantId) {
    let keys = UsageKeys::of(tenant);
    invocation.key(keys.usage).key(keys.buckets).key(keys.index);
}

/// The namespace a key falls in, as its accounting needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InNamespace<'a> {
    pub prefix: &'a str,
    /// Keys the namespace may hold (0: unlimited).
    pub max_keys: u64,
    /// Whether a write beyond is refused (else it is trimmed afterwards).
    pub reject: bool,
}

impl<'a> InNamespace<'a> {
    /// How a key of `namespace` is accounted.
    pub fn of(namespace: &'a crate::namespaces::Namespace) -> Self {
        Self {
            prefix: &namespace.prefix,
            max_keys: namespace.max_keys,
            reject: namespace.over_limit == crate::namespaces::OverLimit::Reject,
        }
    }

    /// Only the prefix: for accounting that checks no limit.
    fn prefix(prefix: &'a str) -> Self {
        Self {
            prefix,
            max_keys: 0,
            reject: false,
        }
    }

    /// The script's mode: 0 no limit, 1 refuse, 2 trim later.
    fn mode(&self) -> u8 {
        match (self.max_keys, self.reject) {
            (0, _) => 0,
            (_, true) => 1,
            (_, false) => 2,
        }
    }
}

/// Where writes ask for a namespace to be trimmed back under its
/// `maxKeys`: a list of `tenant\nprefix` the worker drains (each namespace
/// once a minute at most, by its trim marker). Outside every tenant's slot,
/// written after the script.
pub const TRIM_REQUESTS: &str = "q:{_platform}:namespace-trims";

/// Most trim requests waiting: beyond, the oldest are dropped (their
/// namespaces ask again on their next write after the marker expires).
const TRIM_REQUESTS_KEPT: isize = 10_000;

/// One key to write: its Redis key, its envelope (tag and payload: the
/// script puts the expiry header before it), TTL in milliseconds (0: none)
/// and namespace.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    pub redis_key: &'a str,
    pub stored: &'a [u8],
    pub ttl_ms: u64,
    pub namespace: Option<InNamespace<'a>>,
}

/// The distinct namespaces of `items` (each once) and each item's 1-based
/// position among them (0: none), as the scripts take them.
fn namespace_slots<'a>(
    items: impl Iterator<Item = Option<InNamespace<'a>>>,
) -> (Vec<InNamespace<'a>>, Vec<usize>) {
    let mut distinct: Vec<InNamespace<'a>> = Vec::new();
    let slots = items
        .map(|ns| {
            ns.map_or(0, |ns| {
                match distinct.iter().position(|d| d.prefix == ns.prefix) {
                    Some(at) => at + 1,
                    None => {
                        distinct.push(ns);
                        distinct.len()
                    }
                }
            })
        })
        .collect();
    (distinct, slots)
}

fn with_namespace_keys(
    invocation: &mut redis::ScriptInvocation<'_>,
    tenant: &TenantId,
    prefix: &str,
) {
    let keys = UsageKeys::of_namespace(tenant.as_str(), prefix);
    invocation.key(keys.usage).key(keys.buckets).key(keys.index);
}

/// Writes `items` (distinct keys) into `tenant` all or nothing, or none
/// when the tenant's quota would be exceeded; `only_absent` writes only the
/// keys that do not exist. Returns how many keys were written.
///
/// Runs on `conn`: the caller times it.
///
/// # Errors
///
/// [`Error::QuotaExceeded`] (nothing written), Redis errors.
pub async fn write(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    limits: &TenantLimits,
    items: &[Write<'_>],
    only_absent: bool,
) -> Result<u64, Error> {
    write_leased(conn, tenant, limits, items, only_absent, "").await
}

/// [`write`] of one key with the lease token a read handed out (`""`: none).
///
/// # Errors
///
/// [`Error::Conflict`] when the token is no longer the key's lease (nothing
/// written), and those of [`write`].
pub async fn write_leased(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    limits: &TenantLimits,
    items: &[Write<'_>],
    only_absent: bool,
    lease: &str,
) -> Result<u64, Error> {
    let (namespaces, slots) = namespace_slots(items.iter().map(|item| item.namespace));
    let mut invocation = WRITE.prepare_invoke();
    with_usage_keys(&mut invocation, tenant);
    invocation
        .arg(limits.max_keys)
        .arg(limits.max_bytes)
        .arg(u8::from(only_absent))
        .arg(prefix_len(tenant))
        .arg(lease)
        .arg(namespaces.len());
    for ns in &namespaces {
        invocation.arg(ns.max_keys).arg(ns.mode());
    }
    for (item, slot) in items.iter().zip(&slots) {
        invocation
            .key(item.redis_key)
            .arg(item.stored)
            .arg(item.ttl_ms)
            .arg(*slot);
    }
    for ns in &namespaces {
        with_namespace_keys(&mut invocation, tenant, ns.prefix);
    }
    let answer: Vec<redis::Value> = invocation.invoke_async(conn).await?;
    match answer.first() {
        Some(redis::Value::BulkString(ok)) if ok == b"ok" => {
            let written: u64 = answer
                .get(1)
                .map(|n| redis::from_redis_value(n.clone()))
                .transpose()?
                .unwrap_or(0);
            let over: Vec<usize> = answer[2..]
                .iter()
                .map(|j| redis::from_redis_value(j.clone()))
                .collect::<Result<_, _>>()?;
            if !over.is_empty() {
                let mut pipe = redis::pipe();
                for j in over {
                    if let Some(ns) = j.checked_sub(1).and_then(|at| namespaces.get(at)) {
                        pipe.lpush(TRIM_REQUESTS, format!("{tenant}\n{}", ns.prefix))
                            .ignore();
                    }
                }
                pipe.ltrim(TRIM_REQUESTS, 0, TRIM_REQUESTS_KEPT - 1)
                    .ignore();
                let () = pipe.query_async(conn).await?;
            }
            Ok(written)
        }
        _ if answer.len() == 1 => Err(Error::Conflict(
            "the lease token is no longer current: the key was written or deleted since, or \
             the lease expired; nothing stored"
                .into(),
        )),
        _ => {
            let (limit, quota, usage): (String, u64, u64) =
                redis::from_redis_value(redis::Value::Array(answer))?;
            Err(Error::QuotaExceeded {
                limit: match limit.as_str() {
                    "maxKeys" => "maxKeys",
                    "namespace.maxKeys" => "namespace.maxKeys",
                    _ => "maxBytes",
                },
                quota,
                usage,
            })
        }
    }
}

/// Removes keys of `tenant` (each with its namespace); returns how many existed.
///
/// # Errors
///
/// Redis errors.
pub async fn delete(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    redis_keys: &[(&str, Option<&str>)],
) -> Result<u64, Error> {
    remove(conn, tenant, redis_keys, "delete").await
}

/// [`delete`] of keys the service evicts (a namespace's trim): the event
/// listeners see says `evicted`.
///
/// # Errors
///
/// Redis errors.
pub async fn evict(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    redis_keys: &[(&str, Option<&str>)],
) -> Result<u64, Error> {
    remove(conn, tenant, redis_keys, "evicted").await
}

async fn remove(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    redis_keys: &[(&str, Option<&str>)],
    event: &str,
) -> Result<u64, Error> {
    let (namespaces, slots) = namespace_slots(
        redis_keys
            .iter()
            .map(|(_, prefix)| prefix.map(InNamespace::prefix)),
    );
    let mut invocation = DELETE.prepare_invoke();
    with_usage_keys(&mut invocation, tenant);
    invocation
        .arg(prefix_len(tenant))
        .arg(namespaces.len())
        .arg(event);
    for ((key, _), slot) in redis_keys.iter().zip(&slots) {
        invocation.key(*key).arg(*slot);
    }
    for ns in &namespaces {
        with_namespace_keys(&mut invocation, tenant, ns.prefix);
    }
    Ok(invocation.invoke_async(conn).await?)
}

/// Gives an existing key of `tenant` (in namespace `prefix`, if any) a new
/// TTL in milliseconds (0: none); `false` when the key does not exist.
///
/// # Errors
///
/// Redis errors.
pub async fn retime(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    redis_key: &str,
    prefix: Option<&str>,
    ttl_ms: u64,
) -> Result<bool, Error> {
    let mut invocation = RETIME.prepare_invoke();
    with_usage_keys(&mut invocation, tenant);
    invocation
        .key(redis_key)
        .arg(prefix_len(tenant))
        .arg(ttl_ms);
    if let Some(prefix) = prefix {
        with_namespace_keys(&mut invocation, tenant, prefix);
    }
    let found: i64 = invocation.invoke_async(conn).await?;
    Ok(found == 1)
}

/// Replaces `expected` by `replacement` at `redis_key` (TTL kept) if it is
/// still there; `true` when replaced. `redis_key` must be a cache key
/// (`c:{tenant}:…`).
///
/// # Errors
///
/// [`Error::Internal`] for a key outside every tenant, Redis errors.
pub async fn compare_and_set(
    conn: &mut crate::redis::Conn,
    redis_key: &str,
    prefix: Option<&str>,
    expected: &[u8],
    replacement: &[u8],
) -> Result<bool, Error> {
    let tenant = tenant_of(redis_key)
        // The key itself stays out of the message: errors are logged.
        .ok_or_else(|| Error::internal("compare-and-set of a key outside every tenant"))?;
    let keys = UsageKeys::named(tenant);
    let mut invocation = COMPARE_AND_SET.prepare_invoke();
    invocation
        .key(keys.usage)
        .key(keys.buckets)
        .key(keys.index)
        .key(redis_key)
        .arg(tenant.len() + 5)
        .arg(expected)
        .arg(replacement);
    if let Some(prefix) = prefix {
        let ns = UsageKeys::of_namespace(tenant, prefix);
        invocation.key(ns.usage).key(ns.buckets).key(ns.index);
    }
    let replaced: i64 = invocation.invoke_async(conn).await?;
    Ok(replaced == 1)
}

/// The tenant of a cache key `c:{tenant}:…`.
fn tenant_of(redis_key: &str) -> Option<&str> {
    let rest = redis_key.strip_prefix("c:{")?;
    let end = rest.find("}:")?;
    Some(&rest[..end])
}

/// `tenant`'s usage now (past expiry buckets settled first).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn usage(redis_store: &RedisStore, tenant: &TenantId) -> Result<Usage, Error> {
    read_usage(redis_store, &UsageKeys::of(tenant)).await
}

/// The usage of `tenant`'s namespace `prefix` now: its keys and bytes.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn namespace_usage(
    redis_store: &RedisStore,
    tenant: &TenantId,
    prefix: &str,
) -> Result<Usage, Error> {
    read_usage(
        redis_store,
        &UsageKeys::of_namespace(tenant.as_str(), prefix),
    )
    .await
}

async fn read_usage(redis_store: &RedisStore, keys: &UsageKeys) -> Result<Usage, Error> {
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let mut invocation = READ.prepare_invoke();
            invocation
                .key(&keys.usage)
                .key(&keys.buckets)
                .key(&keys.index);
            let (keys, bytes): (i64, i64) = invocation.invoke_async(&mut conn).await?;
            Ok(Usage {
                keys: u64::try_from(keys).unwrap_or(0),
                bytes: u64::try_from(bytes).unwrap_or(0),
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_of_a_cache_key() {
        assert_eq!(tenant_of("c:{acme}:user:1"), Some("acme"));
        assert_eq!(tenant_of("c:{acme}:"), Some("acme"));
        assert_eq!(tenant_of("s:{_platform}:x"), None);
        assert_eq!(tenant_of("c:{acme"), None);
    }
}
