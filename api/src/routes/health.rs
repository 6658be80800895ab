//! Health, readiness, ping, the public plane's status and the internal
//! metrics report.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cache_shared::Error;
use cache_shared::api_keys::Role;
use cache_shared::health::{self, HealthReport, Status};
use cache_shared::redis::BYTES_PER_MIB;
use cache_shared::stats::histogram::hit_rate;
use serde::Serialize;

use crate::auth::Caller;
use crate::auth::policy::Rule;
use crate::error::{ApiError, SERVICE_NAME};
use crate::state::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health_open))
        .routes(routes!(health_v1))
        .routes(routes!(health_internal))
        .routes(routes!(ready))
        .routes(routes!(ping))
        .routes(routes!(metrics))
}

/// `/api/v1/cache/status`: behind the public plane's authorization.
pub fn public_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[STATUS_ROLE];

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct HealthView {
    service: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    report: HealthReport,
    /// Jobs waiting and dead per queue; absent when Redis is down.
    #[schema(value_type = Option<Object>)]
    queue: Option<cache_jobs::queue::QueueDepth>,
}

/// `200` when Redis answers (`ok`, or `degraded` without Postgres or a
/// worker), `503` with `down` when it does not.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    description = "200 ok/degraded, 503 down (this body, not the envelope). Also at /api/v1/cache/health.",
    responses((status = 200, description = "Success", body = Object), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope))
)]
async fn health_open(State(state): State<AppState>) -> Response {
    let mut report = health::probe(state.cache.redis(), &state.db).await;
    let queue = if state.queue_has_own_redis {
        let started = std::time::Instant::now();
        let depth = state.jobs.depth().await;
        report = report.with_queue_redis(depth.as_ref().map(|_| started.elapsed()));
        depth.ok()
    } else if report.redis_up() {
        state.jobs.depth().await.ok()
    } else {
        None
    };
    let status = if report.status == Status::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let view = HealthView {
        service: SERVICE_NAME,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started_at.elapsed().as_secs(),
        report,
        queue,
    };
    (status, Json(view)).into_response()
}

#[utoipa::path(
    get,
    path = "/api/v1/cache/health",
    tag = "health",
    description = "As GET /health.",
    responses((status = 200, description = "Success", body = Object), (status = 503, description = "Redis is down", body = Object))
)]
async fn health_v1(state: State<AppState>) -> Response {
    health_open(state).await
}

#[utoipa::path(
    get,
    path = "/internal/cache/health",
    tag = "health",
    security(("serviceToken" = [])),
    responses((status = 200, description = "Success", body = Object), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope))
)]
async fn health_internal(state: State<AppState>, _caller: Caller) -> Response {
    health_open(state).await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Ready {
    status: &'static str,
    /// Each node of a Redis Cluster (`REDIS_MODE=cluster` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<Vec<health::NodeCheck>>,
}

#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    description = "503 envelope unless Redis and Postgres answer.",
    responses((status = 200, description = "Success", body = Ready), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope))
)]
async fn ready(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let report = health::probe(state.cache.redis(), &state.db).await;
    if !report.redis_up() {
        return Err(Error::CacheUnavailable("redis is not answering".into()).into());
    }
    if !report.postgres_up() {
        return Err(Error::StoreUnavailable("postgres is not answering".into()).into());
    }
    Ok(Json(Ready {
        status: "ready",
        nodes: report.checks.redis.nodes,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Pong {
    pong: bool,
    redis_latency_ms: f64,
}

#[utoipa::path(
    get,
    path = "/api/v1/cache/ping",
    tag = "health",
    responses((status = 200, description = "Success", body = Pong), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope))
)]
async fn ping(State(state): State<AppState>) -> Result<Json<Pong>, ApiError> {
    let latency = state
        .cache
        .redis()
        .ping()
        .await
        .map_err(ApiError::op("ping"))?;
    Ok(Json(Pong {
        pong: true,
        redis_latency_ms: latency.as_secs_f64() * 1000.0,
    }))
}

/// The service design's metrics report (also posted to the monitoring service).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetricsReport {
    /// Percent of reads that found their key since start; `null` before any read.
    hit_rate: Option<f64>,
    /// Redis `used_memory` in MiB.
    memory_usage: f64,
    memory_usage_bytes: u64,
    /// Clients connected to Redis.
    connection_count: u64,
    /// This api instance's cache operations per second over the last minute.
    operations_per_second: f64,
    hits: u64,
    misses: u64,
    total_keys: u64,
}

#[utoipa::path(
    get,
    path = "/internal/cache/metrics",
    tag = "health",
    security(("serviceToken" = [])),
    responses((status = 200, description = "Success", body = MetricsReport), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope))
)]
async fn metrics(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<MetricsReport>, ApiError> {
    metrics_report(&state)
        .await
        .map(Json)
        .map_err(ApiError::op("metrics"))
}

/// This instance's figures and Redis's, now.
pub(crate) async fn metrics_report(state: &AppState) -> Result<MetricsReport, Error> {
    let figures = state.cache.redis().server_figures().await?;
    let used = figures.used_memory_bytes;
    let (hits, misses) = state.cache.stats().lookups();
    Ok(MetricsReport {
        hit_rate: hit_rate((hits, misses)),
        memory_usage: used as f64 / BYTES_PER_MIB,
        memory_usage_bytes: used,
        connection_count: figures.connected_clients,
        operations_per_second: state.cache.stats().operations_per_second(),
        hits,
        misses,
        total_keys: figures.total_keys,
    })
}

/// `GET /metrics`: the Prometheus text format; with `METRICS_TOKEN` set, only
/// for `Authorization: Bearer <that token>`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)
    )
)]
pub async fn scrape(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::auth::metrics_access(&state, &headers)?;
    let body = state
        .instruments
        .metrics
        .render(
            &state.cache,
            &state.jobs,
            state.instruments.ops.as_ref(),
            &state.services,
        )
        .await;
    Ok((
        [(header::CONTENT_TYPE, cache_shared::metrics::TEXT_FORMAT)],
        body,
    )
        .into_response())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct StatusView {
    service: &'static str,
    version: &'static str,
    build: &'static str,
    uptime_seconds: u64,
    tenant_id: String,
    #[schema(value_type = String)]
    role: Role,
    #[schema(value_type = Object)]
    queue: cache_jobs::queue::QueueDepth,
}

/// `GET /api/v1/cache/status` needs at least this role.
const STATUS_ROLE: Rule = ("GET", "/api/v1/cache/status", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/status",
    tag = "health",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = StatusView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn status(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<StatusView>, ApiError> {
    let queue = state.jobs.depth().await.map_err(ApiError::op("status"))?;
    Ok(Json(StatusView {
        service: SERVICE_NAME,
        version: env!("CARGO_PKG_VERSION"),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        uptime_seconds: state.started_at.elapsed().as_secs(),
        tenant_id: caller.tenant.to_string(),
        role: caller.role(),
        queue,
    }))
}
