//! The `admin_actions` table: who changed what (flushes, restores, eviction
//! policy, pool settings, API keys). It doubles as the audit outbox: each row
//! stays pending until the audit service has accepted it, so an outage of
//! that service delays events but never loses one.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{FromRow, PgExecutor};

use crate::error::Error;

/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn record(
    exec: impl PgExecutor<'_>,
    actor: &str,
    tenant: &str,
    action: &str,
    details: &Json,
) -> Result<(), Error> {
    sqlx::query(
        "insert into admin_actions (actor, tenant_id, action, details) values ($1, $2, $3, $4)",
    )
    .bind(actor)
    .bind(tenant)
    .bind(action)
    .bind(details)
    .execute(exec)
    .await?;
    Ok(())
}

/// An action waiting to reach the audit service.
#[derive(Debug, Clone, FromRow)]
pub struct PendingAudit {
    pub id: i64,
    pub actor: String,
    pub tenant_id: String,
    pub action: String,
    pub details: Json,
    pub created_at: DateTime<Utc>,
    pub audit_attempts: i32,
}

/// Claims up to `limit` due events for `lease` seconds (another worker
/// skips them meanwhile), oldest first.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn claim_audit(
    exec: impl PgExecutor<'_>,
    limit: i64,
    lease_seconds: f64,
) -> Result<Vec<PendingAudit>, Error> {
    let rows = sqlx::query_as(
        "update admin_actions a set audit_attempts = audit_attempts + 1, \
                audit_next_at = now() + make_interval(secs => $2) \
         from (select id from admin_actions \
               where audit_delivered_at is null and audit_next_at <= now() \
               order by id limit $1 for update skip locked) due \
         where a.id = due.id \
         returning a.id, a.actor, a.tenant_id, a.action, a.details, a.created_at, a.audit_attempts",
    )
    .bind(limit)
    .bind(lease_seconds)
    .fetch_all(exec)
    .await?;
    let mut rows: Vec<PendingAudit> = rows;
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn audit_delivered(exec: impl PgExecutor<'_>, id: i64) -> Result<(), Error> {
    sqlx::query(
        "update admin_actions set audit_delivered_at = now(), audit_error = null where id = $1",
    )
    .bind(id)
    .execute(exec)
    .await?;
    Ok(())
}

/// Leaves the event pending, due again after `retry_in_seconds`.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn audit_failed(
    exec: impl PgExecutor<'_>,
    id: i64,
    error: &str,
    retry_in_seconds: f64,
) -> Result<(), Error> {
    sqlx::query(
        "update admin_actions set audit_error = $2, \
                audit_next_at = now() + make_interval(secs => $3) where id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_in_seconds)
    .execute(exec)
    .await?;
    Ok(())
}

/// Events not yet accepted by the audit service.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn audit_backlog(exec: impl PgExecutor<'_>) -> Result<i64, Error> {
    let (n,): (i64,) =
        sqlx::query_as("select count(*) from admin_actions where audit_delivered_at is null")
            .fetch_one(exec)
            .await?;
    Ok(n)
}
