//! Jobs, on both planes (API.md §4, §5, §6): starting one (by type, or
//! through a job-backed endpoint such as flush or preload), listing,
//! reading and cancelling them. A job belongs to the caller's tenant: the
//! public plane's, or the internal plane's `X-Tenant-Id` (the platform
//! without it); its status URL is on the plane it was started from.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use cache_jobs::JobType;
use cache_jobs::flush::FlushParams;
use cache_jobs::preload::PreloadParams;
use cache_jobs::queue::JobSpec;
use cache_shared::Error;
use cache_shared::api_keys::Role;
use cache_shared::db::jobs::{self, JobFilter, JobStatus};
use cache_shared::sessions::Owner;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::auth::policy::Rule;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams, bounded_param};
use crate::state::AppState;
use crate::views::{JobAccepted, JobView};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/internal/cache`: the internal plane's job-backed endpoints and job status.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(session_cleanup))
        .routes(routes!(collect_stats))
        .routes(routes!(job_status))
}

/// The `Idempotency-Key` header, if any.
///
/// # Errors
///
/// `400` when it is not 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CleanupBody {
    #[schema(min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f]+$")]
    user_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"
    )]
    tenant_id: Option<String>,
}

#[utoipa::path(
    post,
    path = "/internal/cache/session/cleanup",
    tag = "jobs",
    description = "{} prunes expired index entries; a user and/or tenant revokes their sessions.",
    params(("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform"), ("Idempotency-Key" = Option<String>, Header)),
    request_body = CleanupBody,
    responses((status = 202, description = "Success", body = JobAccepted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn session_cleanup(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CleanupBody>,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    let owner = Owner {
        user_id: body.user_id,
        tenant_id: body.tenant_id,
    };
    start_job(&state, &caller, &headers, JobSpec::SessionCleanup(owner)).await
}

#[utoipa::path(
    post,
    path = "/internal/cache/collect-stats",
    tag = "jobs",
    params(("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform"), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 202, description = "Success", body = JobAccepted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn collect_stats(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    let spec = JobSpec::CollectStats(cache_jobs::payload::NoParams {});
    start_job(&state, &caller, &headers, spec).await
}

/// A caller with `X-Tenant-Id` sees its tenant's jobs only; the platform sees all.
#[utoipa::path(
    get,
    path = "/internal/cache/jobs/{id}",
    tag = "jobs",
    description = "With X-Tenant-Id, only that tenant’s jobs.",
    params(("id" = String, Path, description = "Job id"), ("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform")),
    responses((status = 200, description = "Success", body = JobView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn job_status(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Json<JobView>, ApiError> {
    find_job(&state, &caller, &id).await
}

/// A job the caller may see ([`Caller::job_scope`]).
async fn find_job(state: &AppState, caller: &Caller, id: &str) -> Result<Json<JobView>, ApiError> {
    let op = ApiError::op("job.get");
    let record = jobs::get(state.jobs.db(), id, caller.job_scope())
        .await
        .map_err(&op)?
        .ok_or_else(|| Error::NotFound {
            what: format!("job '{id}'"),
        })
        .map_err(&op)?;
    Ok(Json(JobView::from(record)))
}

/// `/api/v1`: jobs of the caller's tenant, and flush and preload.
pub fn public_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job, cancel_job))
        .routes(routes!(flush))
        .routes(routes!(preload))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[
    CREATE_JOB_ROLE,
    LIST_JOBS_ROLE,
    GET_JOB_ROLE,
    CANCEL_JOB_ROLE,
    FLUSH_ROLE,
    PRELOAD_ROLE,
];

/// `POST /api/v1/jobs` body: a job type and what its own endpoint takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    #[serde(rename = "type")]
    job_type: String,
    params: Option<Box<serde_json::value::RawValue>>,
}

/// `POST /api/v1/jobs` needs at least this role.
const CREATE_JOB_ROLE: Rule = ("POST", "/api/v1/jobs", Role::Admin);

#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    description = "Any job type by name; params are what its own endpoint takes.",
    params(("Idempotency-Key" = Option<String>, Header)),
    request_body = JobSpec,
    responses((status = 202, description = "Success", body = JobAccepted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn create_job(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<JobRequest>,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    let spec = JobSpec::from_parts(
        &request.job_type,
        request.params.as_ref().map_or("{}", |p| p.get()),
    )
    .map_err(ApiError::op("job.submit"))?;
    start_job(&state, &caller, &headers, spec).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(rename = "type")]
    job_type: Option<String>,
    #[param(pattern = r"^(queued|running|succeeded|failed|cancelled)$")]
    status: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// Operator only: act for this tenant (consumed by the authorization layer).
    #[allow(dead_code)]
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"
    )]
    tenant: Option<String>,
}

impl ListQuery {
    /// The type, status and limit asked for, each within its rules.
    fn filter(&self) -> Result<(Option<JobType>, Option<JobStatus>, i64), ApiError> {
        let limit = bounded_param(
            self.limit.as_deref(),
            "limit",
            1..=500,
            "limit must be an integer from 1 to 500",
        )?
        .unwrap_or(50i64);
        let job_type = match self.job_type.as_deref() {
            None => None,
            Some(text) => Some(
                text.parse::<JobType>()
                    .map_err(|e| ApiError::bad_request("type", e.to_string()))?,
            ),
        };
        let status = match self.status.as_deref() {
            None => None,
            Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
                ApiError::bad_request(
                    "status",
                    "status must be queued, running, succeeded, failed or cancelled",
                )
            })?),
        };
        Ok((job_type, status, limit))
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct JobList {
    jobs: Vec<JobView>,
}

/// `GET /api/v1/jobs` needs at least this role.
const LIST_JOBS_ROLE: Rule = ("GET", "/api/v1/jobs", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    description = "The tenant’s jobs, newest first.",
    params(ListQuery),
    responses((status = 200, description = "Success", body = JobList), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let (job_type, status, limit) = query.filter()?;
    let jobs = jobs::list(
        state.jobs.db(),
        &JobFilter {
            tenant: Some(caller.tenant.as_str()),
            job_type: job_type.map(JobType::as_str),
            status,
            limit,
        },
    )
    .await
    .map_err(ApiError::op("job.list"))?;
    Ok(Json(JobList {
        jobs: jobs.into_iter().map(JobView::from).collect(),
    }))
}

/// `GET /api/v1/jobs/{id}` needs at least this role.
const GET_JOB_ROLE: Rule = ("GET", "/api/v1/jobs/{id}", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "Success", body = JobView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Json<JobView>, ApiError> {
    find_job(&state, &caller, &id).await
}

/// `DELETE /api/v1/jobs/{id}` needs at least this role.
const CANCEL_JOB_ROLE: Rule = ("DELETE", "/api/v1/jobs/{id}", Role::Admin);

#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    description = "Queued: cancelled now; running: at its next batch; finished: 409.",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "Success", body = JobView), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Json<JobView>, ApiError> {
    let record = jobs::cancel(state.jobs.db(), &id, Some(caller.tenant.as_str()))
        .await
        .map_err(ApiError::op("job.cancel"))?;
    Ok(Json(JobView::from(record)))
}

/// `POST /api/v1/cache/flush` needs at least this role.
const FLUSH_ROLE: Rule = ("POST", "/api/v1/cache/flush", Role::Admin);

#[utoipa::path(
    post,
    path = "/api/v1/cache/flush",
    tag = "management",
    description = "SCAN + UNLINK of the tenant keys (all, a namespace or a glob) as a job.",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ("Idempotency-Key" = Option<String>, Header)),
    request_body = FlushParams,
    responses((status = 202, description = "Success", body = JobAccepted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn flush(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(params): JsonBody<FlushParams>,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    start_job(&state, &caller, &headers, JobSpec::Flush(params)).await
}

/// `POST /api/v1/cache/preload` needs at least this role.
const PRELOAD_ROLE: Rule = ("POST", "/api/v1/cache/preload", Role::Admin);

#[utoipa::path(
    post,
    path = "/api/v1/cache/preload",
    tag = "management",
    description = "Inline items (up to 10 000), validated before anything is enqueued.",
    params(("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"), ("Idempotency-Key" = Option<String>, Header)),
    request_body = PreloadParams,
    responses((status = 202, description = "Success", body = JobAccepted), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn preload(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(params): JsonBody<PreloadParams>,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    start_job(&state, &caller, &headers, JobSpec::Preload(params)).await
}

/// Authorizes and submits a job for the caller, on either plane, and
/// answers `202` with the status URL of the plane it came from.
pub(crate) async fn start_job(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    spec: JobSpec,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    let op = ApiError::op("job.submit");
    let idempotency_key = idempotency_key(headers)?;
    let job = state
        .jobs
        .authorize(&caller.requester(), spec)
        .await
        .map_err(&op)?;
    let record = state
        .jobs
        .submit(job, idempotency_key.as_deref())
        .await
        .map_err(op)?;
    let url = caller.job_url(&record.id);
    Ok((StatusCode::ACCEPTED, Json(JobAccepted::new(&record, url))))
}
