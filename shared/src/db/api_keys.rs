//! The `api_keys` table.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor, PgPool};

use crate::api_keys::{NewKey, Role};
use crate::error::Error;

/// One row of `api_keys` (never the key itself).
#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant_id: String,
    pub role: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// The role column as an enum; the table's check constraint keeps it valid.
    pub fn role(&self) -> Role {
        Role::parse(&self.role, "role").unwrap_or(Role::Reader)
    }

    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
}

const COLUMNS: &str = "id, tenant_id, role, name, created_at, last_used_at, expires_at, revoked_at";

/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn insert(
    exec: impl PgExecutor<'_>,
    key: &NewKey,
    tenant: &str,
    role: Role,
    name: Option<&str>,
    expires_in_days: Option<u32>,
) -> Result<ApiKeyRecord, Error> {
    let record = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into api_keys (id, key_hash, tenant_id, role, name, expires_at) \
         values ($1, $2, $3, $4, $5, now() + make_interval(days => $6)) returning {COLUMNS}"
    )))
    .bind(ulid::Ulid::new().to_string())
    .bind(&key.hash[..])
    .bind(tenant)
    .bind(role.as_str())
    .bind(name)
    .bind(expires_in_days.map(|d| i32::try_from(d).unwrap_or(i32::MAX)))
    .fetch_one(exec)
    .await?;
    Ok(record)
}

/// [`insert`] and its audit record (action `key.create`), in one transaction.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn insert_audited(
    pool: &PgPool,
    actor: &str,
    key: &NewKey,
    tenant: &str,
    role: Role,
    name: Option<&str>,
    expires_in_days: Option<u32>,
) -> Result<ApiKeyRecord, Error> {
    let mut tx = pool.begin().await?;
    let record = insert(&mut *tx, key, tenant, role, name, expires_in_days).await?;
    let details =
        serde_json::json!({ "keyId": record.id, "role": record.role, "name": record.name });
    crate::db::admin_actions::record(&mut *tx, actor, tenant, "key.create", &details).await?;
    tx.commit().await?;
    Ok(record)
}

/// [`revoke`] and its audit record (action `key.revoke`), in one transaction.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn revoke_audited(
    pool: &PgPool,
    actor: &str,
    id: &str,
) -> Result<Option<ApiKeyRecord>, Error> {
    let mut tx = pool.begin().await?;
    let Some(record) = revoke(&mut *tx, id).await? else {
        return Ok(None);
    };
    let details = serde_json::json!({ "keyId": record.id, "role": record.role });
    crate::db::admin_actions::record(&mut *tx, actor, &record.tenant_id, "key.revoke", &details)
        .await?;
    tx.commit().await?;
    Ok(Some(record))
}

/// The key with this digest, usable or not.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn find_by_hash(
    exec: impl PgExecutor<'_>,
    hash: &[u8; 32],
) -> Result<Option<ApiKeyRecord>, Error> {
    let record = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from api_keys where key_hash = $1"
    )))
    .bind(&hash[..])
    .fetch_optional(exec)
    .await?;
    Ok(record)
}

/// The key with this id, usable or not.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn find_by_id(
    exec: impl PgExecutor<'_>,
    id: &str,
) -> Result<Option<ApiKeyRecord>, Error> {
    let record = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from api_keys where id = $1"
    )))
    .bind(id)
    .fetch_optional(exec)
    .await?;
    Ok(record)
}

/// Keys newest first, of one tenant or all.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn list(
    exec: impl PgExecutor<'_>,
    tenant: Option<&str>,
) -> Result<Vec<ApiKeyRecord>, Error> {
    let records = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from api_keys where ($1::text is null or tenant_id = $1) \
         order by created_at desc, id desc"
    )))
    .bind(tenant)
    .fetch_all(exec)
    .await?;
    Ok(records)
}

/// Revokes a key; `None` when there is no such key. Revoking twice keeps the
/// first revocation time.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn revoke(exec: impl PgExecutor<'_>, id: &str) -> Result<Option<ApiKeyRecord>, Error> {
    let record = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update api_keys set revoked_at = coalesce(revoked_at, now()) where id = $1 returning {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(exec)
    .await?;
    Ok(record)
}

/// Records that keys were used (batched by the api, at most once a minute per key).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn mark_used(exec: impl PgExecutor<'_>, ids: &[String]) -> Result<(), Error> {
    sqlx::query("update api_keys set last_used_at = now() where id = any($1)")
        .bind(ids)
        .execute(exec)
        .await?;
    Ok(())
}
