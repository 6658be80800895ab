//! Recounting usage from the keys themselves: what no script saw (keys
//! Redis evicted, keys written before accounting or before their namespace
//! existed, flushes per namespace). The worker runs [`reconcile`] when
//! Redis reports evictions or when asked ([`request_recount`]).

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};

use super::{BUCKET_MS, UsageKeys, tenant_of};
use crate::codec::EXPIRY_HEADER_BYTES;
use crate::error::Error;
use crate::keys::TenantId;
use crate::redis::{RedisStore, ScanPages};

/// KEYS: usage, buckets, index. ARGV: the write counter seen before the
/// recount (`''`: none), keys, bytes, then per bucket its number, keys and
/// bytes. Replaces the accounting with the recount unless a write came in
/// meanwhile; returns 1 when applied.
static APPLY_RECOUNT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/apply_recount.lua")));

/// Set once usage (tenants' and namespaces') has been counted from the
/// keys on this Redis; removed to ask the worker for a recount (after a
/// namespace change or a flush, which no script accounts per namespace).
pub const COUNTED_MARKER: &str = "q:{_platform}:counted:namespaces";

/// Asks the worker for a recount of every account from the keys (see
/// [`COUNTED_MARKER`]).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn request_recount(redis_store: &RedisStore) -> Result<(), Error> {
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let () = redis::cmd("DEL")
                .arg(COUNTED_MARKER)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
}

/// Empties the accounts of `tenant`'s namespaces `prefixes` (after a flush
/// of all its keys, which the flush's script accounts per tenant only).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn forget_namespaces(
    redis_store: &RedisStore,
    tenant: &TenantId,
    prefixes: &[String],
) -> Result<(), Error> {
    if prefixes.is_empty() {
        return Ok(());
    }
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let mut del = redis::cmd("DEL");
            for prefix in prefixes {
                let keys = UsageKeys::of_namespace(tenant.as_str(), prefix);
                del.arg(keys.usage).arg(keys.buckets).arg(keys.index);
            }
            let () = del.query_async(&mut conn).await?;
            Ok(())
        })
        .await
}

/// What one [`reconcile`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Tenants whose accounting was replaced by their recount.
    pub tenants: u64,
    /// Namespaces whose accounting was replaced by their recount.
    pub namespaces: u64,
    /// Tenants written to during the pass, left for the next one.
    pub raced: u64,
    /// Keys walked.
    pub keys: u64,
}

/// Keys, bytes and expiry buckets counted from the keys themselves, with
/// the write counter seen before counting (`None`: none yet).
#[derive(Debug, Default)]
struct Recount {
    seen: Option<String>,
    keys: u64,
    bytes: u64,
    buckets: std::collections::HashMap<i64, (u64, u64)>,
}

impl Recount {
    fn add(&mut self, size: u64, expires_at: i64) {
        self.keys += 1;
        self.bytes += size;
        if expires_at > 0 {
            let bucket = self.buckets.entry(expires_at / BUCKET_MS).or_default();
            bucket.0 += 1;
            bucket.1 += size;
        }
    }

    /// Replaces the accounting at `keys` with this recount unless a write
    /// came in since `seen`; `true` when applied.
    async fn apply(
        self,
        redis_store: &RedisStore,
        keys: &UsageKeys,
        step_timeout: std::time::Duration,
    ) -> Result<bool, Error> {
        let mut invocation = APPLY_RECOUNT.prepare_invoke();
        invocation
            .key(&keys.usage)
            .key(&keys.buckets)
            .key(&keys.index)
            .arg(self.seen.unwrap_or_default())
            .arg(self.keys)
            .arg(self.bytes);
        for (bucket, (k, b)) in &self.buckets {
            invocation.arg(*bucket).arg(*k).arg(*b);
        }
        let applied: i64 = redis_store
            .timed_for(step_timeout, async {
                let mut conn = redis_store.conn().await?;
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        Ok(applied == 1)
    }
}

/// Recounts every tenant's keys and bytes, and those of each of its
/// namespaces as `namespaces` defines them, from the stored keys (a walk of
/// the whole keyspace, `batch` keys a step) and replaces the accounting
/// with the recount, expiry buckets included; an account written to during
/// the walk keeps its accounting (see the module docs).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn reconcile(
    redis_store: &RedisStore,
    namespaces: &crate::namespaces::NamespaceBook,
    batch: usize,
    step_timeout: std::time::Duration,
) -> Result<Reconciled, Error> {
    use std::collections::HashMap;
    use std::sync::Arc;

    let mut tenants: HashMap<String, Recount> = HashMap::new();
    // The write counters first: a write after this point makes the recount stale.
    walk(
        redis_store,
        "q:{*}:usage",
        batch,
        step_timeout,
        async |conn, keys| {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.hget(key, "w");
            }
            let counters: Vec<Option<String>> = pipe.query_async(conn).await?;
            Ok(keys.into_iter().zip(counters).collect::<Vec<_>>())
        },
    )
    .await?
    .into_iter()
    .filter_map(|(key, w)| Some((usage_tenant(&key)?.to_owned(), w)))
    .for_each(|(tenant, w)| {
        tenants.entry(tenant).or_default().seen = Some(w.unwrap_or_default());
    });
    // Each known tenant's namespaces and their write counters, before the walk.
    let mut sets: HashMap<String, Arc<crate::namespaces::NamespaceSet>> = HashMap::new();
    let mut spaces: HashMap<(String, String), Recount> = HashMap::new();
    for tenant in tenants.keys() {
        let set = namespaces.of(tenant);
        let prefixes: Vec<String> = set.listed().into_iter().map(|ns| ns.prefix).collect();
        let counters: Vec<Option<String>> = redis_store
            .timed_for(step_timeout, async {
                let mut conn = redis_store.conn().await?;
                let mut pipe = redis::pipe();
                for prefix in &prefixes {
                    pipe.hget(UsageKeys::of_namespace(tenant, prefix).usage, "w");
                }
                Ok(pipe.query_async(&mut conn).await?)
            })
            .await?;
        for (prefix, w) in prefixes.into_iter().zip(counters) {
            let recount = Recount {
                seen: Some(w.unwrap_or_default()),
                ..Recount::default()
            };
            spaces.insert((tenant.clone(), prefix), recount);
        }
        sets.insert(tenant.clone(), set);
    }
    let mut walked = 0u64;
    let sizes = walk(
        redis_store,
        "c:{*}:*",
        batch,
        step_timeout,
        async |conn, keys| {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.strlen(key)
                    .cmd("PEXPIRETIME")
                    .arg(key)
                    .getrange(key, 0, 0);
            }
            let answers: Vec<(u64, i64, Vec<u8>)> = pipe.query_async(conn).await?;
            Ok(keys.into_iter().zip(answers).collect::<Vec<_>>())
        },
    )
    .await?;
    for (key, (stored, expires_at, first)) in sizes {
        walked += 1;
        let Some(tenant) = tenant_of(&key) else {
            continue;
        };
        if stored == 0 {
            continue; // gone since the page was read
        }
        let header = if first == b"T" && stored > EXPIRY_HEADER_BYTES as u64 {
            EXPIRY_HEADER_BYTES as u64
        } else {
            0
        };
        let user_key_len = key.len() - tenant.len() - 5;
        let size = user_key_len as u64 + stored - header;
        tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| Recount {
                seen: Some(String::new()),
                ..Recount::default()
            })
            .add(size, expires_at);
        let set = sets
            .entry(tenant.to_owned())
            .or_insert_with(|| namespaces.of(tenant));
        if let Some(ns) = set.find(&key[key.len() - user_key_len..]) {
            spaces
                .entry((tenant.to_owned(), ns.prefix.clone()))
                .or_insert_with(|| Recount {
                    seen: Some(String::new()),
                    ..Recount::default()
                })
                .add(size, expires_at);
        }
    }
    let mut done = Reconciled {
        keys: walked,
        ..Reconciled::default()
    };
    for (tenant, recount) in tenants {
        if recount
            .apply(redis_store, &UsageKeys::named(&tenant), step_timeout)
            .await?
        {
            done.tenants += 1;
        } else {
            done.raced += 1;
        }
    }
    for ((tenant, prefix), recount) in spaces {
        let keys = UsageKeys::of_namespace(&tenant, &prefix);
        if recount.apply(redis_store, &keys, step_timeout).await? {
            done.namespaces += 1;
        } else {
            done.raced += 1;
        }
    }
    Ok(done)
}

/// Walks the keys matching `pattern`, reading each page with `read`.
async fn walk<T>(
    redis_store: &RedisStore,
    pattern: &str,
    batch: usize,
    step_timeout: std::time::Duration,
    read: impl AsyncFn(&mut crate::redis::Conn, Vec<String>) -> Result<Vec<T>, Error>,
) -> Result<Vec<T>, Error> {
    let mut pages = ScanPages::new(redis_store, pattern, batch, step_timeout);
    let mut found = Vec::new();
    while let Some(page) = pages
        .next(async |conn, keys| read(conn, keys).await)
        .await?
    {
        found.extend(page);
    }
    Ok(found)
}

/// The tenant of a usage hash `q:{tenant}:usage` (not a namespace's,
/// `q:{tenant}:n:{prefix}:usage`, which the same pattern can match).
fn usage_tenant(key: &str) -> Option<&str> {
    let tenant = key.strip_prefix("q:{")?.strip_suffix("}:usage")?;
    (!tenant.contains(['{', '}', ':'])).then_some(tenant)
}
