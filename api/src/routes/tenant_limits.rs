//! `/api/v1/admin/tenants/{tenant}/limits`: each tenant's limits, read and
//! changed by operators (API.md §9). A change is on record (admin actions)
//! before it applies; every api instance picks it up within seconds.

use axum::Json;
use axum::extract::State;
use cache_shared::api_keys::Role;
use cache_shared::db::tenant_limits;
use cache_shared::keys::TenantId;
use cache_shared::limits::{LimitPatch, TenantLimits};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::auth::policy::Rule;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_limits, put_limits))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[GET_LIMITS_ROLE, PUT_LIMITS_ROLE];

/// A tenant's effective limits (`0`: unlimited).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct LimitsView {
    tenant_id: String,
    #[serde(flatten)]
    limits: TenantLimits,
}

/// `GET /api/v1/admin/tenants/{tenant}/limits` needs at least this role.
const GET_LIMITS_ROLE: Rule = (
    "GET",
    "/api/v1/admin/tenants/{tenant}/limits",
    Role::Operator,
);

#[utoipa::path(
    get,
    path = "/api/v1/admin/tenants/{tenant}/limits",
    tag = "admin",
    params(("tenant" = String, Path, description = "Any valid tenant id, used or not", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "Success", body = LimitsView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn get_limits(
    State(state): State<AppState>,
    _operator: Caller,
    PathParam(tenant): PathParam,
) -> Result<Json<LimitsView>, ApiError> {
    let tenant = TenantId::parse(&tenant, "tenant")?;
    let overrides = tenant_limits::get(&state.db, tenant.as_str())
        .await
        .map_err(ApiError::op("limits.get"))?
        .map(|row| row.overrides())
        .unwrap_or_default();
    Ok(Json(LimitsView {
        limits: state.limits.settings().apply(&overrides),
        tenant_id: tenant.to_string(),
    }))
}

/// `PUT /api/v1/admin/tenants/{tenant}/limits` needs at least this role.
const PUT_LIMITS_ROLE: Rule = (
    "PUT",
    "/api/v1/admin/tenants/{tenant}/limits",
    Role::Operator,
);

#[utoipa::path(
    put,
    path = "/api/v1/admin/tenants/{tenant}/limits",
    tag = "admin",
    description = "Any subset of the limits; null returns a field to the default.",
    params(("tenant" = String, Path, description = "Any valid tenant id, used or not", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    request_body = LimitPatch,
    responses((status = 200, description = "Success", body = LimitsView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn put_limits(
    State(state): State<AppState>,
    operator: Caller,
    PathParam(tenant): PathParam,
    JsonBody(patch): JsonBody<LimitPatch>,
) -> Result<Json<LimitsView>, ApiError> {
    let tenant = TenantId::parse(&tenant, "tenant")?;
    let overrides = tenant_limits::change(&state.db, tenant.as_str(), &patch, &operator.label())
        .await
        .map_err(ApiError::op("limits.put"))?;
    // This instance at once; the others at their next refresh.
    state.limits.set(tenant.as_str(), overrides);
    state.rate.refresh(&state.limits, state.rate.instances());
    Ok(Json(LimitsView {
        limits: state.limits.settings().apply(&overrides),
        tenant_id: tenant.to_string(),
    }))
}
