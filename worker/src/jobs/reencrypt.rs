//! `reencrypt`: brings a tenant's values under the current data key (the
//! first of `DATA_ENCRYPTION_KEYS`): values sealed under an older key are
//! opened and sealed again, plain values in encrypted namespaces are sealed.
//! TTLs are kept, a value changed meanwhile is left to its newer write, and
//! a value whose key is not configured is counted and left as it is (the
//! result names the missing key ids). Idempotent: run it again after adding
//! a key and nothing already current is touched.

use std::collections::BTreeSet;

use cache_jobs::payload::Payload;
use cache_jobs::reencrypt::ReencryptParams;
use cache_shared::Error;
use cache_shared::cache::{Resealed, reseal_stored};
use cache_shared::keys::{TenantId, TenantKeyspace};
use deadpool_redis::redis;
use serde_json::{Value, json};

use super::pages::KeyPages;
use super::{Handler, tenant_of};
use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::progress::{Next, Progress};

/// Key ids named at most in a result.
const MAX_MISSING_IDS: usize = 20;

#[derive(Default)]
struct Tally {
    rotated: u64,
    sealed: u64,
    unchanged: u64,
    unreadable: u64,
    missing_keys: BTreeSet<String>,
}

impl Tally {
    fn result(&self) -> Value {
        json!({
            "rotated": self.rotated,
            "sealed": self.sealed,
            "unchanged": self.unchanged,
            "unreadable": self.unreadable,
            "missingKeyIds": self.missing_keys,
        })
    }
}

/// # Errors
///
/// [`JobError::Permanent`] when this worker has no data key;
/// [`JobError::Retryable`] when Redis or PostgreSQL blips.
async fn run(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
    params: &ReencryptParams,
) -> Result<Outcome, JobError> {
    let keys = ctx.cache.keys();
    if keys.is_empty() {
        return Err(JobError::from(Error::Sealing(
            "reencrypt needs DATA_ENCRYPTION_KEYS on the worker".into(),
        )));
    }
    let keyspace = TenantKeyspace::new(tenant);
    let pattern = keyspace.pattern(params.pattern());
    let namespaces = ctx.cache.namespaces().of(tenant.as_str());
    let redis_store = ctx.cache.redis();
    let mut progress = Progress::new(&ctx.db, job_id);
    let mut tally = Tally::default();
    let mut pages = KeyPages::new(ctx, &pattern);
    while let Some(values) = pages
        .next(async |conn, keys| {
            let stored: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(&keys).query_async(conn).await?;
            Ok(keys.into_iter().zip(stored).collect::<Vec<_>>())
        })
        .await?
    {
        let n = values.len() as i64;
        for (key, stored) in values {
            let Some(stored) = stored else { continue };
            let namespace = keyspace.strip(&key).and_then(|k| namespaces.find(k));
            let encrypted = namespace.is_some_and(|ns| ns.encrypted);
            let at = (key.as_str(), namespace.map(|ns| ns.prefix.as_str()));
            match reseal_stored(
                redis_store,
                keys,
                at,
                &stored,
                encrypted,
                ctx.pacing.batch_timeout,
            )
            .await
            {
                Ok(Resealed::Rotated) => tally.rotated += 1,
                Ok(Resealed::Sealed) => tally.sealed += 1,
                Ok(Resealed::Unchanged) => tally.unchanged += 1,
                Err(Error::Sealing(_)) => {
                    tally.unreadable += 1;
                    let envelope = cache_shared::codec::split_expiry(&stored).1;
                    if let Some(id) = cache_shared::sealing::key_id_of(envelope)
                        && tally.missing_keys.len() < MAX_MISSING_IDS
                    {
                        tally.missing_keys.insert(id.to_owned());
                    }
                }
                Err(other) => return Err(other.into()),
            }
        }
        if progress.advance(n).await? == Next::Stop {
            return Ok(Outcome::Cancelled(tally.result()));
        }
    }
    progress.report().await?;
    Ok(Outcome::Succeeded(tally.result()))
}

impl Handler for ReencryptParams {
    async fn run(ctx: &JobContext, job: &Payload<Self>) -> Result<Outcome, JobError> {
        run(ctx, &job.job_id, &tenant_of(job)?, &job.params).await
    }
}
