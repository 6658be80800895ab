//! Keeps this instance's view of tenant limits and namespaces current: every
//! [`REFRESH_EVERY`] it reloads the operators' overrides and the tenants'
//! namespaces from PostgreSQL,
//! reports itself alive among the api instances (a tenant's rate is shared
//! by the live instances) and hands both to the rate limiter. A change made
//! on any instance applies everywhere within one round.

use std::time::Duration;

use tokio::sync::watch;

use crate::state::AppState;

/// How often limits and the instance count are refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// An instance that has not reported for this long no longer counts.
const ALIVE_WINDOW: Duration = Duration::from_secs(10);

/// The refresh rounds, until `stop` changes.
pub async fn keep_current(state: AppState, stop: watch::Receiver<bool>) {
    let state = &state;
    let group = format!("{}:api:instances", state.jobs.settings().prefix);
    let group = &group;
    let rounds = &std::sync::atomic::AtomicU64::new(0);
    cache_shared::shutdown::every(REFRESH_EVERY, stop, move || async move {
        refresh(state, group).await;
        let round = rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if round.is_multiple_of(HINTS_EVERY_ROUNDS) {
            reload_hints(state).await;
        }
    })
    .await;
}

/// Hot-key hints change with the rollups (minutes): reloaded every 30 s.
const HINTS_EVERY_ROUNDS: u64 = 15;

/// Most hot keys hinted, across tenants.
const MAX_HINTS: i64 = 10_000;

/// Reloads the hot keys flagged `should_preload` in the last half hour.
pub async fn reload_hints(state: &AppState) {
    let since = chrono::Utc::now() - chrono::Duration::minutes(30);
    match cache_shared::db::hotkeys::preload_hints(&state.db, since, MAX_HINTS).await {
        Ok(hints) => state.cache.preload_hints().replace(hints),
        Err(err) => tracing::warn!(%err, "hot-key hints not reloaded; keeping the last ones"),
    }
}

/// One round; a dependency that is down leaves the last known figures.
pub async fn refresh(state: &AppState, group: &str) {
    if let Err(err) = cache_shared::db::tenant_limits::reload(&state.db, &state.limits).await {
        tracing::warn!(%err, "tenant limits not reloaded; keeping the last known ones");
    }
    if let Err(err) =
        cache_shared::db::namespaces::reload(&state.db, state.cache.namespaces()).await
    {
        tracing::warn!(%err, "namespaces not reloaded; keeping the last known ones");
    }
    let instances = match state
        .cache
        .redis()
        .report_alive(group, &state.instance_id, ALIVE_WINDOW)
        .await
    {
        Ok(alive) => alive,
        Err(err) => {
            tracing::warn!(%err, "api instances not counted; keeping the last count");
            state.rate.instances()
        }
    };
    state.rate.refresh(&state.limits, instances);
}
