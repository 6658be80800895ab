//! The `backups` and `backup_entries` tables.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};

use crate::error::Error;

#[derive(Debug, Clone, FromRow)]
pub struct BackupRecord {
    pub id: String,
    pub tenant_id: String,
    pub key_count: i64,
    pub bytes: i64,
    pub complete: bool,
    pub created_at: DateTime<Utc>,
}

/// One key of a backup.
#[derive(Debug, Clone, FromRow)]
pub struct BackupEntry {
    pub cache_key: String,
    pub value: Vec<u8>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Starts (or, on a re-run, restarts) a backup.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn begin(exec: impl PgExecutor<'_>, id: &str, tenant: &str) -> Result<(), Error> {
    sqlx::query(
        "insert into backups (id, tenant_id) values ($1, $2) \
         on conflict (id) do update set complete = false",
    )
    .bind(id)
    .bind(tenant)
    .execute(exec)
    .await?;
    Ok(())
}

/// Adds a batch of entries in one statement; a re-run's entries replace the
/// earlier ones of the same key.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn add(
    exec: impl PgExecutor<'_>,
    id: &str,
    entries: &[BackupEntry],
) -> Result<(), Error> {
    let keys: Vec<&str> = entries.iter().map(|e| e.cache_key.as_str()).collect();
    let values: Vec<&[u8]> = entries.iter().map(|e| e.value.as_slice()).collect();
    let expiries: Vec<Option<DateTime<Utc>>> = entries.iter().map(|e| e.expires_at).collect();
    sqlx::query(
        "insert into backup_entries (backup_id, cache_key, value, expires_at) \
         select $1, * from unnest($2::varchar[], $3::bytea[], $4::timestamptz[]) \
         on conflict (backup_id, cache_key) \
         do update set value = excluded.value, expires_at = excluded.expires_at",
    )
    .bind(id)
    .bind(&keys)
    .bind(&values)
    .bind(&expiries)
    .execute(exec)
    .await?;
    Ok(())
}

/// Marks a backup complete with its totals.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn finish(exec: impl PgExecutor<'_>, id: &str) -> Result<BackupRecord, Error> {
    let row = sqlx::query_as(
        "update backups set complete = true, \
             key_count = (select count(*) from backup_entries where backup_id = $1), \
             bytes = (select coalesce(sum(length(value)), 0) from backup_entries where backup_id = $1) \
         where id = $1 returning id, tenant_id, key_count, bytes, complete, created_at",
    )
    .bind(id)
    .fetch_one(exec)
    .await?;
    Ok(row)
}

/// A complete backup by id.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn get(exec: impl PgExecutor<'_>, id: &str) -> Result<Option<BackupRecord>, Error> {
    let row = sqlx::query_as(
        "select id, tenant_id, key_count, bytes, complete, created_at from backups \
         where id = $1 and complete",
    )
    .bind(id)
    .fetch_optional(exec)
    .await?;
    Ok(row)
}

/// Entries after `after_key` in key order, at most `limit` (a keyset page).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn page(
    exec: impl PgExecutor<'_>,
    id: &str,
    after_key: &str,
    limit: i64,
) -> Result<Vec<BackupEntry>, Error> {
    let rows = sqlx::query_as(
        "select cache_key, value, expires_at from backup_entries \
         where backup_id = $1 and cache_key > $2 order by cache_key limit $3",
    )
    .bind(id)
    .bind(after_key)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows)
}
