//! The worker's care of the queues: lost jobs put back from their records
//! (Redis lost its data) and finished jobs' queue data swept.

use std::time::Duration;

use apalis_redis::RedisStorage;
use cache_jobs::queue::JobQueue;
use cache_shared::Error;
use cache_shared::db::jobs;

/// Jobs one recovery query reads (a pass walks them all, in id order).
const RECOVERY_BATCH: i64 = 500;

/// The error of a job that vanished from its queue and cannot be rebuilt.
pub const LOST_FROM_QUEUE: &str = "lost from its queue (Redis lost its data) and not rebuildable from its record (inline preload items travel in the queue only): submit it again";

/// What one [`recover_lost`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Pushed onto their queue again from their records.
    pub requeued: u64,
    /// Ended `failed`: their records cannot rebuild them.
    pub failed: u64,
}

/// Puts back on their queue the jobs whose queued payload is gone (Redis
/// restarted without its data), rebuilt from their records, which would
/// otherwise say `queued` or `running` forever. Only jobs recorded as
/// queued under this prefix are looked at: a queued one once its record
/// has not changed for `queued_for`, a running one once it has not
/// reported for `running_idle` (choose it well beyond the queue's own
/// hand-over of a dead worker's jobs and the longest silence of a live
/// one), never one whose cancellation was asked. Lost means the queue's
/// payload hash no longer holds the id. Inline preload items travel in
/// the queue only: such a job ends `failed`, saying so. Safe from every
/// worker at once: each job is claimed by a compare-and-set on its
/// record, and the queue ignores a push of an id it holds.
///
/// # Errors
///
/// [`Error::CacheUnavailable`], [`Error::StoreUnavailable`].
pub async fn recover_lost(
    queue: &JobQueue,
    queued_for: Duration,
    running_idle: Duration,
) -> Result<Recovered, Error> {
    use deadpool_redis::redis;

    let mut recovered = Recovered::default();
    let mut after = String::new();
    loop {
        let batch = jobs::unsettled(
            queue.db(),
            &queue.settings().prefix,
            queued_for,
            running_idle,
            &after,
            RECOVERY_BATCH,
        )
        .await?;
        let Some(last) = batch.last() else {
            return Ok(recovered);
        };
        after.clone_from(&last.id);
        let mut pipe = redis::pipe();
        for job in &batch {
            pipe.hexists(
                queue.settings().config(&job.job_type).job_data_hash(),
                &job.id,
            );
        }
        let held: Vec<bool> = pipe.query_async(&mut queue.connection()).await?;
        for (job, held) in batch.iter().zip(held) {
            if !held {
                recover(queue, job, &mut recovered).await?;
            }
        }
        if batch.len() < RECOVERY_BATCH as usize {
            return Ok(recovered);
        }
    }
}

/// Pushes one lost job again from its record, or fails it when the
/// record cannot rebuild it; nothing when another worker claimed it first.
async fn recover(
    queue: &JobQueue,
    job: &jobs::Unsettled,
    recovered: &mut Recovered,
) -> Result<(), Error> {
    let Some(record) = jobs::claim_unsettled(queue.db(), job).await? else {
        return Ok(());
    };
    match queue.requeue(&record).await {
        Ok(()) => {
            tracing::warn!(job_id = %record.id, job_type = %record.job_type, "job missing from its queue; queued again from its record");
            recovered.requeued += 1;
        }
        Err(err @ Error::Validation { .. }) => {
            let inline_preload = record.params.get(cache_jobs::queue::ITEM_COUNT).is_some();
            let reason = if inline_preload {
                LOST_FROM_QUEUE.to_owned()
            } else {
                format!(
                    "lost from its queue (Redis lost its data) and its record no longer describes a job: {err}"
                )
            };
            if jobs::fail_unfinished(queue.db(), &record.id, &reason).await? {
                tracing::warn!(job_id = %record.id, job_type = %record.job_type, %reason, "job missing from its queue; failed");
                recovered.failed += 1;
            }
        }
        Err(err) => return Err(err),
    }
    Ok(())
}

/// Removes finished jobs' queue data older than `older_than` (PostgreSQL
/// keeps their history), the ids the queues' done and dead sets keep for
/// them, and the registration data of workers long gone. Safe to run from
/// every worker at once.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn vacuum(queue: &JobQueue, older_than: Duration) -> Result<u64, Error> {
    let mut removed = 0;
    for name in cache_jobs::all_queues() {
        removed += vacuum_queue(queue, name, older_than).await?;
    }
    Ok(removed)
}

async fn vacuum_queue(queue: &JobQueue, name: &str, older_than: Duration) -> Result<u64, Error> {
    use apalis_core::backend::Vacuum;
    use deadpool_redis::redis;

    let unavailable = |e: &dyn std::fmt::Display| Error::CacheUnavailable(e.to_string().into());
    let config = queue.settings().config(name);
    // Vacuuming never reads a job's payload: one storage type serves every queue.
    let mut storage =
        RedisStorage::<serde_json::Value>::new(queue.connection()).with_config(config.clone());
    let removed = storage
        .vacuum_before(older_than)
        .await
        .map_err(|e| unavailable(&e))?;
    let mut conn = queue.connection();
    for set in [config.done_jobs_set(), config.dead_jobs_set()] {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut conn)
            .await?;
        for chunk in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hexists(config.job_data_hash(), id);
            }
            let present: Vec<bool> = pipe.query_async(&mut conn).await?;
            let gone: Vec<&String> = chunk
                .iter()
                .zip(present)
                .filter_map(|(id, present)| (!present).then_some(id))
                .collect();
            if !gone.is_empty() {
                let _: i64 = redis::cmd("SREM")
                    .arg(&set)
                    .arg(&gone)
                    .query_async(&mut conn)
                    .await?;
            }
        }
    }
    // Registration data of workers that neither heartbeat nor hold jobs.
    let metadata_prefix = format!("{}:metadata:", config.workers_set());
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{metadata_prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await?;
        for key in keys {
            let Some(worker) = key.strip_prefix(&metadata_prefix) else {
                continue;
            };
            let (score, inflight): (Option<f64>, bool) = redis::pipe()
                .zscore(config.workers_set(), worker)
                .exists(format!("{}:{worker}", config.inflight_jobs_set()))
                .query_async(&mut conn)
                .await?;
            if score.is_none() && !inflight {
                let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(removed as u64)
}
