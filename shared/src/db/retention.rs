//! Retention of what jobs leave behind: finished jobs (their idempotency
//! keys go with them), backups (with their entries) and memory reports older
//! than `JOB_RETENTION_DAYS` are deleted, a chunk at a time.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::Error;

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub jobs: u64,
    pub backups: u64,
    pub reports: u64,
}

/// Deletes finished jobs, backups and reports older than `cutoff`, `chunk`
/// rows per statement (so no statement holds locks for long; workers
/// sweeping at once take disjoint rows). Jobs still queued or running are
/// kept however old.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn sweep(pool: &PgPool, cutoff: DateTime<Utc>, chunk: i64) -> Result<Swept, Error> {
    Ok(Swept {
        jobs: purge(
            pool,
            "jobs",
            "status in ('succeeded', 'failed', 'cancelled') and coalesce(finished_at, created_at) < $1",
            cutoff,
            chunk,
        )
        .await?,
        backups: purge(pool, "backups", "created_at < $1", cutoff, chunk).await?,
        reports: purge(pool, "memory_reports", "created_at < $1", cutoff, chunk).await?,
    })
}

/// Deletes the rows of `table` (keyed by `id`) matching `condition` (on
/// `$1`, the cutoff), `chunk` at a time. Workers sweeping at once take
/// disjoint chunks (skip locked) instead of queueing on each other's rows,
/// each until none is left.
pub(crate) async fn purge(
    pool: &PgPool,
    table: &'static str,
    condition: &'static str,
    cutoff: DateTime<Utc>,
    chunk: i64,
) -> Result<u64, Error> {
    let statement = format!(
        "delete from {table} where id in \
           (select id from {table} where {condition} limit $2 for update skip locked)"
    );
    let mut deleted = 0;
    loop {
        let done = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .bind(cutoff)
            .bind(chunk)
            .execute(pool)
            .await?;
        deleted += done.rows_affected();
        if done.rows_affected() < u64::try_from(chunk).unwrap_or(0) {
            return Ok(deleted);
        }
    }
}
