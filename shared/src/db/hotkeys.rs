//! The `cache_hotkeys` table: hot keys per tenant and window.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};

use crate::error::Error;

#[derive(Debug, Clone, FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HotKeyRow {
    pub cache_key: String,
    pub window_start: DateTime<Utc>,
    pub window_minutes: i32,
    pub access_count: i64,
    pub hotness_score: f64,
    pub trend: String,
    pub should_preload: bool,
}

/// A tenant's hottest keys of windows starting at or after `since`.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn since(
    exec: impl PgExecutor<'_>,
    tenant: &str,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<HotKeyRow>, Error> {
    let rows = sqlx::query_as(
        "select cache_key, window_start, window_minutes, access_count, hotness_score, trend, \
                should_preload \
         from cache_hotkeys where tenant_id = $1 and window_start >= $2 \
         order by hotness_score desc, access_count desc limit $3",
    )
    .bind(tenant)
    .bind(since)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows)
}
