//! The `schedules` table.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{FromRow, PgExecutor};

use crate::error::Error;

#[derive(Debug, Clone, FromRow)]
pub struct ScheduleRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: Option<String>,
    pub cron: String,
    pub timezone: String,
    pub job_type: String,
    pub params: Json,
    pub enabled: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_job_id: Option<String>,
    /// The API key whose rights the schedule fires with (the last to define it).
    pub created_by: Option<String>,
    /// Why the service disabled the schedule, if it did.
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a caller sets on a schedule.
#[derive(Debug, Clone)]
pub struct ScheduleFields {
    pub name: Option<String>,
    pub cron: String,
    pub timezone: String,
    pub job_type: String,
    pub params: Json,
    pub enabled: bool,
    pub next_run_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant_id, name, cron, timezone, job_type, params, enabled, \
     next_run_at, last_run_at, last_job_id, created_by, disabled_reason, created_at, updated_at";

/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn insert(
    exec: impl PgExecutor<'_>,
    id: &str,
    tenant: &str,
    fields: &ScheduleFields,
    created_by: &str,
) -> Result<ScheduleRecord, Error> {
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into schedules (id, tenant_id, name, cron, timezone, job_type, params, enabled, \
             next_run_at, created_by) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) returning {COLUMNS}"
    )))
    .bind(id)
    .bind(tenant)
    .bind(&fields.name)
    .bind(&fields.cron)
    .bind(&fields.timezone)
    .bind(&fields.job_type)
    .bind(&fields.params)
    .bind(fields.enabled)
    .bind(fields.next_run_at)
    .bind(created_by)
    .fetch_one(exec)
    .await?;
    Ok(row)
}

/// Replaces a schedule's fields; `None` when it is not the tenant's. The
/// schedule fires as `defined_by` from now on, and is no longer disabled by
/// the service.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn update(
    exec: impl PgExecutor<'_>,
    id: &str,
    tenant: &str,
    fields: &ScheduleFields,
    defined_by: &str,
) -> Result<Option<ScheduleRecord>, Error> {
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update schedules set name = $3, cron = $4, timezone = $5, job_type = $6, params = $7, \
             enabled = $8, next_run_at = $9, created_by = $10, disabled_reason = null, \
             updated_at = now() \
         where id = $1 and tenant_id = $2 returning {COLUMNS}"
    )))
    .bind(id)
    .bind(tenant)
    .bind(&fields.name)
    .bind(&fields.cron)
    .bind(&fields.timezone)
    .bind(&fields.job_type)
    .bind(&fields.params)
    .bind(fields.enabled)
    .bind(fields.next_run_at)
    .bind(defined_by)
    .fetch_optional(exec)
    .await?;
    Ok(row)
}

/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn get(
    exec: impl PgExecutor<'_>,
    id: &str,
    tenant: &str,
) -> Result<Option<ScheduleRecord>, Error> {
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from schedules where id = $1 and tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(exec)
    .await?;
    Ok(row)
}

/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn list(exec: impl PgExecutor<'_>, tenant: &str) -> Result<Vec<ScheduleRecord>, Error> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from schedules where tenant_id = $1 order by created_at desc, id desc"
    )))
    .bind(tenant)
    .fetch_all(exec)
    .await?;
    Ok(rows)
}

/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn delete(exec: impl PgExecutor<'_>, id: &str, tenant: &str) -> Result<bool, Error> {
    let done = sqlx::query("delete from schedules where id = $1 and tenant_id = $2")
        .bind(id)
        .bind(tenant)
        .execute(exec)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Enabled schedules whose next run is due.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn due(exec: impl PgExecutor<'_>, limit: i64) -> Result<Vec<ScheduleRecord>, Error> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from schedules where enabled and next_run_at <= now() \
         order by next_run_at limit $1"
    )))
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows)
}

/// Claims the tick `due` of a schedule by moving it to `next`; only one
/// claimant of a tick succeeds.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn claim(
    exec: impl PgExecutor<'_>,
    id: &str,
    due: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "update schedules set next_run_at = $3, last_run_at = $2, updated_at = now() \
         where id = $1 and enabled and next_run_at = $2",
    )
    .bind(id)
    .bind(due)
    .bind(next)
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Stops a schedule that may no longer fire, saying why (shown to its tenant).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn disable(exec: impl PgExecutor<'_>, id: &str, reason: &str) -> Result<(), Error> {
    sqlx::query(
        "update schedules set enabled = false, next_run_at = null, disabled_reason = $2, \
             updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(exec)
    .await?;
    Ok(())
}

/// Records the job a tick started.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn record_job(exec: impl PgExecutor<'_>, id: &str, job_id: &str) -> Result<(), Error> {
    sqlx::query("update schedules set last_job_id = $2 where id = $1")
        .bind(id)
        .bind(job_id)
        .execute(exec)
        .await?;
    Ok(())
}
