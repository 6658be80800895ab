//! Monitoring of the public plane (API.md §5): live figures of the caller's
//! tenant from this api instance, and history from the rolled-up tables.

use axum::Json;
use axum::extract::State;
use cache_shared::api_keys::Role;
use cache_shared::db::{hotkeys as hotkey_rows, statistics};
use cache_shared::stats::histogram::{Latency, hit_rate};
use cache_shared::stats::hot_keys::HotKey;
use cache_shared::stats::live::OpSnapshot;
use cache_shared::stats::op::Op;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::auth::policy::Rule;
use crate::error::ApiError;
use crate::extract::{QueryParams, bounded_param};
use crate::state::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stats))
        .routes(routes!(metrics))
        .routes(routes!(latency))
        .routes(routes!(throughput))
        .routes(routes!(hotkeys))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[
    STATS_ROLE,
    METRICS_ROLE,
    LATENCY_ROLE,
    THROUGHPUT_ROLE,
    HOTKEYS_ROLE,
];

fn parse_time(text: &str, field: &'static str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::bad_request(field, format!("{field} must be an RFC 3339 time")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    /// Start of the history, RFC 3339.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// End of the history, RFC 3339.
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// Operator only: act for this tenant (consumed by the authorization layer).
    #[allow(dead_code)]
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"
    )]
    tenant: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct LiveView {
    hits: u64,
    misses: u64,
    /// Reads answered by a negative entry (API.md §10): neither hits nor misses.
    negative_hits: u64,
    /// Percent of reads that found their key; `null` before any read.
    hit_rate: Option<f64>,
    operations: Vec<OpSnapshot>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct StatsView {
    tenant_id: String,
    /// Figures of this api instance since it started.
    live: LiveView,
    uptime_seconds: u64,
    /// Rolled-up periods of every instance, when `from` and `to` are given.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<statistics::StatisticsRow>>,
}

fn live(state: &AppState, caller: &Caller) -> LiveView {
    let tenant = state.cache.stats().tenant(&caller.tenant);
    let (hits, misses) = tenant.lookups();
    LiveView {
        hits,
        misses,
        negative_hits: tenant.negatives(),
        hit_rate: hit_rate((hits, misses)),
        operations: tenant
            .snapshot()
            .into_iter()
            .filter(|op| op.calls > 0)
            .collect(),
    }
}

/// `GET /api/v1/cache/stats` needs at least this role.
const STATS_ROLE: Rule = ("GET", "/api/v1/cache/stats", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/stats",
    tag = "monitoring",
    description = "Live figures; with from and to, rolled-up history too.",
    params(StatsQuery),
    responses((status = 200, description = "Success", body = StatsView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let history = match (q.from.as_deref(), q.to.as_deref()) {
        (None, None) => None,
        (Some(from), Some(to)) => {
            let (from, to) = (parse_time(from, "from")?, parse_time(to, "to")?);
            if from >= to {
                return Err(ApiError::bad_request("from", "from must be before to"));
            }
            Some(
                statistics::history(&state.db, caller.tenant.as_str(), from, to)
                    .await
                    .map_err(ApiError::op("stats"))?,
            )
        }
        _ => return Err(ApiError::bad_request("from", "give both from and to")),
    };
    Ok(Json(StatsView {
        tenant_id: caller.tenant.to_string(),
        live: live(&state, &caller),
        uptime_seconds: state.started_at.elapsed().as_secs(),
        history,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct MetricsView {
    tenant_id: String,
    hit_rate: Option<f64>,
    hits: u64,
    misses: u64,
    /// The tenant's operations per second over the last minute.
    operations_per_second: f64,
    errors: u64,
    calls: u64,
}

/// `GET /api/v1/cache/metrics` needs at least this role.
const METRICS_ROLE: Rule = ("GET", "/api/v1/cache/metrics", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/metrics",
    tag = "monitoring",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = MetricsView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn metrics(State(state): State<AppState>, caller: Caller) -> Json<MetricsView> {
    let tenant = state.cache.stats().tenant(&caller.tenant);
    let (hits, misses) = tenant.lookups();
    let snapshot = tenant.snapshot();
    Json(MetricsView {
        tenant_id: caller.tenant.to_string(),
        hit_rate: hit_rate((hits, misses)),
        hits,
        misses,
        operations_per_second: tenant.rates(1).iter().map(|(_, r)| r).sum(),
        errors: snapshot.iter().map(|o| o.errors).sum(),
        calls: snapshot.iter().map(|o| o.calls).sum(),
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct OpLatency {
    operation: &'static str,
    #[serde(flatten)]
    latency: Latency,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct LatencyView {
    tenant_id: String,
    /// The sliding window the figures cover: the running rollup period and
    /// the ones before it, on this api instance.
    window_minutes: u64,
    /// Milliseconds, measured around the Redis work of each call.
    operations: Vec<OpLatency>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LatencyQuery {
    /// Minutes of the sliding window, 1 to 15 (default 5).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 15)]
    window: Option<String>,
    /// Operator only: act for this tenant (consumed by the authorization layer).
    #[allow(dead_code)]
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"
    )]
    tenant: Option<String>,
}

/// `GET /api/v1/cache/latency` needs at least this role.
const LATENCY_ROLE: Rule = ("GET", "/api/v1/cache/latency", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/latency",
    tag = "monitoring",
    description = "p50/p95/p99/max per operation, in ms, over a sliding window of this api instance's calls.",
    params(LatencyQuery),
    responses((status = 200, description = "Success", body = LatencyView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn latency(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<LatencyQuery>,
) -> Result<Json<LatencyView>, ApiError> {
    let window = q.window.as_deref();
    let minutes = bounded_param(
        window,
        "window",
        1..=15,
        "window must be minutes from 1 to 15",
    )?
    .unwrap_or(5u64);
    let period_minutes = (state.observability.stats_rollup_seconds / 60).max(1);
    let periods = usize::try_from(minutes.div_ceil(period_minutes)).unwrap_or(1);
    let tenant = state.cache.stats().tenant(&caller.tenant);
    let figures = state.instruments.recent.window(&tenant, periods);
    Ok(Json(LatencyView {
        tenant_id: caller.tenant.to_string(),
        window_minutes: minutes,
        operations: Op::ALL
            .iter()
            .filter_map(|op| {
                let latency = figures.ops.get(op.name())?.latency();
                Some(OpLatency {
                    operation: op.name(),
                    latency,
                })
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct OpRates {
    operation: &'static str,
    last_1m: f64,
    last_5m: f64,
    last_15m: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ThroughputView {
    tenant_id: String,
    /// Operations per second of this tenant on this api instance.
    operations: Vec<OpRates>,
    total: OpRates,
}

/// `GET /api/v1/cache/throughput` needs at least this role.
const THROUGHPUT_ROLE: Rule = ("GET", "/api/v1/cache/throughput", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/throughput",
    tag = "monitoring",
    description = "Operations per second over 1, 5 and 15 minutes.",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = ThroughputView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn throughput(State(state): State<AppState>, caller: Caller) -> Json<ThroughputView> {
    let tenant = state.cache.stats().tenant(&caller.tenant);
    let (m1, m5, m15) = (tenant.rates(1), tenant.rates(5), tenant.rates(15));
    let operations: Vec<OpRates> = m1
        .iter()
        .zip(&m5)
        .zip(&m15)
        .map(|(((op, r1), (_, r5)), (_, r15))| OpRates {
            operation: op.name(),
            last_1m: *r1,
            last_5m: *r5,
            last_15m: *r15,
        })
        .collect();
    let total = OpRates {
        operation: "all",
        last_1m: operations.iter().map(|o| o.last_1m).sum(),
        last_5m: operations.iter().map(|o| o.last_5m).sum(),
        last_15m: operations.iter().map(|o| o.last_15m).sum(),
    };
    Json(ThroughputView {
        tenant_id: caller.tenant.to_string(),
        operations: operations
            .into_iter()
            .filter(|o| o.last_15m > 0.0)
            .collect(),
        total,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HotkeysQuery {
    #[param(value_type = Option<u32>, minimum = 1, maximum = 64)]
    limit: Option<String>,
    /// Minutes of rolled-up history to read instead of the live detector.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10080)]
    window: Option<String>,
    /// Operator only: act for this tenant (consumed by the authorization layer).
    #[allow(dead_code)]
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"
    )]
    tenant: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct HotkeysView {
    tenant_id: String,
    /// `live` (this instance, sampled one read in eight) or `history`.
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<HotKey>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<hotkey_rows::HotKeyRow>>,
}

/// `GET /api/v1/cache/hotkeys` needs at least this role.
const HOTKEYS_ROLE: Rule = ("GET", "/api/v1/cache/hotkeys", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/hotkeys",
    tag = "performance",
    params(HotkeysQuery),
    responses((status = 200, description = "Success", body = HotkeysView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn hotkeys(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<HotkeysQuery>,
) -> Result<Json<HotkeysView>, ApiError> {
    let limit = bounded_param(
        q.limit.as_deref(),
        "limit",
        1..=64,
        "limit must be from 1 to 64",
    )?
    .unwrap_or(20usize);
    let window = bounded_param(
        q.window.as_deref(),
        "window",
        1..=10_080,
        "window must be minutes from 1 to 10080",
    )?;
    if let Some(minutes) = window {
        let since = Utc::now() - chrono::Duration::minutes(minutes);
        let rows = hotkey_rows::since(&state.db, caller.tenant.as_str(), since, limit as i64)
            .await
            .map_err(ApiError::op("hotkeys"))?;
        return Ok(Json(HotkeysView {
            tenant_id: caller.tenant.to_string(),
            source: "history",
            keys: None,
            history: Some(rows),
        }));
    }
    let keys = state.cache.stats().tenant(&caller.tenant).hot_keys(limit);
    Ok(Json(HotkeysView {
        tenant_id: caller.tenant.to_string(),
        source: "live",
        keys: Some(keys),
        history: None,
    }))
}
