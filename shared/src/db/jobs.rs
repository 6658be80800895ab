//! The `jobs` table: the durable record of every job, its progress and outcome,
//! and the idempotency keys that map repeated requests to one job.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{FromRow, PgExecutor, PgPool};

use crate::error::Error;

/// How long an `Idempotency-Key` keeps answering with the same job.
pub const IDEMPOTENCY_WINDOW_HOURS: i32 = 24;

/// A job's lifecycle state (API.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One row of `jobs`.
#[derive(Debug, Clone, FromRow)]
pub struct JobRecord {
    pub id: String,
    pub job_type: String,
    pub tenant_id: String,
    pub params: Json,
    pub status: String,
    pub progress_done: i64,
    pub progress_total: Option<i64>,
    pub attempts: i32,
    pub crashes: i32,
    pub result: Option<Json>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// The status column as an enum; the table's check constraint keeps it valid.
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed)
    }
}

/// What a caller asks to run.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub job_type: String,
    pub tenant_id: String,
    pub params: Json,
    pub created_by: Option<String>,
}

const COLUMNS: &str = "id, job_type, tenant_id, params, status, progress_done, progress_total, \
     attempts, crashes, result, error, cancel_requested, created_by, created_at, started_at, \
     finished_at";

/// Records a new queued job, or, when the idempotency key was used by the
/// same tenant within the window for the same request, returns that earlier
/// job instead. `max_active` (0: unlimited) bounds the tenant's jobs queued
/// or running, unless the tenant has its own limit.
///
/// Returns the job and whether it is new.
///
/// # Errors
///
/// [`Error::Conflict`] for a key first used with another request,
/// [`Error::RateLimited`] at the active-jobs limit,
/// [`Error::StoreUnavailable`] when PostgreSQL is down.
pub async fn insert(
    pool: &PgPool,
    new: &NewJob,
    idempotency: Option<&Idempotency<'_>>,
    max_active: u64,
) -> Result<(JobRecord, bool), Error> {
    let mut tx = pool.begin().await?;
    if let Some(idempotency) = idempotency {
        // Serialise requests with the same key so that two concurrent ones
        // cannot both create a job.
        sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
            .bind(&new.tenant_id)
            .bind(idempotency.key)
            .execute(&mut *tx)
            .await?;
        let existing: Option<(String, Option<Vec<u8>>)> = sqlx::query_as(
            "select job_id, request_digest from job_idempotency_keys \
             where tenant_id = $1 and idempotency_key = $2 \
               and created_at > now() - make_interval(hours => $3)",
        )
        .bind(&new.tenant_id)
        .bind(idempotency.key)
        .bind(IDEMPOTENCY_WINDOW_HOURS)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((job_id, digest)) = existing {
            if digest.is_some_and(|d| d != idempotency.request_digest) {
                return Err(Error::Conflict(
                    "this Idempotency-Key was used for another request (job type or parameters)"
                        .into(),
                ));
            }
            let job = get(&mut *tx, &job_id, None)
                .await?
                .ok_or_else(|| Error::internal("idempotency key points to a missing job"))?;
            tx.commit().await?;
            return Ok((job, false));
        }
    }
    {
        // Serialise the tenant's job creations so the count cannot be raced;
        // the tenant's override, if any, replaces `max_active`.
        sqlx::query("select pg_advisory_xact_lock(hashtextextended('active-jobs:' || $1, 0))")
            .bind(&new.tenant_id)
            .execute(&mut *tx)
            .await?;
        let (active, limit): (i64, i64) = sqlx::query_as(
            "select (select count(*) from jobs where tenant_id = $1 \
                         and status in ('queued', 'running')), \
                    coalesce((select max_active_jobs from tenant_limits where tenant_id = $1), $2)",
        )
        .bind(&new.tenant_id)
        .bind(crate::saturating_i64(max_active))
        .fetch_one(&mut *tx)
        .await?;
        if limit > 0 && active >= limit {
            return Err(Error::RateLimited {
                message: format!(
                    "tenant '{}' has {active} jobs queued or running, its limit; retry when one finishes",
                    new.tenant_id
                ),
                limit: u64::try_from(limit).unwrap_or(0),
                retry_after_secs: ACTIVE_JOBS_RETRY_SECS,
            });
        }
    }
    let job: JobRecord = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into jobs (id, job_type, tenant_id, params, created_by) \
         values ($1, $2, $3, $4, $5) returning {COLUMNS}"
    )))
    .bind(&new.id)
    .bind(&new.job_type)
    .bind(&new.tenant_id)
    .bind(&new.params)
    .bind(&new.created_by)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(idempotency) = idempotency {
        sqlx::query(
            "insert into job_idempotency_keys (tenant_id, idempotency_key, job_id, request_digest) \
             values ($1, $2, $3, $4) \
             on conflict (tenant_id, idempotency_key) \
             do update set job_id = excluded.job_id, request_digest = excluded.request_digest, \
                 created_at = now()",
        )
        .bind(&new.tenant_id)
        .bind(idempotency.key)
        .bind(&new.id)
        .bind(&idempotency.request_digest[..])
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok((job, true))
}

/// An `Idempotency-Key` and a digest of the request it came with, so the
/// same key with another request is a conflict rather than a replay.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub request_digest: [u8; 32],
}

/// `Retry-After` of a job refused because the tenant has too many active.
const ACTIVE_JOBS_RETRY_SECS: u64 = 5;

/// Removes a job that never reached the queue (its enqueue failed).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn delete(exec: impl PgExecutor<'_>, id: &str) -> Result<(), Error> {
    sqlx::query("delete from jobs where id = $1")
        .bind(id)
        .execute(exec)
        .await?;
    Ok(())
}

/// A job by id; with `tenant`, only if it belongs to that tenant (another
/// tenant's job reads as absent).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn get(
    exec: impl PgExecutor<'_>,
    id: &str,
    tenant: Option<&str>,
) -> Result<Option<JobRecord>, Error> {
    let job = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from jobs where id = $1 and ($2::text is null or tenant_id = $2)"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(exec)
    .await?;
    Ok(job)
}

/// Filters of a job listing.
#[derive(Debug, Clone, Default)]
pub struct JobFilter<'a> {
    /// `None`: every tenant (the platform's view).
    pub tenant: Option<&'a str>,
    pub job_type: Option<&'a str>,
    pub status: Option<JobStatus>,
    pub limit: i64,
}

/// Jobs newest first.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn list(
    exec: impl PgExecutor<'_>,
    filter: &JobFilter<'_>,
) -> Result<Vec<JobRecord>, Error> {
    let jobs = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from jobs \
         where ($1::text is null or tenant_id = $1) \
           and ($2::text is null or job_type = $2) \
           and ($3::text is null or status = $3) \
         order by created_at desc, id desc limit $4"
    )))
    .bind(filter.tenant)
    .bind(filter.job_type)
    .bind(filter.status.map(JobStatus::as_str))
    .bind(filter.limit)
    .fetch_all(exec)
    .await?;
    Ok(jobs)
}

/// What a worker learns when it starts (or restarts) a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Run it: this is attempt `attempt`; `crashes` earlier runs died mid-way.
    Run { attempt: i32, crashes: i32 },
    /// Cancelled, finished or unknown: nothing to do.
    Skip,
}

/// Marks a job running. A job found already `running` was started by a
/// worker that died without finishing: that run counts as a crash (and if
/// its cancellation was pending, it ends `cancelled` instead of running).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn start(exec: impl PgExecutor<'_>, id: &str) -> Result<Start, Error> {
    // A job delivered again after its worker died while a cancellation was
    // pending ends `cancelled` here: nobody else would settle it.
    let row: Option<(i32, i32, bool)> = sqlx::query_as(
        "update jobs set \
             crashes = crashes + case when status = 'running' then 1 else 0 end, \
             status = case when cancel_requested then 'cancelled' else 'running' end, \
             attempts = attempts + case when cancel_requested then 0 else 1 end, \
             finished_at = case when cancel_requested then now() else finished_at end, \
             started_at = coalesce(started_at, now()), updated_at = now() \
         where id = $1 and status in ('queued', 'running') \
         returning attempts, crashes, cancel_requested",
    )
    .bind(id)
    .fetch_optional(exec)
    .await?;
    Ok(match row {
        Some((attempt, crashes, false)) => Start::Run { attempt, crashes },
        Some((_, _, true)) | None => Start::Skip,
    })
}

/// Records progress; returns whether cancellation was requested meanwhile.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn progress(
    exec: impl PgExecutor<'_>,
    id: &str,
    done: i64,
    total: Option<i64>,
) -> Result<bool, Error> {
    let cancel: Option<(bool,)> = sqlx::query_as(
        "update jobs set progress_done = $2, progress_total = coalesce($3, progress_total), \
             updated_at = now() \
         where id = $1 returning cancel_requested",
    )
    .bind(id)
    .bind(done)
    .bind(total)
    .fetch_optional(exec)
    .await?;
    Ok(cancel.is_none_or(|(c,)| c))
}

/// Says a running job's worker is still at it, whatever its batches do, so
/// that recovery never mistakes a live job for a lost one.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn touch(exec: impl PgExecutor<'_>, id: &str) -> Result<(), Error> {
    sqlx::query("update jobs set updated_at = now() where id = $1 and status = 'running'")
        .bind(id)
        .execute(exec)
        .await?;
    Ok(())
}

/// Records a job's final state.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn finish(
    exec: impl PgExecutor<'_>,
    id: &str,
    status: JobStatus,
    result: Option<&Json>,
    error: Option<&str>,
) -> Result<(), Error> {
    sqlx::query(
        "update jobs set status = $2, result = coalesce($3, result), error = $4, \
             finished_at = now(), updated_at = now() \
         where id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(result)
    .bind(error)
    .execute(exec)
    .await?;
    Ok(())
}

/// A job recovery looks at: its record says `queued` or `running`.
#[derive(Debug, Clone, FromRow)]
pub struct Unsettled {
    pub id: String,
    pub job_type: String,
    /// What [`claim_unsettled`] compares, so that one worker takes the job.
    pub updated_at: DateTime<Utc>,
}

/// Jobs on the queues under `queue_prefix` whose record still says `queued`
/// with no change for `queued_for`, or `running` with no report for
/// `running_idle`, and that nobody asked to cancel: the ones whose queue
/// entries recovery checks. At most `limit`, in id order after `after`, so a
/// pass can walk them all however long the backlog.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn unsettled(
    exec: impl PgExecutor<'_>,
    queue_prefix: &str,
    queued_for: std::time::Duration,
    running_idle: std::time::Duration,
    after: &str,
    limit: i64,
) -> Result<Vec<Unsettled>, Error> {
    let rows = sqlx::query_as(
        "select id, job_type, updated_at from jobs \
         where queue_prefix = $1 and id > $2 and not cancel_requested \
           and ((status = 'queued' and updated_at < now() - make_interval(secs => $3)) \
             or (status = 'running' and updated_at < now() - make_interval(secs => $4))) \
         order by id limit $5",
    )
    .bind(queue_prefix)
    .bind(after)
    .bind(queued_for.as_secs_f64())
    .bind(running_idle.as_secs_f64())
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows)
}

/// Takes an unsettled job for recovery if its record is as `job` saw it
/// (still unfinished, not cancelled, not changed since): of several workers
/// recovering at once, one gets it. Touching the record also keeps the next
/// passes off it for a while.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn claim_unsettled(
    exec: impl PgExecutor<'_>,
    job: &Unsettled,
) -> Result<Option<JobRecord>, Error> {
    let claimed = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update jobs set updated_at = now() \
         where id = $1 and updated_at = $2 and status in ('queued', 'running') \
           and not cancel_requested \
         returning {COLUMNS}"
    )))
    .bind(&job.id)
    .bind(job.updated_at)
    .fetch_optional(exec)
    .await?;
    Ok(claimed)
}

/// Records that a job is on its queue under `queue_prefix`: from then on
/// recovery may push it again if the queue loses it (never before, so a job
/// whose push failed is not started behind its caller's back).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn mark_enqueued(
    exec: impl PgExecutor<'_>,
    id: &str,
    queue_prefix: &str,
) -> Result<(), Error> {
    sqlx::query("update jobs set queue_prefix = $2 where id = $1")
        .bind(id)
        .bind(queue_prefix)
        .execute(exec)
        .await?;
    Ok(())
}

/// Ends a job that has not finished as `failed` with `error`; whether it
/// had not finished (a job that ended meanwhile keeps its own outcome).
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn fail_unfinished(
    exec: impl PgExecutor<'_>,
    id: &str,
    error: &str,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "update jobs set status = 'failed', error = $2, finished_at = now(), updated_at = now() \
         where id = $1 and status in ('queued', 'running')",
    )
    .bind(id)
    .bind(error)
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Cancels a job: a queued one at once, a running one at its next batch.
///
/// # Errors
///
/// [`Error::NotFound`] when absent (or another tenant's), [`Error::Conflict`]
/// when already finished, [`Error::StoreUnavailable`].
pub async fn cancel(pool: &PgPool, id: &str, tenant: Option<&str>) -> Result<JobRecord, Error> {
    let updated: Option<JobRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update jobs set \
             status = case when status = 'queued' then 'cancelled' else status end, \
             finished_at = case when status = 'queued' then now() else finished_at end, \
             cancel_requested = true, updated_at = now() \
         where id = $1 and ($2::text is null or tenant_id = $2) \
           and status in ('queued', 'running') \
         returning {COLUMNS}"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    if let Some(job) = updated {
        return Ok(job);
    }
    match get(pool, id, tenant).await? {
        Some(job) => Err(Error::Conflict(format!(
            "job {id} already {}",
            job.status().as_str()
        ))),
        None => Err(Error::NotFound {
            what: format!("job '{id}'"),
        }),
    }
}
