//! `session_cleanup`: revokes every session of a user, of a tenant, or of a
//! user within a tenant (read from the session indexes, never a keyspace
//! scan); with no owner, prunes index entries whose session has expired.
//! Idempotent: a revoked session is gone and a pruned entry stays pruned.

use cache_shared::keys::SessionKeys;
use cache_shared::sessions::{self, Owner};
use deadpool_redis::redis;
use serde_json::json;

use cache_jobs::payload::Payload;

use super::Handler;
use super::pages::KeyPages;
use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::progress::{Next, Progress};

/// Runs a cleanup for `owner` (both fields `None`: prune expired entries).
///
/// # Errors
///
/// [`JobError::Retryable`] when Redis or PostgreSQL blips.
async fn run(ctx: &JobContext, job_id: &str, owner: &Owner) -> Result<Outcome, JobError> {
    owner.validate()?;
    let mut progress = Progress::new(&ctx.db, job_id);
    if owner.user_id.is_none() && owner.tenant_id.is_none() {
        return prune(ctx, &mut progress).await;
    }
    let ids = sessions::indexed_ids(&ctx.cache, owner).await?;
    progress.set_total(ids.len() as i64);
    let mut revoked = 0;
    for batch in ids.chunks(ctx.pacing.batch.max(1)) {
        revoked += sessions::revoke(&ctx.cache, owner, batch).await?;
        if progress.advance(batch.len() as i64).await? == Next::Stop {
            return Ok(Outcome::Cancelled(json!({ "revoked": revoked })));
        }
        tokio::time::sleep(ctx.pacing.pause).await;
    }
    Ok(Outcome::Succeeded(json!({ "revoked": revoked })))
}

async fn prune(ctx: &JobContext, progress: &mut Progress<'_>) -> Result<Outcome, JobError> {
    let redis = ctx.cache.redis();
    let mut pruned = 0;
    let mut pages = KeyPages::new(ctx, SessionKeys::INDEX_PATTERN);
    while let Some(indexes) = pages.next(async |_, keys| Ok(keys)).await? {
        for index in &indexes {
            let ids: Vec<String> = redis
                .timed_for(ctx.pacing.batch_timeout, async {
                    let mut conn = redis.conn().await?;
                    let ids: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(index)
                        .query_async(&mut conn)
                        .await?;
                    Ok(ids)
                })
                .await?;
            for batch in ids.chunks(ctx.pacing.batch.max(1)) {
                pruned += sessions::prune_index(&ctx.cache, index, batch).await?;
            }
        }
        if progress.advance(indexes.len() as i64).await? == Next::Stop {
            return Ok(Outcome::Cancelled(json!({ "pruned": pruned })));
        }
    }
    progress.report().await?;
    Ok(Outcome::Succeeded(
        json!({ "pruned": pruned, "indexes": progress.done() }),
    ))
}

impl Handler for Owner {
    async fn run(ctx: &JobContext, job: &Payload<Self>) -> Result<Outcome, JobError> {
        run(ctx, &job.job_id, &job.params).await
    }
}
