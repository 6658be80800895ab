//! Sessions on the internal plane (API.md §4). They live in the platform
//! namespace whatever `X-Tenant-Id` says; the caller is still authenticated.

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use cache_shared::codec::Value;
use cache_shared::sessions::{self, NewSession, Session};
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::extract::{InternalCaller, JsonBody, PathParam};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/internal/cache/session/set", post(set_session))
        .route("/internal/cache/session", post(set_session))
        .route("/internal/cache/session/get/{id}", get(get_session))
        .route(
            "/internal/cache/session/delete/{id}",
            axum::routing::delete(delete_session),
        )
        .route(
            "/internal/cache/session/{id}",
            get(get_session).delete(delete_session),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SetSessionBody {
    session_id: String,
    user_id: String,
    tenant_id: String,
    ttl: Option<Expiry>,
    data: Option<Box<RawValue>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionView {
    session_id: String,
    user_id: String,
    tenant_id: String,
    data: Box<RawValue>,
    ttl: i64,
}

impl TryFrom<Session> for SessionView {
    type Error = cache_shared::Error;

    fn try_from(session: Session) -> Result<Self, Self::Error> {
        Ok(Self {
            data: session.data_json()?,
            session_id: session.session_id,
            user_id: session.user_id,
            tenant_id: session.tenant_id,
            ttl: session.ttl,
        })
    }
}

async fn set_session(
    State(state): State<AppState>,
    _caller: InternalCaller,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    #[serde(default)]
    touch: bool,
}

async fn get_session(
    State(state): State<AppState>,
    _caller: InternalCaller,
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

#[derive(Debug, Serialize)]
struct DeletedView {
    deleted: bool,
}

async fn delete_session(
    State(state): State<AppState>,
    _caller: InternalCaller,
    PathParam(id): PathParam,
) -> Result<Json<DeletedView>, ApiError> {
    let deleted = sessions::delete(&state.cache, &id)
        .await
        .map_err(ApiError::op("session.delete"))?;
    Ok(Json(DeletedView { deleted }))
}
