//! `/api/v1/schedules`: cron schedules of a tenant's jobs, for admins. The
//! workers fire them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cache_jobs::schedule::{CronSpec, check_name, job_spec};
use cache_shared::Error;
use cache_shared::api_keys::Role;
use cache_shared::db::schedules::{self, ScheduleFields, ScheduleRecord};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::auth::policy::Rule;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::state::AppState;
use crate::views::timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, replace, remove))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[
    CREATE_ROLE,
    LIST_ROLE,
    GET_ONE_ROLE,
    REPLACE_ROLE,
    REMOVE_ROLE,
];

/// A schedule as callers send it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScheduleBody {
    name: Option<String>,
    /// `min hour day month weekday`, or 6 fields with seconds first.
    cron: String,
    /// IANA name; default `UTC`.
    timezone: Option<String>,
    /// A job type of `POST /api/v1/jobs`.
    #[serde(rename = "type")]
    job_type: String,
    /// What that job type's endpoint takes.
    #[schema(value_type = Option<Object>)]
    params: Option<serde_json::Value>,
    enabled: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ScheduleView {
    id: String,
    name: Option<String>,
    cron: String,
    timezone: String,
    #[serde(rename = "type")]
    job_type: String,
    #[schema(value_type = Object)]
    params: serde_json::Value,
    enabled: bool,
    next_run_at: Option<String>,
    last_run_at: Option<String>,
    last_job_id: Option<String>,
    /// Why the service disabled it (its creator key was revoked, or its job
    /// is no longer allowed); `null` otherwise.
    disabled_reason: Option<String>,
    created_at: String,
}

impl From<ScheduleRecord> for ScheduleView {
    fn from(r: ScheduleRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            cron: r.cron,
            timezone: r.timezone,
            job_type: r.job_type,
            params: r.params,
            enabled: r.enabled,
            next_run_at: r.next_run_at.map(timestamp),
            last_run_at: r.last_run_at.map(timestamp),
            last_job_id: r.last_job_id,
            disabled_reason: r.disabled_reason,
            created_at: timestamp(r.created_at),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ScheduleList {
    schedules: Vec<ScheduleView>,
}

/// Checks a body as the job it fires would be checked for `caller` (the
/// schedule fires with the caller's rights) and turns it into stored
/// fields, with the first run computed.
async fn fields(
    state: &AppState,
    caller: &Caller,
    body: ScheduleBody,
) -> Result<ScheduleFields, Error> {
    if caller.is_platform_user() {
        // A schedule fires as its creator's API key, checked again at every
        // firing; a platform token is checked only while it is presented.
        return Err(Error::Forbidden(
            "schedules are created with an API key (they fire as their creator's key, checked \
             at every firing); a platform token cannot own one"
                .into(),
        ));
    }
    check_name(body.name.as_deref())?;
    let timezone = body.timezone.unwrap_or_else(|| "UTC".to_owned());
    let cron = CronSpec::parse(&body.cron, &timezone)?;
    cron.check_rate(caller.role())?;
    let params = body.params.unwrap_or_else(|| serde_json::json!({}));
    let spec = job_spec(&body.job_type, &params)?;
    state.jobs.authorize(&caller.requester(), spec).await?;
    let enabled = body.enabled.unwrap_or(true);
    Ok(ScheduleFields {
        name: body.name,
        next_run_at: enabled.then(|| cron.next_after(Utc::now())).flatten(),
        cron: body.cron,
        timezone,
        job_type: body.job_type,
        params,
        enabled,
    })
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        what: format!("schedule '{id}'"),
    }
}

/// `POST /api/v1/schedules` needs at least this role.
const CREATE_ROLE: Rule = ("POST", "/api/v1/schedules", Role::Admin);

#[utoipa::path(
    post,
    path = "/api/v1/schedules",
    tag = "jobs",
    request_body = ScheduleBody,
    responses((status = 201, description = "Created", body = ScheduleView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<ScheduleBody>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let op = ApiError::op("schedules.create");
    let fields = fields(&state, &caller, body).await.map_err(&op)?;
    let id = ulid::Ulid::new().to_string();
    let record = schedules::insert(
        &state.db,
        &id,
        caller.tenant.as_str(),
        &fields,
        &caller.label(),
    )
    .await
    .map_err(&op)?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// `GET /api/v1/schedules` needs at least this role.
const LIST_ROLE: Rule = ("GET", "/api/v1/schedules", Role::Admin);

#[utoipa::path(
    get,
    path = "/api/v1/schedules",
    tag = "jobs",
    responses((status = 200, description = "Success", body = ScheduleList), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ScheduleList>, ApiError> {
    let rows = schedules::list(&state.db, caller.tenant.as_str())
        .await
        .map_err(ApiError::op("schedules.list"))?;
    Ok(Json(ScheduleList {
        schedules: rows.into_iter().map(ScheduleView::from).collect(),
    }))
}

/// `GET /api/v1/schedules/{id}` needs at least this role.
const GET_ONE_ROLE: Rule = ("GET", "/api/v1/schedules/{id}", Role::Admin);

#[utoipa::path(
    get,
    path = "/api/v1/schedules/{id}",
    tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, description = "Success", body = ScheduleView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Json<ScheduleView>, ApiError> {
    let op = ApiError::op("schedules.get");
    let row = schedules::get(&state.db, &id, caller.tenant.as_str())
        .await
        .map_err(&op)?
        .ok_or_else(|| not_found(&id))
        .map_err(&op)?;
    Ok(Json(row.into()))
}

/// `PUT /api/v1/schedules/{id}` needs at least this role.
const REPLACE_ROLE: Rule = ("PUT", "/api/v1/schedules/{id}", Role::Admin);

#[utoipa::path(
    put,
    path = "/api/v1/schedules/{id}",
    tag = "jobs",
    params(("id" = String, Path)),
    request_body = ScheduleBody,
    responses((status = 200, description = "Success", body = ScheduleView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn replace(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
    JsonBody(body): JsonBody<ScheduleBody>,
) -> Result<Json<ScheduleView>, ApiError> {
    let op = ApiError::op("schedules.update");
    let fields = fields(&state, &caller, body).await.map_err(&op)?;
    let row = schedules::update(
        &state.db,
        &id,
        caller.tenant.as_str(),
        &fields,
        &caller.label(),
    )
    .await
    .map_err(&op)?
    .ok_or_else(|| not_found(&id))
    .map_err(&op)?;
    Ok(Json(row.into()))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Removed {
    deleted: bool,
}

/// `DELETE /api/v1/schedules/{id}` needs at least this role.
const REMOVE_ROLE: Rule = ("DELETE", "/api/v1/schedules/{id}", Role::Admin);

#[utoipa::path(
    delete,
    path = "/api/v1/schedules/{id}",
    tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, description = "Success", body = Removed), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Json<Removed>, ApiError> {
    let op = ApiError::op("schedules.delete");
    if !schedules::delete(&state.db, &id, caller.tenant.as_str())
        .await
        .map_err(&op)?
    {
        return Err(op(not_found(&id)));
    }
    Ok(Json(Removed { deleted: true }))
}
