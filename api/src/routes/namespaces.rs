//! `/api/v1/cache/namespaces`: a tenant's namespaces and their strategies
//! (API.md §10), read by readers and changed by admins. A change is stored
//! (and on record as an admin action) before it applies: at once on this
//! instance, within seconds on the others.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cache_shared::Error;
use cache_shared::api_keys::Role;
use cache_shared::db::namespaces;
use cache_shared::namespaces::{Namespace, NamespaceFields, NamespaceSet, validate_prefix};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::auth::policy::Rule;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, put_one, delete_one))
        .routes(routes!(stats))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[
    LIST_ROLE,
    CREATE_ROLE,
    GET_ONE_ROLE,
    PUT_ONE_ROLE,
    DELETE_ONE_ROLE,
    STATS_ROLE,
];

/// A namespace's figures: keys and bytes now (kept exact by the writes,
/// recounted after changes), and this instance's hits and misses.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct NamespaceStats {
    prefix: String,
    keys: u64,
    /// The caller's key bytes + the value bytes as stored.
    bytes: u64,
    /// `0`: unlimited.
    max_keys: u64,
    hits: u64,
    misses: u64,
    /// Percent of reads that found their key, on this api instance since it
    /// started; `null` before any read.
    hit_rate: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct NamespaceList {
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct NamespaceDeleted {
    prefix: String,
    deleted: bool,
}

/// The tenant's namespaces as stored (the defaults until it changes one).
async fn stored(state: &AppState, caller: &Caller) -> Result<NamespaceSet, Error> {
    namespaces::of_tenant(
        &state.db,
        caller.tenant.as_str(),
        state.cache.namespaces().defaults(),
    )
    .await
}

/// Applies `change` to the caller's namespaces and to this instance's book.
async fn change<T: Serialize>(
    state: &AppState,
    caller: &Caller,
    change: impl FnOnce(&mut Vec<Namespace>) -> Result<T, Error>,
) -> Result<T, Error> {
    let book = state.cache.namespaces();
    let (outcome, set) = namespaces::change(
        &state.db,
        caller.tenant.as_str(),
        &caller.label(),
        book.defaults(),
        change,
    )
    .await?;
    book.set(caller.tenant.as_str(), set);
    // Keys may have moved between namespaces: the worker recounts them.
    if let Err(err) = cache_shared::quota::request_recount(state.cache.redis()).await {
        tracing::warn!(%err, "namespace recount not requested; namespace figures may lag");
    }
    Ok(outcome)
}

fn not_found(prefix: &str) -> Error {
    Error::NotFound {
        what: format!("namespace '{prefix}'"),
    }
}

/// `GET /api/v1/cache/namespaces` needs at least this role.
const LIST_ROLE: Rule = ("GET", "/api/v1/cache/namespaces", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/namespaces",
    tag = "namespaces",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = NamespaceList), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<NamespaceList>, ApiError> {
    let set = stored(&state, &caller)
        .await
        .map_err(ApiError::op("namespaces.list"))?;
    Ok(Json(NamespaceList {
        namespaces: set.listed(),
    }))
}

/// `POST /api/v1/cache/namespaces` needs at least this role.
const CREATE_ROLE: Rule = ("POST", "/api/v1/cache/namespaces", Role::Admin);

#[utoipa::path(
    post,
    path = "/api/v1/cache/namespaces",
    tag = "namespaces",
    description = "Fields not given take the defaults: CACHE_DEFAULT_TTL, ttlJitter 0.1, compression above COMPRESSION_MIN_BYTES, no key limit, read_write. An existing prefix is 409.",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    request_body = NamespaceFields,
    responses((status = 201, description = "Created", body = Namespace), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(fields): JsonBody<NamespaceFields>,
) -> Result<(StatusCode, Json<Namespace>), ApiError> {
    let op = ApiError::op("namespaces.create");
    Namespace::check_sealable(&fields, state.cache.keys()).map_err(&op)?;
    let limits = state.cache.limits();
    let created = Namespace::create(
        &fields,
        limits.default_ttl,
        u64::try_from(limits.compression_min_bytes).unwrap_or(u64::MAX),
    )
    .map_err(&op)?;
    let created = change(&state, &caller, |all| {
        if all.iter().any(|ns| ns.prefix == created.prefix) {
            return Err(Error::Conflict(format!(
                "namespace '{}' exists: change it with PUT",
                created.prefix
            )));
        }
        all.push(created.clone());
        Ok(created)
    })
    .await
    .map_err(&op)?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/v1/cache/namespaces/{prefix}` needs at least this role.
const GET_ONE_ROLE: Rule = ("GET", "/api/v1/cache/namespaces/{prefix}", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/namespaces/{prefix}",
    tag = "namespaces",
    params(("prefix" = String, Path, description = "The namespace's key prefix (percent-encoded)", min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = Namespace), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(prefix): PathParam,
) -> Result<Json<Namespace>, ApiError> {
    let op = ApiError::op("namespaces.get");
    validate_prefix(&prefix).map_err(&op)?;
    let set = stored(&state, &caller).await.map_err(&op)?;
    let found = set
        .get(&prefix)
        .ok_or_else(|| not_found(&prefix))
        .map_err(&op)?;
    Ok(Json((**found).clone()))
}

/// `PUT /api/v1/cache/namespaces/{prefix}` needs at least this role.
const PUT_ONE_ROLE: Rule = ("PUT", "/api/v1/cache/namespaces/{prefix}", Role::Admin);

#[utoipa::path(
    put,
    path = "/api/v1/cache/namespaces/{prefix}",
    tag = "namespaces",
    description = "Changes the fields given and keeps the others; prefix, if given, must be the path's.",
    params(("prefix" = String, Path, description = "The namespace's key prefix (percent-encoded)", min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    request_body = NamespaceFields,
    responses((status = 200, description = "Success", body = Namespace), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn put_one(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(prefix): PathParam,
    JsonBody(fields): JsonBody<NamespaceFields>,
) -> Result<Json<Namespace>, ApiError> {
    let op = ApiError::op("namespaces.put");
    validate_prefix(&prefix).map_err(&op)?;
    Namespace::check_sealable(&fields, state.cache.keys()).map_err(&op)?;
    let changed = change(&state, &caller, |all| {
        let ns = all
            .iter_mut()
            .find(|ns| ns.prefix == prefix)
            .ok_or_else(|| not_found(&prefix))?;
        *ns = ns.changed(&fields)?;
        Ok(ns.clone())
    })
    .await
    .map_err(&op)?;
    Ok(Json(changed))
}

/// `DELETE /api/v1/cache/namespaces/{prefix}` needs at least this role.
const DELETE_ONE_ROLE: Rule = ("DELETE", "/api/v1/cache/namespaces/{prefix}", Role::Admin);

#[utoipa::path(
    delete,
    path = "/api/v1/cache/namespaces/{prefix}",
    tag = "namespaces",
    description = "Its keys stay, and take the namespace of their next longest prefix from now on.",
    params(("prefix" = String, Path, description = "The namespace's key prefix (percent-encoded)", min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = NamespaceDeleted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn delete_one(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(prefix): PathParam,
) -> Result<Json<NamespaceDeleted>, ApiError> {
    let op = ApiError::op("namespaces.delete");
    validate_prefix(&prefix).map_err(&op)?;
    change(&state, &caller, |all| {
        let before = all.len();
        all.retain(|ns| ns.prefix != prefix);
        if all.len() == before {
            return Err(not_found(&prefix));
        }
        Ok(prefix.clone())
    })
    .await
    .map_err(&op)?;
    Ok(Json(NamespaceDeleted {
        prefix,
        deleted: true,
    }))
}

/// `GET /api/v1/cache/namespaces/{prefix}/stats` needs at least this role.
const STATS_ROLE: Rule = (
    "GET",
    "/api/v1/cache/namespaces/{prefix}/stats",
    Role::Reader,
);

#[utoipa::path(
    get,
    path = "/api/v1/cache/namespaces/{prefix}/stats",
    tag = "namespaces",
    params(("prefix" = String, Path, description = "The namespace's key prefix (percent-encoded)", min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f]+$"), ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = NamespaceStats), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(prefix): PathParam,
) -> Result<Json<NamespaceStats>, ApiError> {
    let op = ApiError::op("namespaces.stats");
    validate_prefix(&prefix).map_err(&op)?;
    let set = state.cache.namespaces().of(caller.tenant.as_str());
    let ns = set
        .get(&prefix)
        .ok_or_else(|| not_found(&prefix))
        .map_err(&op)?;
    let usage = cache_shared::quota::namespace_usage(state.cache.redis(), &caller.tenant, &prefix)
        .await
        .map_err(&op)?;
    let (hits, misses) = state
        .cache
        .stats()
        .tenant(&caller.tenant)
        .namespace_lookups(&prefix);
    Ok(Json(NamespaceStats {
        keys: usage.keys,
        bytes: usage.bytes,
        max_keys: ns.max_keys,
        hits,
        misses,
        hit_rate: cache_shared::stats::histogram::hit_rate((hits, misses)),
        prefix,
    }))
}
