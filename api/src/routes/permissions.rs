//! Cached permission results on the internal plane (API.md §4), in the
//! platform namespace whatever `X-Tenant-Id` says.

use axum::Json;
use axum::extract::State;
use cache_shared::codec::Value;
use cache_shared::permissions::{self, PermissionKey, Selector, validate_part};
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};
use crate::state::AppState;
use crate::views::KeyTtl;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_permission))
        .routes(routes!(set_permission_alias))
        .routes(routes!(get_permission))
        .routes(routes!(invalidate))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetBody {
    key: String,
    #[schema(value_type = serde_json::Value)]
    result: Box<RawValue>,
    #[schema(value_type = Option<u32>, maximum = 31536000)]
    ttl: Option<Expiry>,
}

#[utoipa::path(
    post,
    path = "/internal/cache/permission/set",
    tag = "permissions",
    description = "Also at POST /internal/cache/permission.",
    request_body = SetBody,
    responses((status = 200, description = "Success", body = KeyTtl), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn set_permission(
    State(state): State<AppState>,
    _caller: Caller,
    JsonBody(body): JsonBody<SetBody>,
) -> Result<Json<KeyTtl>, ApiError> {
    let op = ApiError::op("permission.set");
    let key = PermissionKey::parse(&body.key, "key").map_err(&op)?;
    let ttl = permissions::set(
        &state.cache,
        &key,
        &Value::from_raw_json(&body.result),
        body.ttl,
    )
    .await
    .map_err(&op)?;
    Ok(Json(KeyTtl { key: body.key, ttl }))
}

/// Either `key`, or all four parts of one.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Lookup {
    key: Option<String>,
    user_id: Option<String>,
    tenant_id: Option<String>,
    resource: Option<String>,
    action: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PermissionView {
    key: String,
    #[schema(value_type = serde_json::Value)]
    result: Box<RawValue>,
    ttl: i64,
}

#[utoipa::path(
    get,
    path = "/internal/cache/permission/get",
    tag = "permissions",
    description = "By key, or by userId, tenantId, resource and action.",
    params(Lookup),
    responses((status = 200, description = "Success", body = PermissionView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn get_permission(
    State(state): State<AppState>,
    _caller: Caller,
    QueryParams(lookup): QueryParams<Lookup>,
) -> Result<Json<PermissionView>, ApiError> {
    let op = ApiError::op("permission.get");
    let key = match lookup {
        Lookup {
            key: Some(key),
            user_id: None,
            tenant_id: None,
            resource: None,
            action: None,
        } => PermissionKey::parse(&key, "key"),
        Lookup {
            key: None,
            user_id: Some(user),
            tenant_id: Some(tenant),
            resource: Some(resource),
            action: Some(action),
        } => PermissionKey::from_parts(&user, &tenant, &resource, &action),
        _ => Err(cache_shared::Error::validation(
            "key",
            "give either key, or userId, tenantId, resource and action",
        )),
    }
    .map_err(&op)?;
    let found = permissions::get(&state.cache, &key).await.map_err(&op)?;
    let result = found.result.into_raw_json().map_err(&op)?;
    Ok(Json(PermissionView {
        key: found.key,
        result,
        ttl: found.ttl,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InvalidateQuery {
    key: Option<String>,
    user_id: Option<String>,
    tenant_id: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Invalidated {
    invalidated: u64,
}

#[utoipa::path(
    delete,
    path = "/internal/cache/permission/invalidate",
    tag = "permissions",
    description = "By key, or by userId and/or tenantId.",
    params(InvalidateQuery),
    responses((status = 200, description = "Success", body = Invalidated), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn invalidate(
    State(state): State<AppState>,
    _caller: Caller,
    QueryParams(query): QueryParams<InvalidateQuery>,
) -> Result<Json<Invalidated>, ApiError> {
    let op = ApiError::op("permission.invalidate");
    let selector = match (query.key, query.user_id, query.tenant_id) {
        (Some(key), None, None) => Selector::Key(PermissionKey::parse(&key, "key").map_err(&op)?),
        (None, Some(user_id), None) => {
            validate_part(&user_id, "userId").map_err(&op)?;
            Selector::User(user_id)
        }
        (None, None, Some(tenant_id)) => {
            validate_part(&tenant_id, "tenantId").map_err(&op)?;
            Selector::Tenant(tenant_id)
        }
        (None, Some(user_id), Some(tenant_id)) => {
            validate_part(&user_id, "userId").map_err(&op)?;
            validate_part(&tenant_id, "tenantId").map_err(&op)?;
            Selector::UserInTenant { user_id, tenant_id }
        }
        _ => {
            return Err(ApiError::bad_request(
                "key",
                "give key alone, or userId and/or tenantId",
            ));
        }
    };
    let invalidated = permissions::invalidate(&state.cache, &selector)
        .await
        .map_err(&op)?;
    Ok(Json(Invalidated { invalidated }))
}

#[utoipa::path(
    post,
    path = "/internal/cache/permission",
    tag = "permissions",
    description = "Alias of POST /internal/cache/permission/set.",
    request_body = SetBody,
    responses((status = 200, description = "Success", body = KeyTtl), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn set_permission_alias(
    state: State<AppState>,
    caller: Caller,
    body: JsonBody<SetBody>,
) -> Result<Json<KeyTtl>, ApiError> {
    set_permission(state, caller, body).await
}
