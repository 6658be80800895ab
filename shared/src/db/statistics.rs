//! The `cache_statistics` table: rolled-up figures per tenant and period.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};

use crate::error::Error;

#[derive(Debug, Clone, FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatisticsRow {
    pub namespace: String,
    pub period_start: DateTime<Utc>,
    pub period_minutes: i32,
    pub total_operations: i64,
    pub hits: i64,
    pub misses: i64,
    pub errors: i64,
    pub hit_rate: Option<f64>,
    pub avg_latency_ms: Option<f64>,
    pub p95_latency_ms: Option<f64>,
    pub p99_latency_ms: Option<f64>,
    pub memory_bytes: Option<i64>,
    pub key_count: Option<i64>,
}

/// A tenant's periods that start within `[from, to)`, oldest first (at most 10 000).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn history(
    exec: impl PgExecutor<'_>,
    tenant: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<StatisticsRow>, Error> {
    let rows = sqlx::query_as(
        "select namespace, period_start, period_minutes, total_operations, hits, misses, errors, \
                hit_rate, avg_latency_ms, p95_latency_ms, p99_latency_ms, memory_bytes, key_count \
         from cache_statistics \
         where tenant_id = $1 and period_start >= $2 and period_start < $3 \
         order by period_start, namespace limit 10000",
    )
    .bind(tenant)
    .bind(from)
    .bind(to)
    .fetch_all(exec)
    .await?;
    Ok(rows)
}
