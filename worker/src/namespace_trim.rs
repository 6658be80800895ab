//! Trims namespaces back under their `maxKeys` (API.md §10, `evict_lru` and
//! `evict_lfu`). A write that takes such a namespace over its limit asks
//! for a trim ([`cache_shared::quota::TRIM_REQUESTS`], once a minute per
//! namespace); every [`TRIM_EVERY`] a worker takes the requests and, for
//! each, removes the namespace's coldest keys: the longest idle ones
//! (Redis's `OBJECT IDLETIME`), or the least frequently used (`OBJECT FREQ`,
//! which Redis keeps only under an LFU `maxmemory-policy`; under any other
//! policy the idle time decides).

use std::time::Duration;

use cache_shared::Error;
use cache_shared::keys::{TenantId, TenantKeyspace};
use cache_shared::namespaces::{Namespace, OverLimit};
use cache_shared::quota::{self, TRIM_REQUESTS, UsageKeys};
use deadpool_redis::redis;
use tokio::sync::watch;

use crate::context::JobContext;
use crate::jobs::pages::KeyPages;

/// How often trim requests are taken: well inside the 60 s the contract allows.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Requests taken per round.
const REQUESTS_PER_ROUND: usize = 100;

/// Keys removed per delete.
const DELETE_BATCH: usize = 500;

/// Takes and carries out trim requests until `stop` changes.
pub(crate) async fn trim_loop(ctx: JobContext, stop: watch::Receiver<bool>) {
    let ctx = &ctx;
    cache_shared::shutdown::every(TRIM_EVERY, stop, move || async move {
        if let Err(err) = round(ctx).await {
            tracing::warn!(%err, "namespace trims not taken; retrying next round");
        }
    })
    .await;
}

/// One round: every waiting request, each namespace once.
///
/// # Errors
///
/// [`Error::CacheUnavailable`] when the requests cannot be taken.
pub async fn round(ctx: &JobContext) -> Result<u64, Error> {
    let redis_store = ctx.cache.redis();
    let requests: Vec<String> = redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let taken: Option<Vec<String>> = redis::cmd("RPOP")
                .arg(TRIM_REQUESTS)
                .arg(REQUESTS_PER_ROUND)
                .query_async(&mut conn)
                .await?;
            Ok(taken.unwrap_or_default())
        })
        .await?;
    let mut requests: Vec<(String, String)> = requests
        .into_iter()
        .filter_map(|r| {
            r.split_once('\n')
                .map(|(t, p)| (t.to_owned(), p.to_owned()))
        })
        .collect();
    requests.sort();
    requests.dedup();
    let mut removed = 0;
    for (tenant, prefix) in requests {
        let Ok(tenant) = TenantId::from_record(&tenant) else {
            continue;
        };
        match trim(ctx, &tenant, &prefix).await {
            Ok(n) => removed += n,
            Err(err) => tracing::warn!(%err, %tenant, prefix, "namespace not trimmed"),
        }
    }
    Ok(removed)
}

/// Removes the coldest keys of `tenant`'s namespace `prefix` until it is
/// back at its `maxKeys`; returns how many were removed.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn trim(ctx: &JobContext, tenant: &TenantId, prefix: &str) -> Result<u64, Error> {
    // From PostgreSQL, not this worker's book: a namespace created a moment
    // ago may not be in the book yet.
    let book = ctx.cache.namespaces();
    let set =
        cache_shared::db::namespaces::of_tenant(&ctx.db, tenant.as_str(), book.defaults()).await?;
    let marker = format!(
        "{}:trim",
        UsageKeys::of_namespace(tenant.as_str(), prefix).usage
    );
    let removed = match set.get(prefix) {
        Some(ns) if ns.max_keys > 0 && ns.over_limit != OverLimit::Reject => {
            trim_namespace(ctx, tenant, &set, ns).await?
        }
        // Deleted or changed since the request: nothing to do.
        _ => 0,
    };
    let redis_store = ctx.cache.redis();
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let () = redis::cmd("DEL")
                .arg(&marker)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await?;
    Ok(removed)
}

async fn trim_namespace(
    ctx: &JobContext,
    tenant: &TenantId,
    set: &cache_shared::namespaces::NamespaceSet,
    ns: &Namespace,
) -> Result<u64, Error> {
    let redis_store = ctx.cache.redis();
    let held = quota::namespace_usage(redis_store, tenant, &ns.prefix).await?;
    let over = held.keys.saturating_sub(ns.max_keys);
    if over == 0 {
        return Ok(0);
    }
    let keyspace = TenantKeyspace::new(tenant);
    let pattern = keyspace.literal_prefix_pattern(&ns.prefix);
    let by_frequency = ns.over_limit == OverLimit::EvictLfu;
    // (coldness, key): the larger, the sooner it goes.
    let mut candidates: Vec<(i64, String)> = Vec::new();
    let mut pages = KeyPages::new(ctx, &pattern);
    while let Some(page) = pages
        .next(async |conn, keys| {
            // Keys of a longer namespace inside this prefix are not this one's.
            let own: Vec<String> = keys
                .into_iter()
                .filter(|key| {
                    keyspace
                        .strip(key)
                        .and_then(|k| set.find(k))
                        .is_some_and(|found| found.prefix == ns.prefix)
                })
                .collect();
            coldness(conn, own, by_frequency).await
        })
        .await?
    {
        candidates.extend(page);
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    let take = usize::try_from(over)
        .unwrap_or(usize::MAX)
        .min(candidates.len());
    let mut removed = 0;
    for chunk in candidates[..take].chunks(DELETE_BATCH) {
        let keys: Vec<(&str, Option<&str>)> = chunk
            .iter()
            .map(|(_, key)| (key.as_str(), Some(ns.prefix.as_str())))
            .collect();
        removed += redis_store
            .timed_for(ctx.pacing.batch_timeout, async {
                let mut conn = redis_store.conn().await?;
                quota::evict(&mut conn, tenant, &keys).await
            })
            .await?;
        tokio::time::sleep(ctx.pacing.pause).await;
    }
    tracing::info!(%tenant, prefix = ns.prefix, removed, limit = ns.max_keys, "namespace trimmed");
    Ok(removed)
}

/// How cold each key is: its idle seconds, or (by frequency) the negated
/// LFU counter, so the least used sort first; keys gone meanwhile are left out.
async fn coldness(
    conn: &mut cache_shared::redis::Conn,
    keys: Vec<String>,
    by_frequency: bool,
) -> Result<Vec<(i64, String)>, Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    if by_frequency {
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("OBJECT").arg("FREQ").arg(key);
        }
        // Without an LFU policy Redis refuses FREQ: idle time decides.
        if let Ok(freqs) = pipe.query_async::<Vec<Option<i64>>>(conn).await {
            return Ok(keys
                .into_iter()
                .zip(freqs)
                .filter_map(|(key, freq)| freq.map(|f| (-f, key)))
                .collect());
        }
    }
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("OBJECT").arg("IDLETIME").arg(key);
    }
    let idle: Vec<Option<i64>> = pipe.query_async(conn).await?;
    Ok(keys
        .into_iter()
        .zip(idle)
        .filter_map(|(key, idle)| idle.map(|i| (i, key)))
        .collect())
}
