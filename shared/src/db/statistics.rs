//! The `cache_statistics` table: rolled-up figures per tenant and period.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor, PgPool};

use crate::error::Error;
use crate::stats::rollup::PeriodFigures;

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

/// Adds one instance's figures of a tenant's period, then rewrites the
/// period's row from every instance's contribution. A contribution already
/// recorded (a re-delivered rollup) changes nothing. Returns the merged
/// figures when this contribution was new.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
///
/// `usage` is the tenant's keys and bytes when the period is merged (from
/// the usage accounting), kept as the period's `key_count` and
/// `memory_bytes`.
pub async fn add_contribution(
    pool: &PgPool,
    instance: &str,
    tenant: &str,
    period_start: DateTime<Utc>,
    period_minutes: i32,
    figures: &PeriodFigures,
    usage: Option<crate::quota::Usage>,
) -> Result<Option<PeriodFigures>, Error> {
    let mut tx = pool.begin().await?;
    // One writer per tenant and period at a time: two instances' rollups
    // handled concurrently must both see each other's contribution.
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || '/' || $2::text || '/' || $3::text, 0))")
        .bind(tenant)
        .bind(period_start)
        .bind(period_minutes)
        .execute(&mut *tx)
        .await?;
    let inserted = sqlx::query(
        "insert into stats_contributions (tenant_id, period_start, period_minutes, instance_id, figures) \
         values ($1, $2, $3, $4, $5) on conflict do nothing",
    )
    .bind(tenant)
    .bind(period_start)
    .bind(period_minutes)
    .bind(instance)
    .bind(sqlx::types::Json(figures))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.commit().await?;
        return Ok(None);
    }
    let parts: Vec<(sqlx::types::Json<PeriodFigures>,)> = sqlx::query_as(
        "select figures from stats_contributions \
         where tenant_id = $1 and period_start = $2 and period_minutes = $3",
    )
    .bind(tenant)
    .bind(period_start)
    .bind(period_minutes)
    .fetch_all(&mut *tx)
    .await?;
    let mut merged = PeriodFigures::default();
    for (part,) in &parts {
        merged.merge(part);
    }
    let s = merged.summary();
    sqlx::query(
        "insert into cache_statistics (tenant_id, namespace, period_start, period_minutes, \
            total_operations, hits, misses, errors, hit_rate, avg_latency_ms, p95_latency_ms, \
            p99_latency_ms, key_count, memory_bytes) \
         values ($1, '', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         on conflict (tenant_id, namespace, period_start, period_minutes) do update set \
            total_operations = excluded.total_operations, hits = excluded.hits, \
            misses = excluded.misses, errors = excluded.errors, hit_rate = excluded.hit_rate, \
            avg_latency_ms = excluded.avg_latency_ms, p95_latency_ms = excluded.p95_latency_ms, \
            p99_latency_ms = excluded.p99_latency_ms, \
            key_count = coalesce(excluded.key_count, cache_statistics.key_count), \
            memory_bytes = coalesce(excluded.memory_bytes, cache_statistics.memory_bytes), \
            updated_at = now()",
    )
    .bind(tenant)
    .bind(period_start)
    .bind(period_minutes)
    .bind(crate::saturating_i64(s.total_operations))
    .bind(crate::saturating_i64(s.hits))
    .bind(crate::saturating_i64(s.misses))
    .bind(crate::saturating_i64(s.errors))
    .bind(s.hit_rate)
    .bind(s.avg_latency_ms)
    .bind(s.p95_latency_ms)
    .bind(s.p99_latency_ms)
    .bind(usage.map(|u| crate::saturating_i64(u.keys)))
    .bind(usage.map(|u| crate::saturating_i64(u.bytes)))
    .execute(&mut *tx)
    .await?;
    crate::db::hotkeys::replace_window(
        &mut tx,
        tenant,
        period_start,
        period_minutes,
        &merged.hot_keys,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(merged))
}
