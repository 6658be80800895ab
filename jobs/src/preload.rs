//! `preload`: writes many keys into a tenant's namespace with pipelined,
//! paced batches. Idempotent: a re-run writes the same values again.

use cache_shared::Error;
use cache_shared::cache::SetItem;
use cache_shared::codec::Value;
use cache_shared::keys::TenantId;
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<PreloadItem>>,
}

impl PreloadParams {
    /// Checks every item before anything is enqueued, naming the first bad one.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] or [`Error::PayloadTooLarge`].
    pub fn validate(&self, max_value_bytes: usize) -> Result<(), Error> {
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
            cache_shared::keys::validate_key(&item.key, &format!("items[{i}].key"))?;
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
    params.validate(ctx.cache.limits().max_value_bytes)?;
    let items = params.items.as_deref().unwrap_or_default();
    let mut progress = Progress::new(&ctx.db, job_id);
    progress.set_total(items.len() as i64);
    for batch in items.chunks(ctx.pacing.batch.max(1)) {
        let batch: Vec<SetItem> = batch
            .iter()
            .map(|item| SetItem {
                key: item.key.clone(),
                value: Value::from_raw_json(&item.value),
                ttl: item.ttl,
            })
            .collect();
        ctx.cache.mset(tenant, &batch).await?;
        if progress.advance(batch.len() as i64).await? == Next::Stop {
            return Ok(Outcome::Cancelled(
                json!({ "loaded": progress.done(), "skipped": 0 }),
            ));
        }
    }
    Ok(Outcome::Succeeded(
        json!({ "loaded": progress.done(), "skipped": 0 }),
    ))
}
