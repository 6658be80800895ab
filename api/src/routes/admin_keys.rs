//! `/api/v1/admin/keys`: API keys over HTTP, for operators (API.md §1).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cache_shared::Error;
use cache_shared::api_keys::{self, Role};
use cache_shared::db::api_keys::{self as key_rows, ApiKeyRecord};
use cache_shared::keys::TenantId;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::auth::policy::Rule;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;
use crate::views::timestamp;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[LIST_ROLE, CREATE_ROLE, REVOKE_ROLE];

/// A key as listed: never the key itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct KeyView {
    id: String,
    tenant: String,
    role: String,
    name: Option<String>,
    revoked: bool,
    created_at: String,
    last_used_at: Option<String>,
    expires_at: Option<String>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(r: ApiKeyRecord) -> Self {
        Self {
            revoked: r.revoked_at.is_some(),
            id: r.id,
            tenant: r.tenant_id,
            role: r.role,
            name: r.name,
            created_at: timestamp(r.created_at),
            last_used_at: r.last_used_at.map(timestamp),
            expires_at: r.expires_at.map(timestamp),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct KeyList {
    keys: Vec<KeyView>,
}

/// `GET /api/v1/admin/keys` needs at least this role.
const LIST_ROLE: Rule = ("GET", "/api/v1/admin/keys", Role::Operator);

#[utoipa::path(
    get,
    path = "/api/v1/admin/keys",
    tag = "admin",
    description = "Never the secret.",
    responses((status = 200, description = "Success", body = KeyList), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn list(State(state): State<AppState>, _caller: Caller) -> Result<Json<KeyList>, ApiError> {
    let keys = key_rows::list(&state.db, None)
        .await
        .map_err(ApiError::op("keys.list"))?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyView::from).collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateBody {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"
    )]
    tenant: String,
    #[schema(pattern = r"^(reader|writer|admin|operator)$")]
    role: String,
    name: Option<String>,
    #[schema(minimum = 1, maximum = 36500)]
    expires_in_days: Option<u32>,
}

impl CreateBody {
    /// The tenant and role, once every field is within its rules.
    fn checked(&self) -> Result<(TenantId, Role), Error> {
        let tenant = TenantId::parse(&self.tenant, "tenant")?;
        let role = Role::parse(&self.role, "role")?;
        if self
            .expires_in_days
            .is_some_and(|d| !(1..=36_500).contains(&d))
        {
            return Err(Error::validation(
                "expiresInDays",
                "expiresInDays must be from 1 to 36500",
            ));
        }
        if self.name.as_ref().is_some_and(|n| n.len() > 255) {
            return Err(Error::validation("name", "name must be at most 255 bytes"));
        }
        Ok((tenant, role))
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Created {
    id: String,
    /// Shown once; only its digest is stored.
    key: String,
    tenant: String,
    role: String,
    name: Option<String>,
    #[serde(rename = "expiresAt")]
    expires_at: Option<String>,
}

/// `POST /api/v1/admin/keys` needs at least this role.
const CREATE_ROLE: Rule = ("POST", "/api/v1/admin/keys", Role::Operator);

#[utoipa::path(
    post,
    path = "/api/v1/admin/keys",
    tag = "admin",
    description = "The key is in this answer only.",
    request_body = CreateBody,
    responses((status = 201, description = "Success", body = Created), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let op = ApiError::op("keys.create");
    let (tenant, role) = body.checked().map_err(&op)?;
    let key = api_keys::generate().map_err(&op)?;
    let record = key_rows::insert_audited(
        &state.db,
        &caller.label(),
        &key,
        tenant.as_str(),
        role,
        body.name.as_deref(),
        body.expires_in_days,
    )
    .await
    .map_err(&op)?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id: record.id,
            key: key.secret,
            tenant: record.tenant_id,
            role: record.role,
            name: record.name,
            expires_at: record.expires_at.map(timestamp),
        }),
    ))
}

/// `DELETE /api/v1/admin/keys/{id}` needs at least this role.
const REVOKE_ROLE: Rule = ("DELETE", "/api/v1/admin/keys/{id}", Role::Operator);

#[utoipa::path(
    delete,
    path = "/api/v1/admin/keys/{id}",
    tag = "admin",
    params(("id" = String, Path)),
    responses((status = 200, description = "Success", body = KeyView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Json<KeyView>, ApiError> {
    let op = ApiError::op("keys.revoke");
    let record = key_rows::revoke_audited(&state.db, &caller.label(), &id)
        .await
        .map_err(&op)?
        .ok_or_else(|| Error::NotFound {
            what: format!("API key '{id}'"),
        })
        .map_err(&op)?;
    Ok(Json(KeyView::from(record)))
}
