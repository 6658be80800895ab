//! `collect_stats`: a snapshot of the Redis server's figures (memory, keys,
//! hits and misses, clients, throughput) recorded as the job's result.

use serde_json::json;

use cache_jobs::payload::{NoParams, Payload};

use super::Handler;
use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;

/// # Errors
///
/// [`JobError::Retryable`] when Redis does not answer.
async fn run(ctx: &JobContext) -> Result<Outcome, JobError> {
    let figures = ctx.cache.redis().server_figures().await?;
    let hit_rate =
        cache_shared::stats::histogram::hit_rate((figures.keyspace_hits, figures.keyspace_misses));
    let mut result = serde_json::to_value(figures)
        .map_err(|e| JobError::Permanent(format!("serialising figures: {e}")))?;
    result["hitRate"] = json!(hit_rate);
    Ok(Outcome::Succeeded(result))
}

impl Handler for NoParams {
    async fn run(ctx: &JobContext, _: &Payload<Self>) -> Result<Outcome, JobError> {
        run(ctx).await
    }
}
