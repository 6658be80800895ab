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

/// Keys the rollups flagged `should_preload` in windows starting at or
/// after `since`, per tenant (at most `limit`, hottest first): reads of them
/// are asked to refresh earlier (see [`crate::refresh`]).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn preload_hints(
    exec: impl PgExecutor<'_>,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<std::collections::HashMap<String, std::collections::HashSet<String>>, Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select tenant_id, cache_key from cache_hotkeys \
         where should_preload and window_start >= $1 \
         group by tenant_id, cache_key order by max(hotness_score) desc limit $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    let mut hints: std::collections::HashMap<String, std::collections::HashSet<String>> =
        std::collections::HashMap::new();
    for (tenant, key) in rows {
        hints.entry(tenant).or_default().insert(key);
    }
    Ok(hints)
}

/// Hot keys kept per tenant and window.
pub const KEYS_PER_WINDOW: usize = 50;

/// How a key's reads moved against the previous window: more than 20 % up
/// is rising, more than 20 % down falling; a key new to the list is rising.
pub fn trend(previous: Option<i64>, now: i64) -> &'static str {
    match previous {
        None => "rising",
        Some(p) if now as f64 > p as f64 * 1.2 => "rising",
        Some(p) if (now as f64) < p as f64 * 0.8 => "falling",
        Some(_) => "stable",
    }
}

/// Rewrites a tenant's hot keys of one window from `reads` (estimated reads
/// per key), with trend and preload advice against the window before:
/// a key hot in both windows and not falling is worth preloading.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn replace_window(
    tx: &mut sqlx::PgConnection,
    tenant: &str,
    window_start: DateTime<Utc>,
    window_minutes: i32,
    reads: &std::collections::BTreeMap<String, u64>,
) -> Result<(), Error> {
    let mut top: Vec<(&String, i64)> = reads
        .iter()
        .map(|(k, &n)| (k, crate::saturating_i64(n)))
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    top.truncate(KEYS_PER_WINDOW);
    let previous: std::collections::HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "select cache_key, access_count from cache_hotkeys \
         where tenant_id = $1 and window_minutes = $2 \
           and window_start = $3 - make_interval(mins => $2)",
    )
    .bind(tenant)
    .bind(window_minutes)
    .bind(window_start)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    sqlx::query(
        "delete from cache_hotkeys where tenant_id = $1 and window_start = $2 and window_minutes = $3",
    )
    .bind(tenant)
    .bind(window_start)
    .bind(window_minutes)
    .execute(&mut *tx)
    .await?;
    if top.is_empty() {
        return Ok(());
    }
    let seconds = f64::from(window_minutes.max(1)) * 60.0;
    let mut keys = Vec::with_capacity(top.len());
    let mut counts = Vec::with_capacity(top.len());
    let mut scores = Vec::with_capacity(top.len());
    let mut trends = Vec::with_capacity(top.len());
    let mut preload = Vec::with_capacity(top.len());
    for (key, n) in top {
        let before = previous.get(key.as_str()).copied();
        let t = trend(before, n);
        keys.push(key.as_str());
        counts.push(n);
        scores.push(n as f64 / seconds);
        trends.push(t);
        preload.push(before.is_some() && t != "falling");
    }
    sqlx::query(
        "insert into cache_hotkeys (tenant_id, cache_key, window_start, window_minutes, \
            access_count, hotness_score, trend, should_preload) \
         select $1, k, $2, $3, n, s, t, p \
         from unnest($4::varchar[], $5::bigint[], $6::float8[], $7::varchar[], $8::bool[]) \
              as u(k, n, s, t, p)",
    )
    .bind(tenant)
    .bind(window_start)
    .bind(window_minutes)
    .bind(keys)
    .bind(counts)
    .bind(scores)
    .bind(trends)
    .bind(preload)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
