//! `flush`: deletes a tenant's keys (all, a namespace, or a glob pattern)
//! with `SCAN` + `UNLINK` in paced batches (on a cluster: from the tenant
//! slot's key index, or `SCAN` on every primary for a whole-server flush). Never `KEYS`; `FLUSHDB` never at
//! all: even the operator's whole-server flush only removes tenants' cached
//! values, so queues, sessions and permission entries survive it.
//! Idempotent: a re-run deletes whatever still matches.

use cache_jobs::flush::FlushParams;
use cache_jobs::payload::Payload;
use cache_shared::Error;
use cache_shared::keys::TenantId;
use cache_shared::quota::{SCAN_UNLINK, UNLINK_KEYS};
use cache_shared::redis::ScanPages;
use cache_shared::redis::cluster::pinned_slot;
use serde_json::json;
use std::time::Duration;

use super::{Handler, tenant_of};
use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::progress::{Next, Progress};

/// Keeps a job under a rate: waits whenever it is ahead of schedule (by at
/// least a timer tick, so short waits are not rounded up into slowness).
#[derive(Debug)]
pub struct Pacer {
    started: tokio::time::Instant,
    per_second: u64,
}

impl Pacer {
    pub fn new(per_second: u64) -> Self {
        Self {
            started: tokio::time::Instant::now(),
            per_second: per_second.max(1),
        }
    }

    /// Waits until `done` units are due.
    pub async fn wait(&self, done: i64) {
        let due = Duration::from_secs_f64(done.max(0) as f64 / self.per_second as f64);
        let ahead = due.saturating_sub(self.started.elapsed());
        if ahead >= Duration::from_millis(2) {
            tokio::time::sleep(ahead).await;
        }
    }
}

/// Runs a flush for `tenant`.
///
/// # Errors
///
/// [`JobError::Retryable`] when Redis or PostgreSQL blips.
async fn run(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
    params: &FlushParams,
) -> Result<Outcome, JobError> {
    params.validate()?;
    let pattern = params.scan_pattern(tenant);
    let redis = ctx.cache.redis();
    let mut progress = Progress::new(&ctx.db, job_id);
    let pacer = Pacer::new(ctx.pacing.flush_keys_per_second);
    let indexed = redis.is_cluster() && pinned_slot(&pattern).is_some();
    let next = if indexed {
        unlink_indexed(ctx, &pattern, &mut progress, &pacer).await?
    } else {
        unlink_scanned(ctx, &pattern, &mut progress, &pacer).await?
    };
    if next == Next::Stop {
        return Ok(Outcome::Cancelled(json!({ "deleted": progress.done() })));
    }
    settle_namespaces(ctx, tenant, params).await?;
    let deleted = progress.done();
    progress.set_total(deleted);
    progress.report().await?;
    Ok(Outcome::Succeeded(json!({ "deleted": deleted })))
}

/// Deletes the keys matching `pattern` with [`SCAN_UNLINK`] steps on each
/// shard in turn (the one Redis, or every primary of a cluster).
async fn unlink_scanned(
    ctx: &JobContext,
    pattern: &str,
    progress: &mut Progress<'_>,
    pacer: &Pacer,
) -> Result<Next, JobError> {
    let redis = ctx.cache.redis();
    let budget_us = u64::try_from(ctx.pacing.flush_step_budget.as_micros()).unwrap_or(u64::MAX);
    // A step never examines more than a hundredth of a second of the rate
    // cap, so the cap stays smooth even where `TIME` stands still.
    let most = (ctx.pacing.flush_keys_per_second / 100).max(ctx.pacing.flush_batch as u64);
    let shards = redis
        .timed_for(ctx.pacing.batch_timeout, redis.shards())
        .await?;
    let mut examined: i64 = 0;
    for shard in &shards {
        let mut cursor: u64 = 0;
        loop {
            let (deleted, seen) = redis
                .timed_for(ctx.pacing.batch_timeout, async {
                    let mut conn = redis.conn_on(shard).await?;
                    let (next, deleted, seen): (String, i64, i64) = SCAN_UNLINK
                        .prepare_invoke()
                        .arg(cursor)
                        .arg(pattern)
                        .arg(ctx.pacing.flush_batch)
                        .arg(budget_us)
                        .arg(most)
                        .invoke_async(&mut conn)
                        .await?;
                    cursor = next
                        .parse()
                        .map_err(|_| Error::internal(format!("SCAN answered cursor {next}")))?;
                    Ok((deleted, seen))
                })
                .await?;
            let last = cursor == 0;
            if step_done(progress, pacer, &mut examined, (deleted, seen), last).await? == Next::Stop
            {
                return Ok(Next::Stop);
            }
            if last {
                break;
            }
        }
    }
    Ok(Next::Continue)
}

/// Deletes the keys matching `pattern`, which pins one slot of a cluster,
/// from that slot's key index: the flush costs the tenant's keys, not the
/// whole keyspace.
async fn unlink_indexed(
    ctx: &JobContext,
    pattern: &str,
    progress: &mut Progress<'_>,
    pacer: &Pacer,
) -> Result<Next, JobError> {
    let redis = ctx.cache.redis();
    let mut pages = ScanPages::new(
        redis,
        pattern,
        ctx.pacing.flush_batch,
        ctx.pacing.batch_timeout,
    );
    let mut examined: i64 = 0;
    while let Some(page) = pages
        .next(async |conn, keys| {
            let deleted: i64 = UNLINK_KEYS.key(keys.as_slice()).invoke_async(conn).await?;
            Ok(vec![(deleted, keys.len() as i64)])
        })
        .await?
    {
        let step = page.first().copied().unwrap_or((0, 0));
        if step_done(progress, pacer, &mut examined, step, pages.is_done()).await? == Next::Stop {
            return Ok(Next::Stop);
        }
    }
    Ok(Next::Continue)
}

/// After a step of a flush that deleted and examined `(deleted, seen)`
/// keys: its progress recorded (and a cancellation seen), then, unless it
/// was the `last`, a wait to keep to the rate cap, which is the flush's
/// throttle counted in keys examined (a page that finds nothing to delete
/// still costs Redis a look).
async fn step_done(
    progress: &mut Progress<'_>,
    pacer: &Pacer,
    examined: &mut i64,
    (deleted, seen): (i64, i64),
    last: bool,
) -> Result<Next, JobError> {
    if progress.advance(deleted).await? == Next::Stop {
        return Ok(Next::Stop);
    }
    *examined += seen;
    if !last {
        pacer.wait(*examined).await;
    }
    Ok(Next::Continue)
}

/// After a flush: its `flush` event for listeners, and the namespaces'
/// accounting (the flush's script keeps tenants' usage, not their
/// namespaces'): a whole-tenant flush empties them at once; any flush asks
/// for a recount, which settles the rest.
async fn settle_namespaces(
    ctx: &JobContext,
    tenant: &TenantId,
    params: &FlushParams,
) -> Result<(), Error> {
    let redis = ctx.cache.redis();
    if params.pattern.is_none() && params.namespace.is_none() && !params.whole_server {
        let prefixes: Vec<String> = ctx
            .cache
            .namespaces()
            .of(tenant.as_str())
            .listed()
            .into_iter()
            .map(|ns| ns.prefix)
            .collect();
        cache_shared::quota::forget_namespaces(redis, tenant, &prefixes).await?;
    }
    if params.whole_server {
        cache_shared::events::emit_everywhere(redis, "*", "flush").await?;
    } else {
        cache_shared::events::emit(redis, tenant, &params.describe(), "flush").await?;
    }
    cache_shared::quota::request_recount(redis).await
}

impl Handler for FlushParams {
    async fn run(ctx: &JobContext, job: &Payload<Self>) -> Result<Outcome, JobError> {
        run(ctx, &job.job_id, &tenant_of(job)?, &job.params).await
    }
}
