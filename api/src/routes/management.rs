//! Management and performance routes of the public plane (API.md §5): server
//! and tenant information, the connection pool, eviction policy, memory
//! analysis reports, compression and the performance report.

use cache_shared::api_keys::Role;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use cache_jobs::compress::CompressParams;
use cache_jobs::memory_analysis::AnalysisParams;
use cache_jobs::queue::JobSpec;
use cache_shared::Error;
use cache_shared::cache::Compressed;
use cache_shared::db::{admin_actions, reports};
use cache_shared::memory_report::{
    KeySize, MemoryReport, Recommendation, Signals, recommendations,
};
use cache_shared::redis::ConnectionStats;
use cache_shared::stats::histogram::hit_rate;
use cache_shared::stats::hot_keys::HotKey;
use cache_shared::stats::live::OpSnapshot;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::auth::policy::Rule;
use crate::error::ApiError;
use crate::extract::{JsonBody, OptionalJsonBody, PathParam};
use crate::routes::jobs::start_job;
use crate::state::AppState;
use crate::views::JobAccepted;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(info))
        .routes(routes!(memory))
        .routes(routes!(connections))
        .routes(routes!(connections_config))
        .routes(routes!(latest_analysis, start_analysis))
        .routes(routes!(compress_pattern))
        .routes(routes!(compress_key))
        .routes(routes!(eviction_policy))
        .routes(routes!(performance))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[
    INFO_ROLE,
    MEMORY_ROLE,
    CONNECTIONS_ROLE,
    CONNECTIONS_CONFIG_ROLE,
    EVICTION_POLICY_ROLE,
    LATEST_ANALYSIS_ROLE,
    START_ANALYSIS_ROLE,
    COMPRESS_PATTERN_ROLE,
    COMPRESS_KEY_ROLE,
    PERFORMANCE_ROLE,
];

fn number(map: &std::collections::HashMap<String, String>, field: &str) -> Option<u64> {
    map.get(field).and_then(|v| v.parse().ok())
}

/// `GET /api/v1/cache/info` needs at least this role.
const INFO_ROLE: Rule = ("GET", "/api/v1/cache/info", Role::Reader);

/// The operator sees the whole parsed `INFO`; a tenant sees its own key count
/// and memory estimate plus the server's version and uptime.
#[utoipa::path(
    get,
    path = "/api/v1/cache/info",
    tag = "management",
    description = "Operator: the whole parsed INFO; tenant: its key count and memory estimate.",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = Object), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn info(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let op = ApiError::op("info");
    let redis = state.cache.redis();
    if caller.role() == Role::Operator {
        let all = redis.info("everything").await.map_err(&op)?;
        return Ok(Json(json!({ "scope": "server", "info": all })));
    }
    let server = redis.info("server").await.map_err(&op)?;
    // From the usage accounting: one small script, not a walk of the keyspace.
    let usage = state.cache.usage(&caller.tenant).await.map_err(&op)?;
    let report = reports::latest(&state.db, caller.tenant.as_str())
        .await
        .map_err(&op)?;
    Ok(Json(json!({
        "scope": "tenant",
        "tenantId": caller.tenant.as_str(),
        "keyCount": usage.keys,
        "keyCountComplete": true,
        "bytes": usage.bytes,
        "memoryEstimateBytes": report.as_ref().map(|r| r.report.0.total_bytes),
        "memoryEstimateFrom": report.as_ref().map(|r| r.created_at.to_rfc3339()),
        "redisVersion": server.get("redis_version"),
        "uptimeSeconds": number(&server, "uptime_in_seconds"),
    })))
}

/// `GET /api/v1/cache/memory` needs at least this role.
const MEMORY_ROLE: Rule = ("GET", "/api/v1/cache/memory", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/memory",
    tag = "management",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = Object), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn memory(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let op = ApiError::op("memory");
    let figures = state.cache.redis().server_figures().await.map_err(&op)?;
    let server = json!({
        "usedBytes": figures.used_memory_bytes,
        "maxBytes": figures.max_memory_bytes,
        "usedPercent": (figures.max_memory_bytes > 0)
            .then(|| figures.used_memory_bytes as f64 * 100.0 / figures.max_memory_bytes as f64),
        "evictedKeys": figures.evicted_keys,
    });
    let limits = state.limits.of(caller.tenant.as_str());
    let usage = state.cache.usage(&caller.tenant).await.map_err(&op)?;
    let quota = QuotaView {
        max_keys: limits.max_keys,
        max_bytes: limits.max_bytes,
        keys: usage.keys,
        bytes: usage.bytes,
    };
    if caller.role() == Role::Operator {
        let details = state.cache.redis().info("memory").await.map_err(&op)?;
        return Ok(Json(
            json!({ "scope": "server", "server": server, "info": details, "quota": quota }),
        ));
    }
    let report = reports::latest(&state.db, caller.tenant.as_str())
        .await
        .map_err(&op)?;
    Ok(Json(json!({
        "scope": "tenant",
        "tenantId": caller.tenant.as_str(),
        "server": server,
        "tenantBytes": report.as_ref().map(|r| r.report.0.total_bytes),
        "tenantBytesFrom": report.as_ref().map(|r| r.created_at.to_rfc3339()),
        "quota": quota,
    })))
}

/// The acted-on tenant's usage against its quota (`0`: unlimited).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct QuotaView {
    max_keys: u64,
    max_bytes: u64,
    keys: u64,
    bytes: u64,
}

/// `GET /api/v1/cache/connections` needs at least this role.
const CONNECTIONS_ROLE: Rule = ("GET", "/api/v1/cache/connections", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/connections",
    tag = "management",
    responses((status = 200, description = "Success", body = ConnectionStats), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn connections(State(state): State<AppState>, _caller: Caller) -> Json<ConnectionStats> {
    Json(state.cache.redis().connection_stats())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PoolConfig {
    max_size: Option<usize>,
    command_timeout_ms: Option<u64>,
}

/// `PUT /api/v1/cache/connections/config` needs at least this role.
const CONNECTIONS_CONFIG_ROLE: Rule = ("PUT", "/api/v1/cache/connections/config", Role::Operator);

#[utoipa::path(
    put,
    path = "/api/v1/cache/connections/config",
    tag = "management",
    description = "Operator: resize the pool (pool mode) and change the per-request timeout.",
    request_body = PoolConfig,
    responses((status = 200, description = "Success", body = ConnectionStats), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn connections_config(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<PoolConfig>,
) -> Result<Json<ConnectionStats>, ApiError> {
    let op = ApiError::op("connections.config");
    if body.max_size.is_none() && body.command_timeout_ms.is_none() {
        return Err(op(Error::validation(
            "body",
            "give maxSize and/or commandTimeoutMs",
        )));
    }
    let details = json!({ "maxSize": body.max_size, "commandTimeoutMs": body.command_timeout_ms });
    let stats = on_record(&state, &caller, "connections.config", &details, async {
        state.cache.redis().reconfigure(
            body.max_size,
            body.command_timeout_ms.map(Duration::from_millis),
        )
    })
    .await
    .map_err(&op)?;
    Ok(Json(stats))
}

/// How long an admin action's audit event waits for the action to be done.
const ACTION_HOLD: Duration = Duration::from_secs(30);

/// Does an admin action only once it is on record: recorded first (its
/// audit event held back), then done, then released to the audit service,
/// or forgotten when it failed. An action never takes effect unrecorded.
async fn on_record<T>(
    state: &AppState,
    caller: &Caller,
    action: &str,
    details: &Value,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let id = admin_actions::record_held(
        &state.db,
        &caller.label(),
        caller.tenant.as_str(),
        action,
        details,
        ACTION_HOLD,
    )
    .await?;
    let done = work.await;
    let settled = match &done {
        Ok(_) => admin_actions::release(&state.db, id).await,
        Err(_) => admin_actions::forget(&state.db, id).await,
    };
    if let Err(err) = settled {
        tracing::error!(%err, action, "could not settle an admin action's record (its hold lapses on its own)");
    }
    done
}

/// Redis's eight `maxmemory-policy` values.
const EVICTION_POLICIES: [&str; 8] = [
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
];

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[schema(
        pattern = r"^(noeviction|allkeys-lru|allkeys-lfu|allkeys-random|volatile-lru|volatile-lfu|volatile-random|volatile-ttl)$"
    )]
    policy: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PolicyView {
    policy: String,
    previous: Option<String>,
}

/// `POST /api/v1/cache/eviction/policy` needs at least this role.
const EVICTION_POLICY_ROLE: Rule = ("POST", "/api/v1/cache/eviction/policy", Role::Operator);

#[utoipa::path(
    post,
    path = "/api/v1/cache/eviction/policy",
    tag = "performance",
    description = "Operator: one of Redis eight maxmemory-policy values.",
    request_body = PolicyBody,
    responses((status = 200, description = "Success", body = PolicyView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn eviction_policy(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Result<Json<PolicyView>, ApiError> {
    let op = ApiError::op("eviction.policy");
    if !EVICTION_POLICIES.contains(&body.policy.as_str()) {
        return Err(op(Error::validation(
            "policy",
            format!("policy must be one of {}", EVICTION_POLICIES.join(", ")),
        )));
    }
    let redis = state.cache.redis();
    let previous = redis.config_get("maxmemory-policy").await.map_err(&op)?;
    let details = json!({ "policy": body.policy, "previous": previous });
    on_record(&state, &caller, "eviction.policy", &details, async {
        redis.config_set("maxmemory-policy", &body.policy).await
    })
    .await
    .map_err(&op)?;
    Ok(Json(PolicyView {
        policy: body.policy,
        previous,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReportView {
    report_id: String,
    tenant_id: String,
    mode: String,
    created_at: String,
    report: MemoryReport,
}

/// `GET /api/v1/cache/memory/analyze` needs at least this role.
const LATEST_ANALYSIS_ROLE: Rule = ("GET", "/api/v1/cache/memory/analyze", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/memory/analyze",
    tag = "management",
    description = "The latest completed report; 404 when there is none.",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = ReportView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn latest_analysis(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ReportView>, ApiError> {
    let op = ApiError::op("memory.analyze");
    let row = reports::latest(&state.db, caller.tenant.as_str())
        .await
        .map_err(&op)?
        .ok_or_else(|| Error::NotFound {
            what: "memory analysis report".into(),
        })
        .map_err(&op)?;
    Ok(Json(ReportView {
        report_id: row.id,
        tenant_id: row.tenant_id,
        mode: row.mode,
        created_at: crate::views::timestamp(row.created_at),
        report: row.report.0,
    }))
}

/// `POST /api/v1/cache/memory/analyze` needs at least this role.
const START_ANALYSIS_ROLE: Rule = ("POST", "/api/v1/cache/memory/analyze", Role::Admin);

#[utoipa::path(
    post,
    path = "/api/v1/cache/memory/analyze",
    tag = "management",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ("Idempotency-Key" = Option<String>, Header)),
    request_body = AnalysisParams,
    responses((status = 202, description = "Success", body = JobAccepted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn start_analysis(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    OptionalJsonBody(params): OptionalJsonBody<AnalysisParams>,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    start_job(&state, &caller, &headers, JobSpec::MemoryAnalysis(params)).await
}

/// `POST /api/v1/cache/compress/{pattern}` needs at least this role.
const COMPRESS_PATTERN_ROLE: Rule = ("POST", "/api/v1/cache/compress/{pattern}", Role::Admin);

#[utoipa::path(
    post,
    path = "/api/v1/cache/compress/{pattern}",
    tag = "performance",
    params(("pattern" = String, Path, description = "Glob over the tenant keys (1–512 bytes, no control characters)", min_length = 1, max_length = 512), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 202, description = "Success", body = JobAccepted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn compress_pattern(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    PathParam(pattern): PathParam,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    start_job(
        &state,
        &caller,
        &headers,
        JobSpec::Compress(CompressParams { pattern }),
    )
    .await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CompressedView {
    key: String,
    #[serde(flatten)]
    outcome: Compressed,
}

/// `POST /api/v1/cache/keys/{key}/compress` needs at least this role.
const COMPRESS_KEY_ROLE: Rule = ("POST", "/api/v1/cache/keys/{key}/compress", Role::Writer);

#[utoipa::path(
    post,
    path = "/api/v1/cache/keys/{key}/compress",
    tag = "performance",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = CompressedView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn compress_key(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(key): PathParam,
) -> Result<Json<CompressedView>, ApiError> {
    let outcome = state
        .cache
        .compress(&caller.tenant, &key)
        .await
        .map_err(ApiError::op("compress"))?;
    Ok(Json(CompressedView { key, outcome }))
}

/// Operations slower than this at p99 are listed as slow.
const SLOW_P99_MS: f64 = 10.0;

/// `GET /api/v1/cache/performance` needs at least this role.
const PERFORMANCE_ROLE: Rule = ("GET", "/api/v1/cache/performance", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/performance",
    tag = "performance",
    description = "Latency, hit rate, slow operations and recommendations.",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = PerformanceView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn performance(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<PerformanceView>, ApiError> {
    let op = ApiError::op("performance");
    let tenant = state.cache.stats().tenant(&caller.tenant);
    let ops = tenant.snapshot();
    let lookups = tenant.lookups();
    let rate = hit_rate(lookups);
    let report = reports::latest(&state.db, caller.tenant.as_str())
        .await
        .map_err(&op)?;
    let pool = state.cache.redis().connection_stats();
    let hot = tenant.hot_keys(10);

    let hot_names: Vec<String> = hot.iter().map(|h| h.key.clone()).collect();
    let recommendations = recommendations(&Signals {
        hit_rate: rate,
        hot_keys: &hot_names,
        report: report.as_ref().map(|r| &r.report.0),
        pool_waiting: u64::try_from(pool.waiting).unwrap_or(u64::MAX),
        pool_timeouts: pool.timeouts,
    });
    let slow_operations = slow_operations(&ops);
    Ok(Json(PerformanceView {
        tenant_id: caller.tenant.as_str().to_owned(),
        hit_rate: rate,
        hits: lookups.0,
        misses: lookups.1,
        operations: ops.into_iter().filter(|o| o.calls > 0).collect(),
        slow_operations,
        biggest_keys: report.map(|r| r.report.0.biggest_keys),
        hot_keys: hot,
        recommendations,
    }))
}

/// `GET /api/v1/cache/performance`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct PerformanceView {
    tenant_id: String,
    /// Percent of lookups that found their key; null before the first lookup.
    hit_rate: Option<f64>,
    hits: u64,
    misses: u64,
    /// Operations called since this instance started.
    operations: Vec<OpSnapshot>,
    /// Operations whose p99 is over 10 ms.
    slow_operations: Vec<SlowOperation>,
    /// From the latest memory report; null when there is none.
    biggest_keys: Option<Vec<KeySize>>,
    hot_keys: Vec<HotKey>,
    recommendations: Vec<Recommendation>,
}

/// The operations whose p99 is over [`SLOW_P99_MS`].
fn slow_operations(ops: &[OpSnapshot]) -> Vec<SlowOperation> {
    ops.iter()
        .filter(|o| o.calls > 0 && o.latency.p99_ms > SLOW_P99_MS)
        .map(|o| SlowOperation {
            operation: o.op.name(),
            p99_ms: o.latency.p99_ms,
            max_ms: o.latency.max_ms,
        })
        .collect()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SlowOperation {
    operation: &'static str,
    p99_ms: f64,
    max_ms: f64,
}
