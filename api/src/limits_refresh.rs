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
    cache_shared::shutdown::every(REFRESH_EVERY, stop, move || async move {
        refresh(state, group).await;
    })
    .await;
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
