//! The `tenant_limits` table: operators' overrides of the default limits.

use sqlx::{FromRow, PgExecutor};

use crate::error::Error;
use crate::limits::{LimitBook, LimitOverrides};

/// One tenant's overrides.
#[derive(Debug, Clone, FromRow)]
pub struct LimitRow {
    pub tenant_id: String,
    pub max_keys: Option<i64>,
    pub max_bytes: Option<i64>,
    pub requests_per_second: Option<i64>,
    pub burst: Option<i64>,
    pub max_active_jobs: Option<i64>,
}

impl LimitRow {
    pub fn overrides(&self) -> LimitOverrides {
        let field = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok());
        LimitOverrides {
            max_keys: field(self.max_keys),
            max_bytes: field(self.max_bytes),
            requests_per_second: field(self.requests_per_second),
            burst: field(self.burst),
            max_active_jobs: field(self.max_active_jobs),
        }
    }
}

const COLUMNS: &str = "tenant_id, max_keys, max_bytes, requests_per_second, burst, max_active_jobs";

/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn get(exec: impl PgExecutor<'_>, tenant: &str) -> Result<Option<LimitRow>, Error> {
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from tenant_limits where tenant_id = $1"
    )))
    .bind(tenant)
    .fetch_optional(exec)
    .await?;
    Ok(row)
}

/// Every tenant's overrides (a few hundred rows at most: one per tenant).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn all(exec: impl PgExecutor<'_>) -> Result<Vec<LimitRow>, Error> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from tenant_limits"
    )))
    .fetch_all(exec)
    .await?;
    Ok(rows)
}

/// Applies an operator's change to a tenant's overrides, recorded as an
/// admin action in the same transaction (so it is on record before any
/// instance applies it); returns the overrides now in force.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn change(
    pool: &sqlx::PgPool,
    tenant: &str,
    patch: &crate::limits::LimitPatch,
    actor: &str,
) -> Result<LimitOverrides, Error> {
    let mut tx = pool.begin().await?;
    // One change of a tenant at a time: two merges cannot lose each other's field.
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('tenant-limits:' || $1, 0))")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let before = get(&mut *tx, tenant)
        .await?
        .map(|row| row.overrides())
        .unwrap_or_default();
    let after = patch.apply(before);
    crate::db::admin_actions::record(
        &mut *tx,
        actor,
        tenant,
        "tenant_limits",
        &serde_json::json!({ "before": before, "after": after }),
    )
    .await?;
    let stored = put(&mut *tx, tenant, &after).await?.overrides();
    tx.commit().await?;
    Ok(stored)
}

/// Stores a tenant's overrides whole (the caller merged them).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn put(
    exec: impl PgExecutor<'_>,
    tenant: &str,
    overrides: &LimitOverrides,
) -> Result<LimitRow, Error> {
    let field = |v: Option<u64>| v.map(crate::saturating_i64);
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into tenant_limits (tenant_id, max_keys, max_bytes, requests_per_second, burst, \
             max_active_jobs) values ($1, $2, $3, $4, $5, $6) \
         on conflict (tenant_id) do update set max_keys = excluded.max_keys, \
             max_bytes = excluded.max_bytes, requests_per_second = excluded.requests_per_second, \
             burst = excluded.burst, max_active_jobs = excluded.max_active_jobs, \
             updated_at = now() \
         returning {COLUMNS}"
    )))
    .bind(tenant)
    .bind(field(overrides.max_keys))
    .bind(field(overrides.max_bytes))
    .bind(field(overrides.requests_per_second))
    .bind(field(overrides.burst))
    .bind(field(overrides.max_active_jobs))
    .fetch_one(exec)
    .await?;
    Ok(row)
}

/// Replaces `book`'s overrides with PostgreSQL's.
///
/// # Errors
///
/// [`Error::StoreUnavailable`]; the book keeps what it had.
pub async fn reload(db: &sqlx::PgPool, book: &LimitBook) -> Result<(), Error> {
    let ticket = book.reload_ticket();
    let rows = all(db).await?;
    book.replace(
        ticket,
        rows.into_iter()
            .map(|row| (row.tenant_id.clone(), row.overrides())),
    );
    Ok(())
}
