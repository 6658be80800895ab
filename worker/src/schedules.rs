//! Firing schedules. A schedule fires as the API key that last defined it:
//! every tick goes through the job policy again with that key's rights,
//! and a schedule whose key is revoked or expired, or whose job is no
//! longer allowed, is disabled with the reason. A tick is claimed in
//! PostgreSQL with a compare-and-set before its job is submitted, so with
//! any number of workers each tick fires exactly once.

use cache_jobs::policy::{Authorized, Plane, Requester};
use cache_jobs::queue::JobQueue;
use cache_jobs::schedule::{CronSpec, job_spec};
use cache_shared::Error;
use cache_shared::api_keys::Role;
use cache_shared::db::{api_keys, schedules};
use cache_shared::keys::TenantId;
use chrono::{DateTime, Utc};

/// Fires every due tick once; returns how many jobs were started.
///
/// # Errors
///
/// [`Error::StoreUnavailable`] when PostgreSQL is down.
pub async fn fire_due(queue: &JobQueue) -> Result<usize, Error> {
    let mut fired = 0;
    for schedule in schedules::due(queue.db(), 100).await? {
        let Some(due) = schedule.next_run_at else {
            continue;
        };
        let (cron, job) = match as_creator(queue, &schedule, due).await {
            Ok(allowed) => allowed,
            Err(err @ (Error::StoreUnavailable(_) | Error::CacheUnavailable(_))) => {
                // The tick stays due: the next round asks again.
                tracing::warn!(schedule = %schedule.id, %err, "schedule not checked; retrying next round");
                continue;
            }
            Err(err) => {
                let reason = format!("disabled at {}: {err}", due.to_rfc3339());
                tracing::warn!(schedule = %schedule.id, %reason, "schedule may no longer fire");
                schedules::disable(queue.db(), &schedule.id, &reason).await?;
                continue;
            }
        };
        // Missed ticks (no worker ran) fire once, then the schedule moves on from now.
        let next = cron.next_after(due.max(Utc::now()));
        if !schedules::claim(queue.db(), &schedule.id, due, next).await? {
            continue; // another worker took this tick
        }
        match queue.submit(job, None).await {
            Ok(job) => {
                schedules::record_job(queue.db(), &schedule.id, &job.id).await?;
                fired += 1;
            }
            Err(err) => {
                tracing::warn!(schedule = %schedule.id, %err, "scheduled job could not be started");
            }
        }
    }
    Ok(fired)
}

/// The job of one tick, authorized as the schedule's creator would be now.
///
/// # Errors
///
/// [`Error::Forbidden`] when the creator's key is unusable or may no longer
/// start this job, [`Error::Validation`] for a schedule broken since it was
/// stored, [`Error::StoreUnavailable`].
async fn as_creator(
    queue: &JobQueue,
    schedule: &schedules::ScheduleRecord,
    due: DateTime<Utc>,
) -> Result<(CronSpec, Authorized), Error> {
    let cron = CronSpec::parse(&schedule.cron, &schedule.timezone)?;
    let spec = job_spec(&schedule.job_type, &schedule.params)?;
    let tenant = TenantId::from_record(&schedule.tenant_id)?;
    let key_id = schedule
        .created_by
        .as_deref()
        .ok_or_else(|| Error::Forbidden("the schedule has no creator key".into()))?;
    let key = api_keys::find_by_id(queue.db(), key_id)
        .await?
        .filter(|key| key.is_usable(Utc::now()))
        .ok_or_else(|| {
            Error::Forbidden(format!(
                "its creator key {key_id} is revoked, expired or gone"
            ))
        })?;
    let role = key.role();
    if role != Role::Operator && key.tenant_id != tenant.as_str() {
        return Err(Error::Forbidden(format!(
            "its creator key {key_id} belongs to another tenant"
        )));
    }
    cron.check_rate(role)?;
    let requester = Requester {
        plane: Plane::Public,
        tenant,
        role,
        // The tick in the record: a tick fired twice would show twice.
        label: format!("schedule:{}@{}", schedule.id, due.to_rfc3339()),
    };
    let job = queue.authorize(&requester, spec).await?;
    Ok((cron, job))
}
