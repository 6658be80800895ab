//! The `cache_operation_logs` table: bulk inserts of shipped batches and the
//! retention sweep.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use crate::error::Error;
use crate::oplog::LogRecord;

/// What storing a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Rows inserted (duplicates of rows already there not counted).
    pub inserted: u64,
    /// Records PostgreSQL refused on their own (a field too long or
    /// malformed); the rest of their batch is stored all the same.
    pub rejected: u64,
}

/// Inserts a batch in one statement; when PostgreSQL refuses it for a
/// record's data, the batch is split in halves until the records it refuses
/// are alone, so one bad record never costs the others (a batch with one bad
/// record takes about 2 log2(n) statements). Records already present are
/// skipped, so a batch delivered twice lands once.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn insert_batch(pool: &PgPool, batch: &[LogRecord]) -> Result<Stored, Error> {
    let mut stored = Stored::default();
    let mut pending: Vec<&[LogRecord]> = vec![batch];
    while let Some(part) = pending.pop() {
        match insert_all(pool, part).await {
            Ok(inserted) => stored.inserted += inserted,
            Err(err) if is_data_error(&err) => {
                if part.len() == 1 {
                    tracing::warn!(%err, request_id = %part[0].request_id, "operation log record refused; the rest of its batch is stored");
                    stored.rejected += 1;
                } else {
                    let (left, right) = part.split_at(part.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(stored)
}

/// A refusal of the data itself (SQLSTATE class 22: too long, bad
/// encoding, out of range), as opposed to the database being unavailable.
fn is_data_error(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22")))
}

/// One statement for the whole of `batch` (arrays unnested server-side,
/// never row by row).
async fn insert_all(exec: impl PgExecutor<'_>, batch: &[LogRecord]) -> Result<u64, sqlx::Error> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut request_id = Vec::with_capacity(batch.len());
    let mut item = Vec::with_capacity(batch.len());
    let mut tenant_id = Vec::with_capacity(batch.len());
    let mut operation = Vec::with_capacity(batch.len());
    let mut cache_key = Vec::with_capacity(batch.len());
    let mut outcome = Vec::with_capacity(batch.len());
    let mut latency_us = Vec::with_capacity(batch.len());
    let mut value_bytes = Vec::with_capacity(batch.len());
    let mut error_code = Vec::with_capacity(batch.len());
    let mut actor = Vec::with_capacity(batch.len());
    let mut occurred_at = Vec::with_capacity(batch.len());
    for r in batch {
        request_id.push(r.request_id.as_str());
        item.push(r.item);
        tenant_id.push(r.tenant_id.as_str());
        operation.push(r.operation.as_str());
        cache_key.push(r.cache_key.as_deref());
        outcome.push(r.outcome.as_str());
        latency_us.push(r.latency_us);
        value_bytes.push(r.value_bytes);
        error_code.push(r.error_code.as_deref());
        actor.push(r.actor.as_deref());
        occurred_at.push(r.occurred_at);
    }
    let done = sqlx::query(
        "insert into cache_operation_logs \
           (request_id, item, tenant_id, operation, cache_key, outcome, latency_us, \
            value_bytes, error_code, actor, occurred_at) \
         select * from unnest($1::varchar[], $2::int[], $3::varchar[], $4::varchar[], \
                              $5::varchar[], $6::varchar[], $7::bigint[], $8::bigint[], \
                              $9::varchar[], $10::varchar[], $11::timestamptz[]) \
         on conflict (request_id, operation, item, occurred_at) do nothing",
    )
    .bind(request_id)
    .bind(item)
    .bind(tenant_id)
    .bind(operation)
    .bind(cache_key)
    .bind(outcome)
    .bind(latency_us)
    .bind(value_bytes)
    .bind(error_code)
    .bind(actor)
    .bind(occurred_at)
    .execute(exec)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes records older than `cutoff` (and the rollups' raw contributions),
/// `chunk` rows at a time so that no statement holds locks for long.
/// Returns the log rows deleted.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn purge_before(pool: &PgPool, cutoff: DateTime<Utc>, chunk: i64) -> Result<u64, Error> {
    let deleted = crate::db::retention::purge(
        pool,
        "cache_operation_logs",
        "occurred_at < $1",
        cutoff,
        chunk,
    )
    .await?;
    sqlx::query("delete from stats_contributions where period_start < $1")
        .bind(cutoff)
        .execute(pool)
        .await?;
    Ok(deleted)
}

/// Records of one request, in item order (for audits and tests).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn of_request(
    exec: impl PgExecutor<'_>,
    request_id: &str,
) -> Result<Vec<LogRecord>, Error> {
    let rows = sqlx::query_as::<_, LogRow>(
        "select request_id, item, tenant_id, operation, cache_key, outcome, latency_us, \
                value_bytes, error_code, actor, occurred_at \
         from cache_operation_logs where request_id = $1 order by item, occurred_at",
    )
    .bind(request_id)
    .fetch_all(exec)
    .await?;
    Ok(rows.into_iter().map(LogRecord::from).collect())
}

#[derive(sqlx::FromRow)]
struct LogRow {
    request_id: String,
    item: i32,
    tenant_id: String,
    operation: String,
    cache_key: Option<String>,
    outcome: String,
    latency_us: Option<i64>,
    value_bytes: Option<i64>,
    error_code: Option<String>,
    actor: Option<String>,
    occurred_at: DateTime<Utc>,
}

impl From<LogRow> for LogRecord {
    fn from(r: LogRow) -> Self {
        LogRecord {
            request_id: r.request_id,
            item: r.item,
            tenant_id: r.tenant_id,
            operation: r.operation,
            cache_key: r.cache_key,
            outcome: r.outcome,
            latency_us: r.latency_us.unwrap_or(0),
            value_bytes: r.value_bytes,
            error_code: r.error_code,
            actor: r.actor,
            occurred_at: r.occurred_at,
        }
    }
}
