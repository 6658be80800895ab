//! The internal cache plane (API.md §4) used by the platform's services.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use cache_shared::cache::SetItem;
use cache_shared::codec::Value;
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::CacheCaller;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::state::AppState;
use crate::views::{
    Deleted, EntryView, ExistsView, KeyTtl, MgetView, Updated, entry_answer, mget_answer,
};
use crate::writes::{ReadQuery, Write};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_value))
        .routes(routes!(set_value))
        .routes(routes!(delete_value))
        .routes(routes!(mget))
        .routes(routes!(mset))
        .routes(routes!(exists))
        .routes(routes!(expire))
}

#[utoipa::path(
    get,
    path = "/internal/cache/get/{key}",
    tag = "internal",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform"), ReadQuery),
    responses((status = 200, description = "Success", body = EntryView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn get_value(
    State(state): State<AppState>,
    caller: CacheCaller,
    PathParam(key): PathParam,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Result<Response, ApiError> {
    let op = ApiError::op("get");
    let entry = query
        .read(&state, &caller.tenant, &key)
        .await
        .map_err(&op)?;
    entry_answer(&key, &entry).map_err(&op)
}

/// `{"key","value","ttl"?}`, or `{"key","negative":true,"ttl"?}` (API.md §10).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SetBody {
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
    key: String,
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

#[utoipa::path(
    post,
    path = "/internal/cache/set",
    tag = "internal",
    params(("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform")),
    request_body = SetBody,
    responses((status = 200, description = "Success", body = KeyTtl), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn set_value(
    State(state): State<AppState>,
    caller: CacheCaller,
    JsonBody(body): JsonBody<SetBody>,
) -> Result<Json<KeyTtl>, ApiError> {
    let write = Write {
        value: body.value.as_deref().map(Value::from_raw_json),
        ttl: body.ttl,
        exact_ttl: body.exact_ttl,
        negative: body.negative,
        lease: body.lease,
        compute_ms: body.compute_ms,
    };
    let ttl = write
        .store(&state, &caller.tenant, &body.key)
        .await
        .map_err(ApiError::op("set"))?;
    Ok(Json(KeyTtl { key: body.key, ttl }))
}

#[utoipa::path(
    delete,
    path = "/internal/cache/delete/{key}",
    tag = "internal",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform")),
    responses((status = 200, description = "Success", body = Deleted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn delete_value(
    State(state): State<AppState>,
    caller: CacheCaller,
    PathParam(key): PathParam,
) -> Result<Json<Deleted>, ApiError> {
    let deleted = state
        .cache
        .delete(&caller.tenant, &key)
        .await
        .map_err(ApiError::op("delete"))?;
    Ok(Json(Deleted { key, deleted }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    #[schema(max_items = 1000)]
    keys: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/internal/cache/mget",
    tag = "internal",
    description = "Values in request order; at most 1000 keys.",
    params(("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform")),
    request_body = KeysBody,
    responses((status = 200, description = "Success", body = MgetView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn mget(
    State(state): State<AppState>,
    caller: CacheCaller,
    JsonBody(body): JsonBody<KeysBody>,
) -> Result<Response, ApiError> {
    let entries = state
        .cache
        .mget(&caller.tenant, &body.keys)
        .await
        .map_err(ApiError::op("mget"))?;
    mget_answer(&body.keys, &entries).map_err(ApiError::op("mget"))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MsetBody {
    #[schema(max_items = 1000)]
    items: Vec<MsetItem>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MsetItem {
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
    key: String,
    #[schema(value_type = serde_json::Value)]
    value: Box<RawValue>,
    #[schema(value_type = Option<u32>, maximum = 31536000)]
    ttl: Option<Expiry>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Stored {
    stored: usize,
}

#[utoipa::path(
    post,
    path = "/internal/cache/mset",
    tag = "internal",
    description = "All or nothing; at most 1000 items.",
    params(("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform")),
    request_body = MsetBody,
    responses((status = 200, description = "Success", body = Stored), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn mset(
    State(state): State<AppState>,
    caller: CacheCaller,
    JsonBody(body): JsonBody<MsetBody>,
) -> Result<Json<Stored>, ApiError> {
    let items: Vec<SetItem> = body
        .items
        .into_iter()
        .map(|item| SetItem {
            value: Value::from_raw_json(&item.value),
            key: item.key,
            ttl: item.ttl,
        })
        .collect();
    let stored = state
        .cache
        .mset(&caller.tenant, &items)
        .await
        .map_err(ApiError::op("mset"))?;
    Ok(Json(Stored { stored }))
}

#[utoipa::path(
    post,
    path = "/internal/cache/exists",
    tag = "internal",
    params(("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform")),
    request_body = KeysBody,
    responses((status = 200, description = "Success", body = ExistsView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn exists(
    State(state): State<AppState>,
    caller: CacheCaller,
    JsonBody(body): JsonBody<KeysBody>,
) -> Result<Json<ExistsView>, ApiError> {
    let found = state
        .cache
        .exists(&caller.tenant, &body.keys)
        .await
        .map_err(ApiError::op("exists"))?;
    Ok(Json(ExistsView::new(body.keys, found)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ExpireBody {
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
    key: String,
    #[schema(value_type = u32, maximum = 31536000)]
    ttl: Expiry,
}

#[utoipa::path(
    post,
    path = "/internal/cache/expire",
    tag = "internal",
    description = "ttl 0 removes the expiry.",
    params(("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform")),
    request_body = ExpireBody,
    responses((status = 200, description = "Success", body = Updated), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn expire(
    State(state): State<AppState>,
    caller: CacheCaller,
    JsonBody(body): JsonBody<ExpireBody>,
) -> Result<Json<Updated>, ApiError> {
    let updated = state
        .cache
        .expire(&caller.tenant, &body.key, body.ttl)
        .await
        .map_err(ApiError::op("expire"))?;
    Ok(Json(Updated {
        key: body.key,
        updated,
    }))
}
