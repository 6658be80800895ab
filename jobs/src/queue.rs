//! The enqueue side: what the api calls to start a job. A job is first
//! recorded in PostgreSQL (the source of truth for its status), then pushed
//! onto its type's Redis queue under the record's id.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskId, TaskSink};
use apalis_redis::{Config, RedisStorage};
use cache_shared::Error;
use cache_shared::db::admin_actions;
use cache_shared::db::jobs::{self, JobRecord, NewJob};
use cache_shared::oplog::{OpLog, Outcome};
use deadpool_redis::redis::aio::ConnectionManager;
use serde::Serialize;
use sqlx::PgPool;

pub use crate::JobSpec;
use crate::JobType;
use crate::allow_list::AllowList;
use crate::payload::{Checks, Queued};
use crate::policy::{Authorized, Requester};
use crate::preload::PreloadParams;

/// Where the queues live and how fast a dead worker's jobs come back.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Prefix of every queue key, e.g. `cache-service` gives `cache-service:jobs:flush`.
    pub prefix: String,
    /// How often workers report to the queue.
    pub heartbeat: Duration,
    /// Missed heartbeats after which a worker's in-flight jobs are handed to another.
    pub missed_heartbeats: usize,
}

impl QueueSettings {
    pub fn from_args(args: &cache_shared::config::QueueArgs) -> Self {
        Self {
            prefix: args.queue_prefix.clone(),
            heartbeat: Duration::from_secs(args.queue_heartbeat_seconds),
            // Bounded to 1..=100 by the setting's parser.
            missed_heartbeats: usize::try_from(args.queue_missed_heartbeats).unwrap_or(2),
        }
    }

    /// The apalis storage of `J`'s queue on `conn`.
    pub fn storage<J: Queued>(&self, conn: ConnectionManager) -> RedisStorage<J> {
        RedisStorage::new(conn).with_config(self.config(J::QUEUE))
    }

    /// How long a dead worker's jobs wait before the queue hands them to
    /// another (apalis's own reckoning of an orphaned worker).
    pub fn hand_over(&self) -> Duration {
        self.config("").orphaned_duration()
    }

    /// The apalis configuration of queue `queue` (a job type's or an upkeep queue's name).
    pub fn config(&self, queue: &str) -> Config {
        Config::default()
            .queue(crate::queue_name(&self.prefix, queue))
            .heartbeat_interval(self.heartbeat)
            .missed_heartbeats(self.missed_heartbeats)
    }
}

/// Jobs waiting in one queue.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeDepth {
    #[serde(rename = "type")]
    pub job_type: String,
    /// Waiting to run (due now or scheduled for a retry).
    pub waiting: u64,
    /// Given up by the queue after its own retries.
    pub dead: u64,
}

/// Depth of every queue.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDepth {
    pub waiting: u64,
    pub dead: u64,
    pub queues: Vec<TypeDepth>,
}

impl JobSpec {
    /// A job from its type name and the JSON text of its parameters.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming `type` or `params`.
    pub fn from_parts(job_type: &str, params_json: &str) -> Result<Self, Error> {
        job_type
            .parse::<JobType>()
            .map_err(|e| Error::validation("type", e.to_string()))?;
        // The tag first and through text: raw JSON values inside the
        // parameters (preload items) only read from text, in that order.
        let text = format!(r#"{{"type":"{job_type}","params":{params_json}}}"#);
        serde_json::from_str(&text)
            .map_err(|e| Error::validation("params", format!("not a valid {job_type} job: {e}")))
    }

    /// The parameters as the job's record keeps them: as given, except that
    /// inline preload items travel in the queue only and the record counts
    /// them (a 10 000-item body would otherwise be parsed again by
    /// PostgreSQL and echoed by every status poll of the job), and that a
    /// preload URL is recorded without its credentials, which only the
    /// queue carries.
    fn recorded_params(&self) -> Result<serde_json::Value, Error> {
        match self {
            JobSpec::Preload(PreloadParams {
                items: Some(items), ..
            }) => return Ok(serde_json::json!({ ITEM_COUNT: items.len() })),
            JobSpec::Preload(PreloadParams { url: Some(url), .. }) => {
                return Ok(serde_json::json!({ "url": crate::allow_list::redact(url) }));
            }
            _ => {}
        }
        let mut tagged = serde_json::to_value(self).map_err(|e| Error::Internal(Box::new(e)))?;
        Ok(tagged
            .get_mut("params")
            .map(serde_json::Value::take)
            .unwrap_or_else(|| serde_json::json!({})))
    }
}

/// What an idempotency key is bound to: the job as authorized (type and
/// parameters, the tenant scope included).
fn spec_digest(spec: &JobSpec) -> Result<[u8; 32], Error> {
    use sha2::Digest;
    let text = serde_json::to_vec(spec).map_err(|e| Error::Internal(Box::new(e)))?;
    Ok(sha2::Sha256::digest(&text).into())
}

/// How much longer than a push an audit event of a job being queued is held
/// back, so that it is settled (released or forgotten) before it could go out.
const AUDIT_HOLD_MARGIN: Duration = Duration::from_secs(5);

/// The field a job record counts inline preload items in, in place of them.
pub const ITEM_COUNT: &str = "itemCount";

/// Records and enqueues jobs.
#[derive(Clone)]
pub struct JobQueue {
    conn: ConnectionManager,
    oplog: Option<Arc<OpLog>>,
    settings: QueueSettings,
    db: PgPool,
    max_value_bytes: usize,
    allow: AllowList,
    push_timeout: Duration,
    /// Jobs a tenant may have queued or running (0: unlimited) unless its
    /// own limit says otherwise.
    max_active_jobs: u64,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl JobQueue {
    pub fn new(
        conn: ConnectionManager,
        settings: QueueSettings,
        db: PgPool,
        max_value_bytes: usize,
        push_timeout: Duration,
    ) -> Self {
        Self {
            conn,
            settings,
            db,
            max_value_bytes,
            allow: AllowList::default(),
            push_timeout,
            oplog: None,
            max_active_jobs: 0,
        }
    }

    /// The default bound on a tenant's jobs queued or running (`TENANT_MAX_ACTIVE_JOBS`).
    #[must_use]
    pub fn with_max_active_jobs(mut self, max: u64) -> Self {
        self.max_active_jobs = max;
        self
    }

    /// Writes every flush started through this queue to the operation log.
    #[must_use]
    pub fn with_oplog(mut self, oplog: Option<Arc<OpLog>>) -> Self {
        self.oplog = oplog;
        self
    }

    /// The hosts preloads may fetch from (none by default).
    #[must_use]
    pub fn with_preload_hosts(mut self, allow: AllowList) -> Self {
        self.allow = allow;
        self
    }

    /// Validates `spec` and applies the job policy for `requester`
    /// ([`crate::policy`]): the only way to an [`Authorized`] job.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for bad parameters, [`Error::Forbidden`] naming
    /// the rule, [`Error::NotFound`] for a backup the requester cannot see,
    /// [`Error::StoreUnavailable`] when the backup cannot be looked up.
    pub async fn authorize(
        &self,
        requester: &Requester,
        spec: JobSpec,
    ) -> Result<Authorized, Error> {
        let checks = Checks {
            max_value_bytes: self.max_value_bytes,
            preload_hosts: &self.allow,
        };
        crate::policy::authorize(&self.db, &checks, requester, spec).await
    }

    pub fn db(&self) -> &PgPool {
        &self.db
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Records and enqueues a job the policy let through
    /// ([`JobQueue::authorize`]); a repeated idempotency key within 24 hours
    /// answers with the job it first created.
    ///
    /// # Errors
    ///
    /// [`Error::StoreUnavailable`] or [`Error::CacheUnavailable`] when a
    /// dependency is down (nothing left behind).
    pub async fn submit(
        &self,
        job: Authorized,
        idempotency_key: Option<&str>,
    ) -> Result<JobRecord, Error> {
        let idempotency = idempotency_key
            .map(|key| -> Result<_, Error> {
                Ok(jobs::Idempotency {
                    key,
                    request_digest: spec_digest(job.spec())?,
                })
            })
            .transpose()?;
        let (tenant, spec, created_by) = job.into_parts();
        let id = ulid::Ulid::new().to_string();
        let new = NewJob {
            id: id.clone(),
            job_type: spec.job_type().as_str().to_owned(),
            tenant_id: tenant.as_str().to_owned(),
            params: spec.recorded_params()?,
            created_by: Some(created_by),
        };
        let (record, created) =
            jobs::insert(&self.db, &new, idempotency.as_ref(), self.max_active_jobs).await?;
        if !created {
            return Ok(record);
        }
        let flushed = match &spec {
            JobSpec::Flush(params) => Some(params.describe()),
            _ => None,
        };
        // Flushes and restores are audited; the event is held until the push
        // settles, so a job that never reaches the queue never reaches the
        // audit service either.
        let action = match spec.job_type() {
            JobType::Flush | JobType::Restore => {
                let recorded = admin_actions::record_held(
                    &self.db,
                    record.created_by.as_deref().unwrap_or("internal"),
                    tenant.as_str(),
                    spec.job_type().as_str(),
                    &serde_json::json!({ "jobId": id, "params": new.params }),
                    self.push_timeout + AUDIT_HOLD_MARGIN,
                )
                .await;
                match recorded {
                    Ok(action) => Some(action),
                    Err(err) => return Err(self.abandon(&id, err).await),
                }
            }
            _ => None,
        };
        let pushed = spec.push(self, &id, tenant.as_str()).await;
        if let Some(action) = action {
            let settled = match &pushed {
                Ok(()) => admin_actions::release(&self.db, action).await,
                Err(_) => admin_actions::forget(&self.db, action).await,
            };
            if let Err(err) = settled {
                tracing::error!(job_id = %id, %err, "could not settle the audit record of a job (its hold lapses on its own)");
            }
        }
        if let Err(err) = pushed {
            return Err(self.abandon(&id, err).await);
        }
        if let Err(err) = jobs::mark_enqueued(&self.db, &id, &self.settings.prefix).await {
            tracing::warn!(job_id = %id, %err, "job queued, but its record does not say so: recovery will not cover it if the queue loses it");
        }
        if let (Some(oplog), Some(target)) = (&self.oplog, flushed) {
            oplog.record(
                tenant.as_str(),
                "flush",
                Some(&target),
                Outcome::Ok,
                0,
                None,
            );
        }
        Ok(record)
    }

    /// Removes the record of a job that failed to enqueue (never leave a
    /// record for a job no worker will ever see) and hands back the error.
    async fn abandon(&self, id: &str, err: Error) -> Error {
        if let Err(cleanup) = jobs::delete(&self.db, id).await {
            tracing::error!(job_id = %id, %cleanup, "could not remove the record of a job that failed to enqueue");
        }
        err
    }

    /// Jobs waiting and dead in every queue (from the queues' own keys).
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`].
    pub async fn depth(&self) -> Result<QueueDepth, Error> {
        let mut pipe = deadpool_redis::redis::pipe();
        for name in crate::all_queues() {
            let config = Config::default().queue(crate::queue_name(&self.settings.prefix, name));
            pipe.llen(config.active_jobs_list())
                .zcard(config.scheduled_jobs_set())
                .scard(config.dead_jobs_set());
        }
        let mut conn = self.conn.clone();
        let counts: Vec<u64> = tokio::time::timeout(self.push_timeout, pipe.query_async(&mut conn))
            .await
            .map_err(|_| Error::CacheUnavailable("the queues did not answer in time".into()))??;
        let mut depth = QueueDepth::default();
        for (name, c) in crate::all_queues().zip(counts.chunks(3)) {
            let waiting = c.first().copied().unwrap_or(0) + c.get(1).copied().unwrap_or(0);
            let dead = c.get(2).copied().unwrap_or(0);
            depth.waiting += waiting;
            depth.dead += dead;
            depth.queues.push(TypeDepth {
                job_type: name.to_owned(),
                waiting,
                dead,
            });
        }
        Ok(depth)
    }

    /// Pushes a job again from its record, which shows it was authorized
    /// when it was submitted (recovery of a job its queue lost).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] when the record no longer describes a job,
    /// [`Error::CacheUnavailable`].
    pub async fn requeue(&self, record: &JobRecord) -> Result<(), Error> {
        JobSpec::from_parts(&record.job_type, &record.params.to_string())?
            .push(self, &record.id, &record.tenant_id)
            .await
    }

    /// A connection to the queues' Redis, for the worker's upkeep of them.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Pushes an upkeep payload (no record: it must queue while PostgreSQL is down).
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when the queue does not take it in time.
    pub async fn push_internal<J: Queued>(&self, job: J) -> Result<(), Error> {
        self.push_task(job).await
    }

    pub(crate) async fn push_task<J: Queued>(&self, job: J) -> Result<(), Error> {
        let task_id = TaskId::from_str(job.task_id())
            .map_err(|e| Error::internal(format!("job id is not a ULID: {e}")))?;
        let task = TaskBuilder::new(job).task_id(task_id).build();
        let mut storage = self.settings.storage::<J>(self.conn.clone());
        match tokio::time::timeout(self.push_timeout, storage.push_task(task)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Error::CacheUnavailable(err.to_string().into())),
            Err(_) => Err(Error::CacheUnavailable(
                "the queue did not accept the job in time".into(),
            )),
        }
    }
}
