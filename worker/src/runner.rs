//! Runs one delivery of a job: records its start, runs the handler with the
//! service's retry policy, and records the outcome. The queue delivers at
//! least once; the record makes repeated deliveries harmless.

use std::future::Future;
use std::time::Duration;

use cache_jobs::JobType;
use cache_shared::db::jobs::{self, JobStatus, Start};

use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;

pub use cache_shared::retry::{MAX_RUNS, backoff};

/// A job whose worker died this many times mid-run is stopped for good.
pub const MAX_CRASHES: i32 = 3;

/// A job with a record in PostgreSQL, started over HTTP or by a schedule:
/// what the runner needs of a delivery.
pub trait Job: Send + Sync {
    const TYPE: JobType;

    /// The id of the job's record (also the queue's task id).
    fn job_id(&self) -> &str;

    /// The tenant the job works for, whose share of the worker's job slots
    /// it takes (platform jobs: the platform's).
    fn tenant(&self) -> &str {
        cache_shared::keys::PLATFORM_TENANT
    }

    /// Does the work once.
    fn run(&self, ctx: &JobContext) -> impl Future<Output = Result<Outcome, JobError>> + Send;
}

/// What the queue should do with a delivery after [`execute`].
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The record holds the final state (or the job was skipped): done.
    Done,
    /// The job could not be started (PostgreSQL is down): deliver again
    /// later. A job that ran is never redelivered to record its outcome.
    Redeliver(String),
}

/// Runs one delivery of `job`.
pub async fn execute<J: Job>(ctx: &JobContext, job: &J) -> Delivery {
    match execute_inner(ctx, job).await {
        Ok(()) => Delivery::Done,
        Err(err) => {
            tracing::warn!(job_id = job.job_id(), job_type = %J::TYPE, %err, "job record not updated; will be redelivered");
            Delivery::Redeliver(err.to_string())
        }
    }
}

async fn execute_inner<J: Job>(ctx: &JobContext, job: &J) -> Result<(), cache_shared::Error> {
    let id = job.job_id();
    let crashes = match jobs::start(&ctx.db, id).await? {
        Start::Skip => {
            tracing::info!(
                job_id = id,
                "job cancelled or finished before it ran; skipping"
            );
            return Ok(());
        }
        Start::Run { crashes, .. } => crashes,
    };
    let started = std::time::Instant::now();
    let (status, result, error) = if crashes >= MAX_CRASHES {
        let message = format!("stopped after the worker died {crashes} times while running it");
        tracing::error!(job_id = id, job_type = %J::TYPE, "{message}");
        (JobStatus::Failed, None, Some(message))
    } else {
        // Boxed: a handler's future is large, and moved by value it would
        // cost every caller's stack its size again.
        alive_while(
            &ctx.db,
            id,
            RECORD_BEAT,
            Box::pin(run_with_retries(ctx, job)),
        )
        .await
    };
    record_outcome(ctx, id, status, result, error).await;
    ctx.metrics
        .finished(J::TYPE.as_str(), status.as_str(), started.elapsed());
    Ok(())
}

/// Writes a finished run's outcome, however long PostgreSQL is away: the
/// work is done, and running it again in full to record it would repeat
/// it (a flush, a preload). A result PostgreSQL refuses as data is
/// replaced by a note saying so; the status stands.
async fn record_outcome(
    ctx: &JobContext,
    id: &str,
    status: JobStatus,
    mut result: Option<serde_json::Value>,
    mut error: Option<String>,
) {
    let mut attempt = 0;
    loop {
        match jobs::finish(&ctx.db, id, status, result.as_ref(), error.as_deref()).await {
            Ok(_) => return,
            Err(err @ cache_shared::Error::StoreUnavailable(_)) => {
                attempt += 1;
                let delay = backoff(attempt);
                tracing::warn!(job_id = id, %err, ?delay, "job outcome not recorded yet; retrying (the work is not run again)");
                tokio::time::sleep(delay).await;
            }
            Err(err) if result.is_some() => {
                tracing::error!(job_id = id, %err, "job result refused by PostgreSQL; recording the status without it");
                result = None;
                error = Some(format!(
                    "{}the result could not be stored: {err}",
                    error.map(|e| format!("{e}; ")).unwrap_or_default()
                ));
            }
            Err(err) => {
                tracing::error!(job_id = id, %err, "job outcome cannot be recorded; leaving the record as it is");
                return;
            }
        }
    }
}

/// How often a running job's record is touched while it runs, whatever its
/// batches do (a retry's backoff, a slow download): well inside the silence
/// after which recovery looks for it in its queue.
pub const RECORD_BEAT: Duration = Duration::from_secs(60);

/// Runs `work`, touching job `id`'s record every `beat` meanwhile (both
/// polled together: a slow touch never holds the work up).
pub async fn alive_while<T>(
    db: &sqlx::PgPool,
    id: &str,
    beat: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut touches = std::pin::pin!(touch_every(db, id, beat));
    loop {
        tokio::select! {
            done = &mut work => return done,
            () = &mut touches => {}
        }
    }
}

/// Touches job `id`'s record every `beat`, forever.
async fn touch_every(db: &sqlx::PgPool, id: &str, beat: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(err) = jobs::touch(db, id).await {
            tracing::warn!(job_id = id, %err, "could not touch a running job's record; retrying next beat");
        }
    }
}

/// Runs `job` under the retry policy; its final status, result and error.
async fn run_with_retries<J: Job>(
    ctx: &JobContext,
    job: &J,
) -> (JobStatus, Option<serde_json::Value>, Option<String>) {
    let id = job.job_id();
    let mut run = 1;
    loop {
        match job.run(ctx).await {
            Ok(Outcome::Succeeded(result)) => return (JobStatus::Succeeded, Some(result), None),
            Ok(Outcome::Cancelled(result)) => return (JobStatus::Cancelled, Some(result), None),
            Err(JobError::Permanent(message)) => {
                tracing::warn!(job_id = id, job_type = %J::TYPE, %message, "job failed");
                return (JobStatus::Failed, None, Some(message));
            }
            Err(JobError::Retryable(err)) if run < MAX_RUNS => {
                let delay = backoff(run);
                tracing::warn!(job_id = id, job_type = %J::TYPE, %err, ?delay, run, "job run failed; retrying");
                tokio::time::sleep(delay).await;
                run += 1;
            }
            Err(JobError::Retryable(err)) => {
                let message = format!("gave up after {MAX_RUNS} runs: {err}");
                tracing::warn!(job_id = id, job_type = %J::TYPE, %message, "job failed");
                return (JobStatus::Failed, None, Some(message));
            }
        }
    }
}
