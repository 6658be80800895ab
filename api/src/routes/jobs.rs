//! Jobs on the internal plane (API.md §4, §6): the two job-backed endpoints
//! and the status of a job. Jobs started here belong to the `X-Tenant-Id`
//! tenant, or to the platform without it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use cache_jobs::queue::{JobSpec, Submission};
use cache_shared::Error;
use cache_shared::db::jobs;
use cache_shared::sessions::Owner;
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{InternalCaller, JsonBody, PathParam};
use crate::state::AppState;
use crate::views::{JobAccepted, JobView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/internal/cache/session/cleanup", post(session_cleanup))
        .route("/internal/cache/collect-stats", post(collect_stats))
        .route("/internal/cache/jobs/{id}", get(job_status))
}

/// Path of a job's status on the internal plane.
fn status_url(id: &str) -> String {
    format!("/internal/cache/jobs/{id}")
}

/// The `Idempotency-Key` header, if any.
///
/// # Errors
///
/// `400` when it is not 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_owned())),
        _ => Err(ApiError::bad_request(
            "Idempotency-Key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

async fn submit(
    state: &AppState,
    caller: &InternalCaller,
    headers: &HeaderMap,
    spec: JobSpec,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    let op = ApiError::op("job.submit");
    let record = state
        .jobs
        .submit(Submission {
            tenant: caller.tenant.clone(),
            spec,
            created_by: Some("internal".into()),
            idempotency_key: idempotency_key(headers)?,
        })
        .await
        .map_err(op)?;
    let url = status_url(&record.id);
    Ok((StatusCode::ACCEPTED, Json(JobAccepted::new(&record, url))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CleanupBody {
    user_id: Option<String>,
    tenant_id: Option<String>,
}

async fn session_cleanup(
    State(state): State<AppState>,
    caller: InternalCaller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CleanupBody>,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    let owner = Owner {
        user_id: body.user_id,
        tenant_id: body.tenant_id,
    };
    submit(&state, &caller, &headers, JobSpec::SessionCleanup(owner)).await
}

async fn collect_stats(
    State(state): State<AppState>,
    caller: InternalCaller,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    submit(&state, &caller, &headers, JobSpec::CollectStats {}).await
}

/// A caller with `X-Tenant-Id` sees its tenant's jobs only; the platform sees all.
async fn job_status(
    State(state): State<AppState>,
    caller: InternalCaller,
    PathParam(id): PathParam,
) -> Result<Json<JobView>, ApiError> {
    let op = ApiError::op("job.get");
    let tenant = caller.named_tenant.then(|| caller.tenant.as_str());
    let record = jobs::get(state.jobs.db(), &id, tenant)
        .await
        .map_err(&op)?
        .ok_or_else(|| Error::NotFound {
            what: format!("job '{id}'"),
        })
        .map_err(&op)?;
    Ok(Json(JobView::from(record)))
}
