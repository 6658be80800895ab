//! `flush`: deletes a tenant's keys (all, a namespace, or a glob pattern)
//! with `SCAN` + `UNLINK` in paced batches. Never `KEYS`; `FLUSHDB` never at
//! all: even the operator's whole-server flush only removes tenants' cached
//! values, so queues, sessions and permission entries survive it.
//! Idempotent: a re-run deletes whatever still matches.

use std::time::Duration;

use cache_shared::Error;
use cache_shared::keys::{CacheNamespace, TenantId, validate_key};
use cache_shared::quota::SCAN_UNLINK;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::progress::{Next, Progress};

/// What to flush, as callers send it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlushParams {
    /// A glob over the tenant's keys (`*`, `?`, `[..]` act).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// A literal key prefix, e.g. `user:` (no wildcards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Every tenant's values (operators only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole_server: bool,
}

impl FlushParams {
    /// What is flushed, as the operation log's key: the glob, the namespace
    /// followed by `*`, `*` for the whole tenant or `**` for the whole server.
    pub fn describe(&self) -> String {
        match (&self.pattern, &self.namespace, self.whole_server) {
            (_, _, true) => "**".to_owned(),
            (Some(pattern), _, _) => pattern.clone(),
            (None, Some(namespace), _) => format!("{namespace}*"),
            (None, None, false) => "*".to_owned(),
        }
    }

    /// # Errors
    ///
    /// [`Error::Validation`] for a malformed pattern or namespace, or a
    /// combination that makes no sense.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(pattern) = &self.pattern {
            validate_key(pattern, "pattern")?;
        }
        if let Some(namespace) = &self.namespace {
            validate_key(namespace, "namespace")?;
        }
        match (&self.pattern, &self.namespace, self.whole_server) {
            (Some(_), Some(_), _) => Err(Error::validation(
                "pattern",
                "give pattern or namespace, not both",
            )),
            (Some(_), _, true) | (_, Some(_), true) => Err(Error::validation(
                "wholeServer",
                "wholeServer flushes everything; it takes no pattern or namespace",
            )),
            _ => Ok(()),
        }
    }

    fn scan_pattern(&self, tenant: &TenantId) -> String {
        if self.whole_server {
            return CacheNamespace::all_tenants_pattern().to_owned();
        }
        let ns = CacheNamespace::new(tenant);
        match (&self.pattern, &self.namespace) {
            (Some(glob), _) => ns.pattern(glob),
            (None, Some(prefix)) => ns.literal_prefix_pattern(prefix),
            (None, None) => ns.pattern("*"),
        }
    }
}

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
pub async fn run(
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
    let budget_us = u64::try_from(ctx.pacing.flush_step_budget.as_micros()).unwrap_or(u64::MAX);
    // A step never examines more than a hundredth of a second of the rate
    // cap, so the cap stays smooth even where `TIME` stands still.
    let most = (ctx.pacing.flush_keys_per_second / 100).max(ctx.pacing.flush_batch as u64);
    let mut examined: i64 = 0;
    let mut cursor: u64 = 0;
    loop {
        let (deleted, seen) = redis
            .timed_for(ctx.pacing.batch_timeout, async {
                let mut conn = redis.conn().await?;
                let (next, deleted, seen): (String, i64, i64) = SCAN_UNLINK
                    .prepare_invoke()
                    .arg(cursor)
                    .arg(&pattern)
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
        if progress.advance(deleted).await? == Next::Stop {
            return Ok(Outcome::Cancelled(json!({ "deleted": progress.done() })));
        }
        if cursor == 0 {
            break;
        }
        // The rate cap is the flush's throttle, counted in keys examined (a
        // page that finds nothing to delete still costs Redis a SCAN).
        examined += seen;
        pacer.wait(examined).await;
    }
    let deleted = progress.done();
    progress.set_total(deleted);
    progress.report().await?;
    Ok(Outcome::Succeeded(json!({ "deleted": deleted })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_parameters_are_checked() {
        assert!(FlushParams::default().validate().is_ok());
        let both = FlushParams {
            pattern: Some("a*".into()),
            namespace: Some("a".into()),
            whole_server: false,
        };
        assert!(both.validate().is_err());
        let whole_with_pattern = FlushParams {
            pattern: Some("*".into()),
            whole_server: true,
            ..FlushParams::default()
        };
        assert!(whole_with_pattern.validate().is_err());
    }

    #[test]
    fn patterns_stay_inside_the_tenant() {
        let t = TenantId::parse("acme", "t").unwrap();
        let by_ns = FlushParams {
            namespace: Some("user*:".into()),
            ..FlushParams::default()
        };
        assert_eq!(by_ns.scan_pattern(&t), "c:{acme}:user\\*:*");
        let by_glob = FlushParams {
            pattern: Some("user:*".into()),
            ..FlushParams::default()
        };
        assert_eq!(by_glob.scan_pattern(&t), "c:{acme}:user:*");
    }
}
