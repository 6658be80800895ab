//! `backup` and `restore`: a tenant's keys, their stored bytes and expiry
//! times, copied into PostgreSQL and back, into the same or another tenant.
//! Backups are idempotent (a re-run rewrites the same entries); a restore
//! never replaces a key that exists unless asked to (`overwrite`), and skips
//! keys whose time ran out since the backup.

use cache_shared::Error;
use cache_shared::db::backups::{self, BackupEntry};
use cache_shared::keys::{CacheNamespace, TenantId};
use chrono::Utc;
use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::progress::{Next, Progress};

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupParams {}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreParams {
    /// The id of a completed backup job.
    pub backup_id: String,
    /// Replace keys that exist in the target tenant (default: keep them).
    #[serde(default)]
    pub overwrite: bool,
}

impl RestoreParams {
    /// # Errors
    ///
    /// [`Error::Validation`] for a malformed backup id.
    pub fn validate(&self) -> Result<(), Error> {
        if self.backup_id.len() != 26 || !self.backup_id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(Error::validation(
                "backupId",
                "backupId must be a backup job id",
            ));
        }
        Ok(())
    }
}

/// # Errors
///
/// [`JobError::Retryable`] when Redis or PostgreSQL blips.
pub async fn backup(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
) -> Result<Outcome, JobError> {
    let ns = CacheNamespace::new(tenant);
    let pattern = ns.pattern("*");
    let redis_store = ctx.cache.redis();
    let mut progress = Progress::new(&ctx.db, job_id);
    backups::begin(&ctx.db, job_id, tenant.as_str()).await?;
    let mut cursor: u64 = 0;
    loop {
        let batch: Vec<(String, Option<Vec<u8>>, i64)> = redis_store
            .timed_for(ctx.pacing.batch_timeout, async {
                let mut conn = redis_store.conn().await?;
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(ctx.pacing.batch)
                    .query_async(&mut conn)
                    .await?;
                cursor = next;
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.get(key).pttl(key);
                }
                let answers: Vec<(Option<Vec<u8>>, i64)> = pipe.query_async(&mut conn).await?;
                Ok(keys
                    .into_iter()
                    .zip(answers)
                    .map(|(k, (v, ttl))| (k, v, ttl))
                    .collect())
            })
            .await?;
        let now = Utc::now();
        let entries: Vec<BackupEntry> = batch
            .into_iter()
            // Gone between SCAN and GET (expired or deleted): nothing to keep.
            .filter_map(|(key, value, pttl)| {
                let value = value?;
                Some(BackupEntry {
                    cache_key: ns.strip(&key)?.to_owned(),
                    value,
                    expires_at: (pttl >= 0).then(|| now + chrono::Duration::milliseconds(pttl)),
                })
            })
            .collect();
        if !entries.is_empty() {
            backups::add(&ctx.db, job_id, &entries).await?;
        }
        if progress.advance(entries.len() as i64).await? == Next::Stop {
            return Ok(Outcome::Cancelled(json!({ "keys": progress.done() })));
        }
        if cursor == 0 {
            break;
        }
        tokio::time::sleep(ctx.pacing.pause).await;
    }
    let record = backups::finish(&ctx.db, job_id).await?;
    Ok(Outcome::Succeeded(json!({
        "backupId": record.id,
        "keys": record.key_count,
        "bytes": record.bytes,
    })))
}

/// Writes a backup's keys into `tenant`.
///
/// # Errors
///
/// [`JobError::Permanent`] for an unknown backup, [`JobError::Retryable`]
/// when Redis or PostgreSQL blips.
pub async fn restore(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
    params: &RestoreParams,
) -> Result<Outcome, JobError> {
    params.validate()?;
    let backup = backups::get(&ctx.db, &params.backup_id)
        .await?
        .ok_or_else(|| JobError::Permanent(format!("no completed backup {}", params.backup_id)))?;
    let ns = CacheNamespace::new(tenant);
    let redis_store = ctx.cache.redis();
    let mut progress = Progress::new(&ctx.db, job_id);
    progress.set_total(backup.key_count);
    let (mut restored, mut kept, mut expired) = (0u64, 0u64, 0u64);
    let mut after = String::new();
    loop {
        let page = backups::page(&ctx.db, &backup.id, &after, ctx.pacing.batch as i64).await?;
        let Some(last) = page.last() else { break };
        after = last.cache_key.clone();
        let now = Utc::now();
        let mut pipe = redis::pipe();
        let mut written = 0;
        for entry in &page {
            let mut cmd = redis::cmd("SET");
            cmd.arg(ns.key(&entry.cache_key)).arg(&entry.value);
            if let Some(at) = entry.expires_at {
                let left = (at - now).num_milliseconds();
                if left <= 0 {
                    expired += 1;
                    continue;
                }
                cmd.arg("PX").arg(left);
            }
            if !params.overwrite {
                cmd.arg("NX");
            }
            pipe.add_command(cmd);
            written += 1;
        }
        if written > 0 {
            let answers: Vec<Option<String>> = redis_store
                .timed_for(ctx.pacing.batch_timeout, async {
                    let mut conn = redis_store.conn().await?;
                    let answers: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
                    Ok(answers)
                })
                .await?;
            let set = answers.iter().filter(|a| a.is_some()).count() as u64;
            restored += set;
            kept += written as u64 - set;
        }
        if progress.advance(page.len() as i64).await? == Next::Stop {
            return Ok(Outcome::Cancelled(
                json!({ "restored": restored, "kept": kept, "expired": expired }),
            ));
        }
        tokio::time::sleep(ctx.pacing.pause).await;
    }
    Ok(Outcome::Succeeded(json!({
        "backupId": backup.id,
        "restored": restored,
        "kept": kept,
        "expired": expired,
    })))
}
