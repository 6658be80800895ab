//! The `admin_actions` table: who changed what (flushes, restores, eviction
//! policy, pool settings, API keys). It doubles as the audit outbox: each row
//! stays pending until the audit service has accepted it, so an outage of
//! that service delays events but never loses one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{FromRow, PgExecutor};

use crate::error::Error;

/// Records an action that has happened; returns its id.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn record(
    exec: impl PgExecutor<'_>,
    actor: &str,
    tenant: &str,
    action: &str,
    details: &Json,
) -> Result<i64, Error> {
    record_held(exec, actor, tenant, action, details, Duration::ZERO).await
}

/// Records an action that is about to happen (a job being queued), kept
/// from the audit service for `hold`: [`release`] once it happened,
/// [`forget`] if it did not. A hold that is never settled lapses, and the
/// event goes out then.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn record_held(
    exec: impl PgExecutor<'_>,
    actor: &str,
    tenant: &str,
    action: &str,
    details: &Json,
    hold: Duration,
) -> Result<i64, Error> {
    let (id,): (i64,) = sqlx::query_as(
        "insert into admin_actions (actor, tenant_id, action, details, audit_next_at) \
         values ($1, $2, $3, $4, now() + make_interval(secs => $5)) returning id",
    )
    .bind(actor)
    .bind(tenant)
    .bind(action)
    .bind(details)
    .bind(hold.as_secs_f64())
    .fetch_one(exec)
    .await?;
    Ok(id)
}

/// Makes a held action due for the audit service now.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn release(exec: impl PgExecutor<'_>, id: i64) -> Result<(), Error> {
    sqlx::query(
        "update admin_actions set audit_next_at = now() \
         where id = $1 and audit_delivered_at is null",
    )
    .bind(id)
    .execute(exec)
    .await?;
    Ok(())
}

/// Removes the record of a held action that did not happen after all (its
/// job could not be queued); the hold kept it from the audit service.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn forget(exec: impl PgExecutor<'_>, id: i64) -> Result<(), Error> {
    sqlx::query("delete from admin_actions where id = $1 and audit_delivered_at is null")
        .bind(id)
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
}

/// Claims, for `lease_seconds`, the oldest pending events up to the first
/// one that is not due (waiting for a retry, or claimed by another worker):
/// events go out in the order they happened, one worker at a time. Rows are
/// locked while claimed, so two workers never claim the same event.
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
        "with head as ( \
             select id, audit_next_at from admin_actions \
             where audit_delivered_at is null order by id limit $1 for update), \
         due as ( \
             select id from head where audit_next_at <= now() and id < coalesce( \
                 (select min(id) from head where audit_next_at > now()), \
                 9223372036854775807)) \
         update admin_actions a set audit_attempts = audit_attempts + 1, \
                audit_next_at = now() + make_interval(secs => $2) \
         from due where a.id = due.id \
         returning a.id, a.actor, a.tenant_id, a.action, a.details, a.created_at",
    )
    .bind(limit)
    .bind(lease_seconds)
    .fetch_all(exec)
    .await?;
    let mut rows: Vec<PendingAudit> = rows;
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// Closes an event the audit service refused as such (a 4xx): kept with the
/// refusal in `audit_error`, never sent again.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn audit_refused(exec: impl PgExecutor<'_>, id: i64, error: &str) -> Result<(), Error> {
    sqlx::query(
        "update admin_actions set audit_delivered_at = now(), audit_error = $2 where id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(exec)
    .await?;
    Ok(())
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
