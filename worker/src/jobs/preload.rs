//! `preload`: writes many keys into a tenant's namespace with pipelined,
//! paced batches. Idempotent: a re-run writes the same values again.

use cache_jobs::payload::Payload;
use cache_jobs::preload::{PreloadItem, PreloadParams};
use cache_shared::cache::SetItem;
use cache_shared::codec::Value;
use cache_shared::keys::{TenantId, validate_key};
use serde_json::json;

use super::fetch::fetch_lines;
use super::{Handler, tenant_of};
use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::progress::{Next, Progress};
use cache_jobs::backup::RestoreParams;

/// # Errors
///
/// [`JobError::Retryable`] when Redis or PostgreSQL blips,
/// [`JobError::Permanent`] for items that break the rules.
async fn run(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
    params: &PreloadParams,
) -> Result<Outcome, JobError> {
    let max_value_bytes = ctx.cache.limits().max_value_bytes;
    params.validate(max_value_bytes, &ctx.preload.allow)?;
    // The namespaces as they are now (TTLs, sealing, accounting), not as the
    // last periodic reload saw them.
    cache_shared::db::namespaces::reload(&ctx.db, ctx.cache.namespaces()).await?;
    if let Some(backup_id) = &params.backup_id {
        let restore = RestoreParams {
            backup_id: Some(backup_id.clone()),
            file: None,
            overwrite: true,
        };
        return super::backup::restore(ctx, job_id, tenant, &restore).await;
    }
    let (items, skipped) = match &params.url {
        Some(url) => download(ctx, url, max_value_bytes).await?,
        None => (
            params
                .items
                .iter()
                .flatten()
                .map(|item| SetItem {
                    key: item.key.clone(),
                    value: Value::from_raw_json(&item.value),
                    ttl: item.ttl,
                })
                .collect(),
            0,
        ),
    };
    let mut progress = Progress::new(&ctx.db, job_id);
    progress.set_total(items.len() as i64);
    for batch in items.chunks(ctx.pacing.batch.clamp(1, cache_jobs::MAX_WRITE_BATCH)) {
        ctx.cache.mset(tenant, batch).await?;
        if progress.advance(batch.len() as i64).await? == Next::Stop {
            return Ok(Outcome::Cancelled(
                json!({ "loaded": progress.done(), "skipped": skipped }),
            ));
        }
    }
    Ok(Outcome::Succeeded(
        json!({ "loaded": progress.done(), "skipped": skipped }),
    ))
}

/// The valid items of a newline-delimited JSON download and how many lines
/// were skipped as invalid (blank lines are not counted).
async fn download(
    ctx: &JobContext,
    url: &str,
    max_value_bytes: usize,
) -> Result<(Vec<SetItem>, u64), JobError> {
    let mut items = Vec::new();
    let mut skipped = 0u64;
    fetch_lines(&ctx.preload.allow, url, ctx.preload.limits, |line| {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = serde_json::from_slice::<PreloadItem>(line)
            .ok()
            .filter(|item| validate_key(&item.key, "key").is_ok())
            .map(|item| SetItem {
                value: Value::from_raw_json(&item.value),
                key: item.key,
                ttl: item.ttl,
            })
            .filter(|item| item.value.len() <= max_value_bytes);
        match parsed {
            Some(item) => items.push(item),
            None => skipped += 1,
        }
    })
    .await
    .map_err(JobError::Permanent)?;
    Ok((items, skipped))
}

impl Handler for PreloadParams {
    async fn run(ctx: &JobContext, job: &Payload<Self>) -> Result<Outcome, JobError> {
        run(ctx, &job.job_id, &tenant_of(job)?, &job.params).await
    }
}
