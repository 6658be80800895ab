//! Keys, on both planes (API.md §4, §5): one operation per action, each
//! reached by a thin route of the internal plane (`/internal/cache/…`, the
//! key in the body or the path) and of the public plane
//! (`/api/v1/cache/keys/…`, the key in the path), and the batches.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use cache_shared::api_keys::Role;
use cache_shared::cache::SetItem;
use cache_shared::codec::Value;
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::policy::Rule;
use crate::auth::{Caller, Metered, Plane};
use crate::error::ApiError;
use crate::extract::{JsonBody, OptionalJsonBody, PathParam, QueryParams, read_body};
use crate::state::AppState;
use crate::views::{
    Deleted, EntryView, ExistsView, KeyTtl, MgetView, Updated, entry_answer, mget_answer,
};
use crate::writes::{ReadQuery, Write};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/internal/cache`: the internal plane's key routes and batches.
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

/// `/api/v1/cache/keys`: the caller's tenant's keys.
pub fn public_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(public_get, public_put, public_delete))
        .routes(routes!(public_expire))
        .routes(routes!(public_ttl))
        .routes(routes!(public_touch))
        .routes(routes!(public_exists))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[
    PUBLIC_GET_ROLE,
    PUBLIC_PUT_ROLE,
    PUBLIC_DELETE_ROLE,
    PUBLIC_EXPIRE_ROLE,
    PUBLIC_TTL_ROLE,
    PUBLIC_TOUCH_ROLE,
    PUBLIC_EXISTS_ROLE,
];

/// Declares a body once for both planes: the public plane's (the key in
/// the path) and the internal plane's, the same fields after a `key`.
macro_rules! keyed_body {
    (
        [$(#[$shared:meta])*]
        $(#[doc = $public_doc:literal])* $public:ident,
        $(#[doc = $internal_doc:literal])* $internal:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$shared])*
        $(#[doc = $public_doc])*
        pub(crate) struct $public {
            $($(#[$field_meta])* $field: $ty,)*
        }

        $(#[$shared])*
        $(#[doc = $internal_doc])*
        pub(crate) struct $internal {
            #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
            key: String,
            $($(#[$field_meta])* $field: $ty,)*
        }

        impl $internal {
            /// The key and what the public plane's body would carry.
            fn split(self) -> (String, $public) {
                (self.key, $public { $($field: self.$field,)* })
            }
        }
    };
}

keyed_body! {
    [#[derive(Debug, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]]
    /// `{"value","ttl"?}` or `{"negative":true,"ttl"?}` (API.md §10).
    PutBody,
    /// `{"key","value","ttl"?}`, or `{"key","negative":true,"ttl"?}` (API.md §10).
    SetBody {
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
}

impl From<PutBody> for Write {
    fn from(body: PutBody) -> Self {
        Self {
            value: body.value.as_deref().map(Value::from_raw_json),
            ttl: body.ttl,
            exact_ttl: body.exact_ttl,
            negative: body.negative,
            lease: body.lease,
            compute_ms: body.compute_ms,
        }
    }
}

// A new expiry: for the key of the path, or of the body.
keyed_body! {
    [#[derive(Debug, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]]
    ExpireBody,
    KeyExpireBody {
        #[schema(value_type = u32, maximum = 31536000)]
        ttl: Expiry,
    }
}

// Keys of a batch, in request order. (Plain comments on the bodies: a doc
// comment would change the published schema.)
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysBody {
    #[schema(max_items = 1000)]
    keys: Vec<String>,
}

/// A namespace's access pattern (API.md §10): `read_only` refuses the
/// public plane's writes, `write_only` its reads; the internal plane is
/// not bound by it.
fn check_access(state: &AppState, caller: &Caller, key: &str, write: bool) -> Result<(), ApiError> {
    if caller.plane() == Plane::Internal {
        return Ok(());
    }
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

/// Reads a key: a JSON answer, or with `bytes` the value's bytes (a JSON
/// value's compact text).
async fn get(
    state: &AppState,
    caller: &Caller,
    key: &str,
    query: &ReadQuery,
    bytes: bool,
) -> Result<Response, ApiError> {
    let op = ApiError::op("get");
    check_access(state, caller, key, false)?;
    let entry = query.read(state, &caller.tenant, key).await.map_err(&op)?;
    if !bytes {
        return entry_answer(key, &entry).map_err(&op);
    }
    let refresh = entry.refresh;
    let payload = entry.value.into_payload().map_err(&op)?;
    let mut response = Response::new(Body::from(payload));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    crate::views::mark_refresh(&mut response, refresh);
    Ok(response)
}

/// Writes a key; answers the TTL a read now reports.
async fn set(
    state: &AppState,
    caller: &Caller,
    key: String,
    write: Write,
) -> Result<Json<KeyTtl>, ApiError> {
    check_access(state, caller, &key, true)?;
    let ttl = write
        .store(state, &caller.tenant, &key)
        .await
        .map_err(ApiError::op("set"))?;
    Ok(Json(KeyTtl { key, ttl }))
}

/// Deletes a key.
async fn delete(state: &AppState, caller: &Caller, key: String) -> Result<Json<Deleted>, ApiError> {
    check_access(state, caller, &key, true)?;
    let deleted = state
        .cache
        .delete(&caller.tenant, &key)
        .await
        .map_err(ApiError::op("delete"))?;
    Ok(Json(Deleted { key, deleted }))
}

/// Re-times a key (`ttl` 0 removes its expiry).
async fn set_expiry(
    state: &AppState,
    caller: &Caller,
    key: String,
    ttl: Expiry,
) -> Result<Json<Updated>, ApiError> {
    check_access(state, caller, &key, true)?;
    let updated = state
        .cache
        .expire(&caller.tenant, &key, ttl)
        .await
        .map_err(ApiError::op("expire"))?;
    Ok(Json(Updated { key, updated }))
}

/// Which of the keys exist.
async fn find(
    state: &AppState,
    caller: &Caller,
    body: KeysBody,
) -> Result<Json<ExistsView>, ApiError> {
    let found = state
        .cache
        .exists(&caller.tenant, &body.keys)
        .await
        .map_err(ApiError::op("exists"))?;
    Ok(Json(ExistsView::new(body.keys, found)))
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
    Metered(caller): Metered,
    PathParam(key): PathParam,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Result<Response, ApiError> {
    get(&state, &caller, &key, &query, false).await
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
    Metered(caller): Metered,
    JsonBody(body): JsonBody<SetBody>,
) -> Result<Json<KeyTtl>, ApiError> {
    let (key, body) = body.split();
    set(&state, &caller, key, body.into()).await
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
    Metered(caller): Metered,
    PathParam(key): PathParam,
) -> Result<Json<Deleted>, ApiError> {
    delete(&state, &caller, key).await
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
    Metered(caller): Metered,
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
    Metered(caller): Metered,
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
    Metered(caller): Metered,
    JsonBody(body): JsonBody<KeysBody>,
) -> Result<Json<ExistsView>, ApiError> {
    find(&state, &caller, body).await
}

#[utoipa::path(
    post,
    path = "/internal/cache/expire",
    tag = "internal",
    description = "ttl 0 removes the expiry.",
    params(("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform")),
    request_body = KeyExpireBody,
    responses((status = 200, description = "Success", body = Updated), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn expire(
    State(state): State<AppState>,
    Metered(caller): Metered,
    JsonBody(body): JsonBody<KeyExpireBody>,
) -> Result<Json<Updated>, ApiError> {
    let (key, body) = body.split();
    set_expiry(&state, &caller, key, body.ttl).await
}

/// `GET /api/v1/cache/keys/{key}` needs at least this role.
const PUBLIC_GET_ROLE: Rule = ("GET", "/api/v1/cache/keys/{key}", Role::Reader);

/// A JSON answer, or with `Accept: application/octet-stream` the value's bytes
/// (a JSON value's compact text).
#[utoipa::path(
    get,
    path = "/api/v1/cache/keys/{key}",
    operation_id = "get_value",
    tag = "cache",
    description = "With Accept: application/octet-stream, the raw bytes (a JSON value as compact text).",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ReadQuery),
    responses((status = 200, description = "Success", body = EntryView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn public_get(
    State(state): State<AppState>,
    Metered(caller): Metered,
    headers: HeaderMap,
    PathParam(key): PathParam,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Result<Response, ApiError> {
    get(&state, &caller, &key, &query, wants_bytes(&headers)).await
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
            return Ok(Self(body.into()));
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

/// `PUT /api/v1/cache/keys/{key}` needs at least this role.
const PUBLIC_PUT_ROLE: Rule = ("PUT", "/api/v1/cache/keys/{key}", Role::Writer);

#[utoipa::path(
    put,
    path = "/api/v1/cache/keys/{key}",
    operation_id = "put_value",
    tag = "cache",
    description = "JSON {value, ttl?}, or raw bytes with Content-Type application/octet-stream.",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ("ttl" = Option<u32>, Query, description = "TTL for raw-bytes bodies", maximum = 31536000)),
    request_body = PutBody,
    responses((status = 200, description = "Success", body = KeyTtl), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn public_put(
    State(state): State<AppState>,
    Metered(caller): Metered,
    PathParam(key): PathParam,
    PutValue(write): PutValue,
) -> Result<Json<KeyTtl>, ApiError> {
    set(&state, &caller, key, write).await
}

/// `DELETE /api/v1/cache/keys/{key}` needs at least this role.
const PUBLIC_DELETE_ROLE: Rule = ("DELETE", "/api/v1/cache/keys/{key}", Role::Writer);

#[utoipa::path(
    delete,
    path = "/api/v1/cache/keys/{key}",
    operation_id = "delete_value",
    tag = "cache",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = Deleted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn public_delete(
    State(state): State<AppState>,
    Metered(caller): Metered,
    PathParam(key): PathParam,
) -> Result<Json<Deleted>, ApiError> {
    delete(&state, &caller, key).await
}

/// `POST /api/v1/cache/keys/{key}/expire` needs at least this role.
const PUBLIC_EXPIRE_ROLE: Rule = ("POST", "/api/v1/cache/keys/{key}/expire", Role::Writer);

#[utoipa::path(
    post,
    path = "/api/v1/cache/keys/{key}/expire",
    operation_id = "expire",
    tag = "cache",
    description = "ttl 0 removes the expiry.",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    request_body = ExpireBody,
    responses((status = 200, description = "Success", body = Updated), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn public_expire(
    State(state): State<AppState>,
    Metered(caller): Metered,
    PathParam(key): PathParam,
    JsonBody(body): JsonBody<ExpireBody>,
) -> Result<Json<Updated>, ApiError> {
    set_expiry(&state, &caller, key, body.ttl).await
}

/// `GET /api/v1/cache/keys/{key}/ttl` needs at least this role.
const PUBLIC_TTL_ROLE: Rule = ("GET", "/api/v1/cache/keys/{key}/ttl", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/keys/{key}/ttl",
    operation_id = "ttl",
    tag = "cache",
    description = "-1: no expiry.",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = KeyTtl), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn public_ttl(
    State(state): State<AppState>,
    Metered(caller): Metered,
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

/// `POST /api/v1/cache/keys/{key}/touch` needs at least this role.
const PUBLIC_TOUCH_ROLE: Rule = ("POST", "/api/v1/cache/keys/{key}/touch", Role::Writer);

#[utoipa::path(
    post,
    path = "/api/v1/cache/keys/{key}/touch",
    operation_id = "touch",
    tag = "cache",
    description = "ttl null when the key does not exist.",
    params(("key" = String, Path, description = "Cache key (1–512 bytes, percent-encoded)", min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    request_body = TouchBody,
    responses((status = 200, description = "Success", body = Touched), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn public_touch(
    State(state): State<AppState>,
    Metered(caller): Metered,
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

/// `POST /api/v1/cache/keys/exists` needs at least this role.
const PUBLIC_EXISTS_ROLE: Rule = ("POST", "/api/v1/cache/keys/exists", Role::Reader);

#[utoipa::path(
    post,
    path = "/api/v1/cache/keys/exists",
    operation_id = "exists",
    tag = "cache",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    request_body = KeysBody,
    responses((status = 200, description = "Success", body = ExistsView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn public_exists(
    State(state): State<AppState>,
    Metered(caller): Metered,
    JsonBody(body): JsonBody<KeysBody>,
) -> Result<Json<ExistsView>, ApiError> {
    find(&state, &caller, body).await
}
