//! `reencrypt`: brings stored values under the current data key (the first
//! of `DATA_ENCRYPTION_KEYS`): values sealed under an older key are opened
//! and sealed again; plain values that should be sealed are sealed — a
//! tenant's values in its encrypted namespaces or, with `platform`, the
//! platform's session data and permission results when
//! `ENCRYPT_PLATFORM_DATA` is on. TTLs are kept, a value changed meanwhile
//! is left to its newer write, and a value whose key is not configured is
//! counted and left as it is (the result names the missing key ids).
//! Idempotent: run again, nothing already current is touched.

use std::collections::BTreeSet;

use cache_jobs::payload::Payload;
use cache_jobs::reencrypt::ReencryptParams;
use cache_shared::Error;
use cache_shared::keys::{PermissionKeys, SessionKeys, TenantId, TenantKeyspace};
use cache_shared::reseal::{self, PlatformSlot, Resealed};
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
/// The hash field of a session that holds its data.
const SESSION_DATA_FIELD: &str = "d";

#[derive(Default)]
struct Tally {
    rotated: u64,
    sealed: u64,
    unchanged: u64,
    unreadable: u64,
    missing_keys: BTreeSet<String>,
}

impl Tally {
    fn count(&mut self, outcome: Result<Resealed, Error>, stored: &[u8]) -> Result<(), Error> {
        match outcome {
            Ok(Resealed::Rotated) => self.rotated += 1,
            Ok(Resealed::Sealed) => self.sealed += 1,
            Ok(Resealed::Unchanged) => self.unchanged += 1,
            Err(Error::Sealing(_)) => {
                self.unreadable += 1;
                let envelope = cache_shared::codec::split_expiry(stored).1;
                if let Some(id) = cache_shared::sealing::key_id_of(envelope)
                    && self.missing_keys.len() < MAX_MISSING_IDS
                {
                    self.missing_keys.insert(id.to_owned());
                }
            }
            Err(other) => return Err(other),
        }
        Ok(())
    }

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

/// What a walk reseals.
enum Values<'a> {
    /// A tenant's values, sealed in its encrypted namespaces.
    Tenant {
        keyspace: &'a TenantKeyspace,
        namespaces: &'a cache_shared::namespaces::NamespaceSet,
    },
    /// Session data (a field of each session's hash).
    Sessions { seal: bool },
    /// Permission results (strings).
    Permissions { seal: bool },
}

impl Values<'_> {
    /// The stored bytes of `keys`, in order.
    async fn read(
        &self,
        conn: &mut cache_shared::redis::Conn,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if let Values::Sessions { .. } = self {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.hget(key, SESSION_DATA_FIELD);
            }
            return Ok(pipe.query_async(conn).await?);
        }
        // Single-key commands: a walk's page may span slots (see ScanPages).
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.get(key);
        }
        Ok(pipe.query_async(conn).await?)
    }

    async fn reseal(&self, ctx: &JobContext, key: &str, stored: &[u8]) -> Result<Resealed, Error> {
        let (redis_store, keys) = (ctx.cache.redis(), ctx.cache.keys());
        let deadline = ctx.pacing.batch_timeout;
        match self {
            Values::Tenant {
                keyspace,
                namespaces,
            } => {
                let namespace = keyspace.strip(key).and_then(|k| namespaces.find(k));
                let seal = namespace.is_some_and(|ns| ns.encrypted);
                let at = (key, namespace.map(|ns| ns.prefix.as_str()));
                reseal::tenant_value(redis_store, keys, at, stored, seal, deadline).await
            }
            Values::Sessions { seal } => {
                let at = (key, PlatformSlot::Field(SESSION_DATA_FIELD));
                reseal::platform_value(redis_store, keys, at, stored, *seal, deadline).await
            }
            Values::Permissions { seal } => {
                let at = (key, PlatformSlot::String);
                reseal::platform_value(redis_store, keys, at, stored, *seal, deadline).await
            }
        }
    }
}

/// Reseals the `values` whose keys match `pattern`; stops early when cancelled.
async fn walk(
    ctx: &JobContext,
    progress: &mut Progress<'_>,
    tally: &mut Tally,
    pattern: &str,
    values: &Values<'_>,
) -> Result<Next, JobError> {
    let mut pages = KeyPages::new(ctx, pattern);
    while let Some(page) = pages
        .next(async |conn, keys| {
            let stored = values.read(conn, &keys).await?;
            Ok(keys.into_iter().zip(stored).collect::<Vec<_>>())
        })
        .await?
    {
        let n = page.len() as i64;
        for (key, stored) in page {
            let Some(stored) = stored else { continue };
            tally.count(values.reseal(ctx, &key, &stored).await, &stored)?;
        }
        if progress.advance(n).await? == Next::Stop {
            return Ok(Next::Stop);
        }
    }
    Ok(Next::Continue)
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
    if ctx.cache.keys().is_empty() {
        return Err(JobError::from(Error::Sealing(
            "reencrypt needs DATA_ENCRYPTION_KEYS on the worker".into(),
        )));
    }
    // Which namespaces are encrypted now, not at the last periodic reload.
    cache_shared::db::namespaces::reload(&ctx.db, ctx.cache.namespaces()).await?;
    let mut progress = Progress::new(&ctx.db, job_id);
    let mut tally = Tally::default();
    let stopped = if params.platform {
        let seal = ctx.cache.seals_platform();
        let sessions = format!("{}*", SessionKeys::SESSION_PREFIX);
        let permissions = format!("{}*", PermissionKeys::ENTRY_PREFIX);
        walk(
            ctx,
            &mut progress,
            &mut tally,
            &sessions,
            &Values::Sessions { seal },
        )
        .await?
            == Next::Stop
            || walk(
                ctx,
                &mut progress,
                &mut tally,
                &permissions,
                &Values::Permissions { seal },
            )
            .await?
                == Next::Stop
    } else {
        let keyspace = TenantKeyspace::new(tenant);
        let pattern = keyspace.pattern(params.pattern.as_deref().unwrap_or("*"));
        let namespaces = ctx.cache.namespaces().of(tenant.as_str());
        let values = Values::Tenant {
            keyspace: &keyspace,
            namespaces: &namespaces,
        };
        walk(ctx, &mut progress, &mut tally, &pattern, &values).await? == Next::Stop
    };
    if stopped {
        return Ok(Outcome::Cancelled(tally.result()));
    }
    progress.report().await?;
    Ok(Outcome::Succeeded(tally.result()))
}

impl Handler for ReencryptParams {
    async fn run(ctx: &JobContext, job: &Payload<Self>) -> Result<Outcome, JobError> {
        run(ctx, &job.job_id, &tenant_of(job)?, &job.params).await
    }
}
