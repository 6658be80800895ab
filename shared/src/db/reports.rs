//! The `memory_reports` table.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgExecutor};

use crate::error::Error;
use crate::memory_report::MemoryReport;

#[derive(Debug, Clone, FromRow)]
pub struct MemoryReportRow {
    pub id: String,
    pub tenant_id: String,
    pub mode: String,
    pub report: Json<MemoryReport>,
    pub created_at: DateTime<Utc>,
}

/// Stores a report; re-running the same job replaces it (idempotent).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn upsert(
    exec: impl PgExecutor<'_>,
    id: &str,
    tenant: &str,
    mode: &str,
    report: &MemoryReport,
) -> Result<(), Error> {
    sqlx::query(
        "insert into memory_reports (id, tenant_id, mode, report) values ($1, $2, $3, $4) \
         on conflict (id) do update set report = excluded.report, created_at = now()",
    )
    .bind(id)
    .bind(tenant)
    .bind(mode)
    .bind(Json(report))
    .execute(exec)
    .await?;
    Ok(())
}

/// The tenant's most recent report.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn latest(
    exec: impl PgExecutor<'_>,
    tenant: &str,
) -> Result<Option<MemoryReportRow>, Error> {
    let row = sqlx::query_as(
        "select id, tenant_id, mode, report, created_at from memory_reports \
         where tenant_id = $1 order by created_at desc, id desc limit 1",
    )
    .bind(tenant)
    .fetch_optional(exec)
    .await?;
    Ok(row)
}
