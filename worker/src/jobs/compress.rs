//! `compress`: re-encodes with LZ4 the values of a tenant that match a glob,
//! where that makes them smaller, keeping their TTLs. Idempotent: an already
//! compressed value is left as it is, and a value changed meanwhile is skipped.

use cache_jobs::compress::CompressParams;
use cache_jobs::payload::Payload;
use cache_shared::Error;
use cache_shared::cache::compress_stored;
use cache_shared::keys::{TenantId, TenantKeyspace};
use deadpool_redis::redis;
use serde_json::json;

use super::pages::KeyPages;
use super::{Handler, tenant_of};
use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::progress::{Next, Progress};

/// # Errors
///
/// [`JobError::Retryable`] when Redis or PostgreSQL blips.
async fn run(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
    params: &CompressParams,
) -> Result<Outcome, JobError> {
    params.validate()?;
    let keyspace = TenantKeyspace::new(tenant);
    let pattern = keyspace.pattern(&params.pattern);
    let namespaces = ctx.cache.namespaces().of(tenant.as_str());
    let redis_store = ctx.cache.redis();
    let codec = ctx.cache.codec();
    let mut progress = Progress::new(&ctx.db, job_id);
    let (mut compressed, mut skipped, mut saved) = (0u64, 0u64, 0u64);
    let mut pages = KeyPages::new(ctx, &pattern);
    while let Some(values) = pages
        .next(async |conn, keys| {
            // Single-key commands: a walk's page may span slots (see ScanPages).
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.get(key);
            }
            let stored: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
            Ok(keys.into_iter().zip(stored).collect::<Vec<_>>())
        })
        .await?
    {
        let n = values.len() as i64;
        for (key, stored) in values {
            let Some(stored) = stored else { continue };
            let namespace = keyspace.strip(&key).and_then(|k| namespaces.find(k));
            let at = (key.as_str(), namespace.map(|ns| ns.prefix.as_str()));
            match compress_stored(redis_store, codec, at, &stored, ctx.pacing.batch_timeout).await {
                Ok(outcome) if outcome.bytes_after < outcome.bytes_before => {
                    compressed += 1;
                    saved += (outcome.bytes_before - outcome.bytes_after) as u64;
                }
                Ok(_) => skipped += 1,
                // Bytes this service did not write are left alone.
                Err(Error::Internal(_)) => skipped += 1,
                Err(other) => return Err(other.into()),
            }
        }
        if progress.advance(n).await? == Next::Stop {
            return Ok(Outcome::Cancelled(
                json!({ "compressed": compressed, "skipped": skipped, "bytesSaved": saved }),
            ));
        }
    }
    progress.report().await?;
    Ok(Outcome::Succeeded(
        json!({ "compressed": compressed, "skipped": skipped, "bytesSaved": saved }),
    ))
}

impl Handler for CompressParams {
    async fn run(ctx: &JobContext, job: &Payload<Self>) -> Result<Outcome, JobError> {
        run(ctx, &job.job_id, &tenant_of(job)?, &job.params).await
    }
}
