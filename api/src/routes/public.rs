//! The tenant-facing cache routes (API.md §5): the same cache operations as
//! the internal plane, for the caller's tenant, behind [`crate::auth`].

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use cache_jobs::flush::FlushParams;
use cache_jobs::preload::PreloadParams;
use cache_jobs::queue::JobSpec;
use cache_shared::api_keys::Role;
use cache_shared::codec::Value;
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, OptionalJsonBody, PathParam, QueryParams, read_body};
use crate::routes::jobs::start_job;
use crate::state::AppState;
use crate::views::{Deleted, EntryView, ExistsView, JobAccepted, KeyTtl, Updated, entry_answer};
use crate::writes::{ReadQuery, Write};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_value, put_value, delete_value))
        .routes(routes!(expire))
        .routes(routes!(ttl))
        .routes(routes!(touch))
        .routes(routes!(exists))
        .routes(routes!(flush))
        .routes(routes!(preload))
        .routes(routes!(status))
}

/// A namespace's access pattern (API.md §10): `read_only` refuses the
/// public plane's writes, `write_only` its reads.
fn check_access(state: &AppState, caller: &Caller, key: &str, write: bool) -> Result<(), ApiError> {
    let Some(ns) = state
        .cache
        .namespaces()
        .resolve(caller.tenant.as_str(), key)
    else {
        return Ok(());
    };
    if ns.access.allows(write) {
        return Ok(());
    }
    let refused = if write { "writes" } else { "reads" };
    Err(ApiError::Forbidden(format!(
        "namespace '{}' is {}: it refuses {refused} on this plane",
        ns.prefix,
        ns.access.as_str()
    )))
}

fn wants_bytes(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|part| part.trim().starts_with("application/octet-stream"))
        })
}

/// A JSON answer, or with `Accept: application/octet-stream` the value's bytes
/// (a JSON value's compact text).
#[utoipa::path(
    get,
    path = "/api/v1/cache/keys/{key}",
    tag = "cache",
    description = "With Accept: application/octet-stream, the raw bytes (a JSON value as compact text).",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ReadQuery),
    responses((status = 200, description = "Success", body = EntryView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn get_value(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    PathParam(key): PathParam,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Result<Response, ApiError> {
    let op = ApiError::op("get");
    check_access(&state, &caller, &key, false)?;
    let entry = query
        .read(&state, &caller.tenant, &key)
        .await
        .map_err(&op)?;
    if wants_bytes(&headers) {
        let refresh = entry.refresh;
        let bytes = entry.value.into_payload().map_err(&op)?;
        let mut response = Response::new(Body::from(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        crate::views::mark_refresh(&mut response, refresh);
        return Ok(response);
    }
    entry_answer(&key, &entry).map_err(&op)
}

/// `{"value","ttl"?}` or `{"negative":true,"ttl"?}` (API.md §10).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PutBody {
    /// Any JSON value; required unless `negative`.
    #[serde(default, deserialize_with = "crate::writes::present_value")]
    #[schema(value_type = Option<serde_json::Value>)]
    value: Option<Box<RawValue>>,
    #[schema(value_type = Option<u32>, maximum = 31536000)]
    ttl: Option<Expiry>,
    /// Without `ttl`: the namespace's TTL without jitter.
    #[serde(default)]
    exact_ttl: bool,
    /// Store "this id does not exist" (default TTL 60 s).
    #[serde(default)]
    negative: bool,
    /// The lease token a `?lease=true` read handed out.
    #[schema(max_length = 64)]
    lease: Option<String>,
    /// How long the value took to compute (ms, up to an hour): reads ask
    /// for a refresh earlier the longer it took.
    #[schema(maximum = 3600000)]
    compute_ms: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TtlQuery {
    /// TTL for raw-bytes bodies.
    #[param(value_type = Option<u32>, maximum = 31536000)]
    ttl: Option<String>,
    /// Operator only: act for this tenant (consumed by the authorization layer).
    #[allow(dead_code)]
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"
    )]
    tenant: Option<String>,
}

/// A value to store: JSON (`{"value","ttl"?}`) or raw bytes with `?ttl=`.
struct PutValue(Write);

impl FromRequest<AppState> for PutValue {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let raw = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim().starts_with("application/octet-stream"));
        if !raw {
            let JsonBody(body) = JsonBody::<PutBody>::from_request(req, state).await?;
            return Ok(Self(Write {
                value: body.value.as_deref().map(Value::from_raw_json),
                ttl: body.ttl,
                exact_ttl: body.exact_ttl,
                negative: body.negative,
                lease: body.lease,
                compute_ms: body.compute_ms,
            }));
        }
        let Query(query) = Query::<TtlQuery>::try_from_uri(req.uri())
            .map_err(|_| ApiError::bad_request("ttl", "ttl must be a whole number of seconds"))?;
        let ttl = query.ttl.map(|t| Expiry::parse(&t, "ttl")).transpose()?;
        let bytes = read_body(req, &state.settings).await?;
        Ok(Self(Write {
            value: Some(Value::Bytes(bytes)),
            ttl,
            ..Write::default()
        }))
    }
}

#[utoipa::path(
    put,
    path = "/api/v1/cache/keys/{key}",
    tag = "cache",
    description = "JSON {value, ttl?}, or raw bytes with Content-Type application/octet-stream.",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ("ttl" = Option<u32>, Query, description = "TTL for raw-bytes bodies", maximum = 31536000)),
    request_body = PutBody,
    responses((status = 200, description = "Success", body = KeyTtl), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn put_value(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(key): PathParam,
    PutValue(write): PutValue,
) -> Result<Json<KeyTtl>, ApiError> {
    check_access(&state, &caller, &key, true)?;
    let ttl = write
        .store(&state, &caller.tenant, &key)
        .await
        .map_err(ApiError::op("set"))?;
    Ok(Json(KeyTtl { key, ttl }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/cache/keys/{key}",
    tag = "cache",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = Deleted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn delete_value(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(key): PathParam,
) -> Result<Json<Deleted>, ApiError> {
    check_access(&state, &caller, &key, true)?;
    let deleted = state
        .cache
        .delete(&caller.tenant, &key)
        .await
        .map_err(ApiError::op("delete"))?;
    Ok(Json(Deleted { key, deleted }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ExpireBody {
    #[schema(value_type = u32, maximum = 31536000)]
    ttl: Expiry,
}

#[utoipa::path(
    post,
    path = "/api/v1/cache/keys/{key}/expire",
    tag = "cache",
    description = "ttl 0 removes the expiry.",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    request_body = ExpireBody,
    responses((status = 200, description = "Success", body = Updated), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn expire(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(key): PathParam,
    JsonBody(body): JsonBody<ExpireBody>,
) -> Result<Json<Updated>, ApiError> {
    check_access(&state, &caller, &key, true)?;
    let updated = state
        .cache
        .expire(&caller.tenant, &key, body.ttl)
        .await
        .map_err(ApiError::op("expire"))?;
    Ok(Json(Updated { key, updated }))
}

#[utoipa::path(
    get,
    path = "/api/v1/cache/keys/{key}/ttl",
    tag = "cache",
    description = "-1: no expiry.",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = KeyTtl), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn ttl(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(key): PathParam,
) -> Result<Json<KeyTtl>, ApiError> {
    let op = ApiError::op("ttl");
    check_access(&state, &caller, &key, false)?;
    let ttl = state
        .cache
        .ttl(&caller.tenant, &key)
        .await
        .map_err(&op)?
        .ok_or_else(|| cache_shared::Error::missing(key.clone()))
        .map_err(&op)?;
    Ok(Json(KeyTtl { key, ttl }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TouchBody {
    #[schema(value_type = Option<u32>, maximum = 31536000)]
    ttl: Option<Expiry>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Touched {
    key: String,
    touched: bool,
    ttl: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/api/v1/cache/keys/{key}/touch",
    tag = "cache",
    description = "ttl null when the key does not exist.",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    request_body = TouchBody,
    responses((status = 200, description = "Success", body = Touched), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn touch(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(key): PathParam,
    OptionalJsonBody(body): OptionalJsonBody<TouchBody>,
) -> Result<Json<Touched>, ApiError> {
    if body.ttl.is_some() {
        check_access(&state, &caller, &key, true)?;
    }
    let ttl = state
        .cache
        .touch(&caller.tenant, &key, body.ttl)
        .await
        .map_err(ApiError::op("touch"))?;
    Ok(Json(Touched {
        key,
        touched: ttl.is_some(),
        ttl,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    #[schema(max_items = 1000)]
    keys: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/cache/keys/exists",
    tag = "cache",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    request_body = KeysBody,
    responses((status = 200, description = "Success", body = ExistsView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn exists(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<KeysBody>,
) -> Result<Json<ExistsView>, ApiError> {
    let found = state
        .cache
        .exists(&caller.tenant, &body.keys)
        .await
        .map_err(ApiError::op("exists"))?;
    Ok(Json(ExistsView::new(body.keys, found)))
}

#[utoipa::path(
    post,
    path = "/api/v1/cache/flush",
    tag = "management",
    description = "SCAN + UNLINK of the tenant keys (all, a namespace or a glob) as a job.",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ("Idempotency-Key" = Option<String>, Header)),
    request_body = FlushParams,
    responses((status = 202, description = "Success", body = JobAccepted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn flush(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(params): JsonBody<FlushParams>,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    start_job(&state, &caller, &headers, JobSpec::Flush(params)).await
}

#[utoipa::path(
    post,
    path = "/api/v1/cache/preload",
    tag = "management",
    description = "Inline items (up to 10 000), validated before anything is enqueued.",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ("Idempotency-Key" = Option<String>, Header)),
    request_body = PreloadParams,
    responses((status = 202, description = "Success", body = JobAccepted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn preload(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(params): JsonBody<PreloadParams>,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    start_job(&state, &caller, &headers, JobSpec::Preload(params)).await
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
        service: crate::error::SERVICE_NAME,
        version: env!("CARGO_PKG_VERSION"),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        uptime_seconds: state.started_at.elapsed().as_secs(),
        tenant_id: caller.tenant.to_string(),
        role: caller.role,
        queue,
    }))
}
