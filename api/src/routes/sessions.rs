//! Sessions on the internal plane (API.md §4). They live in the platform
//! namespace whatever `X-Tenant-Id` says; the caller is still authenticated.

use axum::Json;
use axum::extract::{Query, State};
use cache_shared::codec::Value;
use cache_shared::sessions::{self, NewSession, Session};
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_session))
        .routes(routes!(set_session_alias))
        .routes(routes!(get_session))
        .routes(routes!(delete_session))
        .routes(routes!(get_session_alias, delete_session_alias))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SetSessionBody {
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
    session_id: String,
    #[schema(min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f]+$")]
    user_id: String,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"
    )]
    tenant_id: String,
    #[schema(value_type = Option<u32>, maximum = 31536000)]
    ttl: Option<Expiry>,
    #[schema(value_type = Option<serde_json::Value>)]
    data: Option<Box<RawValue>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionView {
    session_id: String,
    user_id: String,
    tenant_id: String,
    #[schema(value_type = serde_json::Value)]
    data: Box<RawValue>,
    ttl: i64,
}

impl TryFrom<Session> for SessionView {
    type Error = cache_shared::Error;

    fn try_from(session: Session) -> Result<Self, Self::Error> {
        Ok(Self {
            data: session.data.into_raw_json()?,
            session_id: session.session_id,
            user_id: session.user_id,
            tenant_id: session.tenant_id,
            ttl: session.ttl,
        })
    }
}

#[utoipa::path(
    post,
    path = "/internal/cache/session/set",
    tag = "sessions",
    description = "Also at POST /internal/cache/session.",
    request_body = SetSessionBody,
    responses((status = 200, description = "Success", body = SessionView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn set_session(
    State(state): State<AppState>,
    _caller: Caller,
    JsonBody(body): JsonBody<SetSessionBody>,
) -> Result<Json<SessionView>, ApiError> {
    let new = NewSession {
        session_id: body.session_id,
        user_id: body.user_id,
        tenant_id: body.tenant_id,
        data: body.data.as_deref().map(Value::from_raw_json),
        ttl: body.ttl,
    };
    let session = sessions::set(&state.cache, new)
        .await
        .and_then(SessionView::try_from)
        .map_err(ApiError::op("session.set"))?;
    Ok(Json(session))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    #[serde(default)]
    touch: bool,
}

#[utoipa::path(
    get,
    path = "/internal/cache/session/get/{id}",
    tag = "sessions",
    description = "Also at GET /internal/cache/session/{id}.",
    params(("id" = String, Path, description = "Session id"), ("touch" = Option<bool>, Query, description = "Restart the stored TTL")),
    responses((status = 200, description = "Success", body = SessionView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn get_session(
    State(state): State<AppState>,
    _caller: Caller,
    PathParam(id): PathParam,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionView>, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("touch", "touch must be true or false"))?;
    let session = sessions::get(&state.cache, &id, query.touch)
        .await
        .and_then(SessionView::try_from)
        .map_err(ApiError::op("session.get"))?;
    Ok(Json(session))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeletedView {
    deleted: bool,
}

#[utoipa::path(
    delete,
    path = "/internal/cache/session/delete/{id}",
    tag = "sessions",
    description = "Also at DELETE /internal/cache/session/{id}.",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, description = "Success", body = DeletedView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn delete_session(
    State(state): State<AppState>,
    _caller: Caller,
    PathParam(id): PathParam,
) -> Result<Json<DeletedView>, ApiError> {
    let deleted = sessions::delete(&state.cache, &id)
        .await
        .map_err(ApiError::op("session.delete"))?;
    Ok(Json(DeletedView { deleted }))
}

#[utoipa::path(
    post,
    path = "/internal/cache/session",
    tag = "sessions",
    description = "Alias of POST /internal/cache/session/set.",
    request_body = SetSessionBody,
    responses((status = 200, description = "Success", body = SessionView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn set_session_alias(
    state: State<AppState>,
    caller: Caller,
    body: JsonBody<SetSessionBody>,
) -> Result<Json<SessionView>, ApiError> {
    set_session(state, caller, body).await
}

#[utoipa::path(
    get,
    path = "/internal/cache/session/{id}",
    tag = "sessions",
    description = "Alias of GET /internal/cache/session/get/{id}.",
    params(("id" = String, Path, description = "Session id"), ("touch" = Option<bool>, Query, description = "Restart the stored TTL")),
    responses((status = 200, description = "Success", body = SessionView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn get_session_alias(
    state: State<AppState>,
    caller: Caller,
    id: PathParam,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionView>, ApiError> {
    get_session(state, caller, id, query).await
}

#[utoipa::path(
    delete,
    path = "/internal/cache/session/{id}",
    tag = "sessions",
    description = "Alias of DELETE /internal/cache/session/delete/{id}.",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, description = "Success", body = DeletedView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn delete_session_alias(
    state: State<AppState>,
    caller: Caller,
    id: PathParam,
) -> Result<Json<DeletedView>, ApiError> {
    delete_session(state, caller, id).await
}
