//! `preload`: writes many keys into a tenant's namespace with pipelined,
//! paced batches. Idempotent: a re-run writes the same values again.

use cache_shared::Error;
use cache_shared::cache::SetItem;
use cache_shared::codec::Value;
use cache_shared::keys::{TenantId, validate_key};
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use crate::Outcome;
use crate::backup::RestoreParams;
use crate::context::JobContext;
use crate::error::JobError;
use crate::fetch::{AllowList, fetch_lines};
use crate::progress::{Next, Progress};

/// Most items one inline preload may carry.
pub const MAX_INLINE_ITEMS: usize = 10_000;

/// One key to write.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreloadItem {
    pub key: String,
    #[schema(value_type = Object)]
    pub value: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u32>)]
    pub ttl: Option<Expiry>,
}

/// Where the items come from, as callers send it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreloadParams {
    /// Up to 10 000 items, each validated at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<PreloadItem>>,
    /// Newline-delimited JSON items, from a host on `PRELOAD_ALLOWED_HOSTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A completed backup of the tenant's (an operator may name any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
}

impl PreloadParams {
    /// Checks every item before anything is enqueued, naming the first bad one.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] or [`Error::PayloadTooLarge`].
    pub fn validate(&self, max_value_bytes: usize, allow: &AllowList) -> Result<(), Error> {
        let sources = [
            self.items.is_some(),
            self.url.is_some(),
            self.backup_id.is_some(),
        ];
        if sources.iter().filter(|&&s| s).count() != 1 {
            return Err(Error::validation(
                "items",
                "give exactly one source: items, url or backupId",
            ));
        }
        if let Some(url) = &self.url {
            return allow.check(url).map(|_| ());
        }
        if let Some(backup_id) = &self.backup_id {
            return RestoreParams {
                backup_id: Some(backup_id.clone()),
                file: None,
                overwrite: true,
            }
            .validate();
        }
        let Some(items) = &self.items else {
            return Err(Error::validation("items", "items is required"));
        };
        if items.len() > MAX_INLINE_ITEMS {
            return Err(Error::validation(
                "items",
                format!(
                    "items must hold at most {MAX_INLINE_ITEMS} entries, not {}",
                    items.len()
                ),
            ));
        }
        for (i, item) in items.iter().enumerate() {
            validate_key(&item.key, &format!("items[{i}].key"))?;
            let value = Value::from_raw_json(&item.value);
            if value.len() > max_value_bytes {
                return Err(Error::PayloadTooLarge {
                    message: format!(
                        "items[{i}].value is {} bytes, more than the limit of {max_value_bytes} bytes",
                        value.len()
                    ),
                    limit: max_value_bytes,
                });
            }
        }
        Ok(())
    }
}

/// # Errors
///
/// [`JobError::Retryable`] when Redis or PostgreSQL blips,
/// [`JobError::Permanent`] for items that break the rules.
pub async fn run(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
    params: &PreloadParams,
) -> Result<Outcome, JobError> {
    let max_value_bytes = ctx.cache.limits().max_value_bytes;
    params.validate(max_value_bytes, &ctx.preload.allow)?;
    if let Some(backup_id) = &params.backup_id {
        let restore = RestoreParams {
            backup_id: Some(backup_id.clone()),
            file: None,
            overwrite: true,
        };
        return crate::backup::restore(ctx, job_id, tenant, &restore).await;
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
    for batch in items.chunks(ctx.pacing.batch.clamp(1, crate::MAX_WRITE_BATCH)) {
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
