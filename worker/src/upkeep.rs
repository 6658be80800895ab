//! The worker's upkeep: upkeep-queue deliveries (rollups, log batches), the
//! daily log retention sweep, audit delivery from the outbox and the
//! worker's own `/metrics`.

use std::time::{Duration, Instant};

use std::future::Future;

use apalis::prelude::{BoxDynError, Data};
use cache_jobs::payload::Queued;
use cache_jobs::upkeep::{LogPersistJob, StatsRollupJob};
use cache_shared::db::admin_actions::{self, PendingAudit};
use cache_shared::metrics::{JobMetrics, Metrics};
use cache_shared::outbound::{Client, OutboundError};
use cache_shared::retry::backoff;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::context::JobContext;
use crate::error::JobError;

/// An upkeep job: run until stored; the worker retries transient failures
/// for as long as it takes (nothing is dropped during an outage).
pub(crate) trait InternalJob: Queued {
    /// Does the work once; returns the rows it wrote.
    fn run(&self, ctx: &JobContext) -> impl Future<Output = Result<u64, JobError>> + Send;
}

impl InternalJob for StatsRollupJob {
    async fn run(&self, ctx: &JobContext) -> Result<u64, JobError> {
        let mut merged = 0;
        for tenant in &self.tenants {
            // Where the accounting cannot be read, the figures go in without it.
            let usage = match cache_shared::keys::TenantId::from_record(&tenant.tenant_id) {
                Ok(id) => ctx.cache.usage(&id).await.ok(),
                Err(_) => None,
            };
            let added = cache_shared::db::statistics::add_contribution(
                &ctx.db,
                &self.instance_id,
                &tenant.tenant_id,
                self.period_start,
                self.period_minutes,
                &tenant.figures,
                usage,
            )
            .await?;
            merged += u64::from(added.is_some());
        }
        Ok(merged)
    }
}

impl InternalJob for LogPersistJob {
    async fn run(&self, ctx: &JobContext) -> Result<u64, JobError> {
        let stored = cache_shared::db::oplog::insert_batch(&ctx.db, &self.records).await?;
        ctx.metrics.oplog_persisted.inc_by(stored.inserted);
        ctx.metrics.oplog_rejected.inc_by(stored.rejected);
        Ok(stored.inserted)
    }
}

/// One delivery of an upkeep job: retried until stored, however long
/// PostgreSQL is away (the payload stays with this worker meanwhile, and a
/// dead worker's payloads go back to the queue). Only a payload that can
/// never be stored is dropped, loudly.
pub(crate) async fn handle<J: InternalJob>(
    job: J,
    ctx: Data<JobContext>,
) -> Result<(), BoxDynError> {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        match job.run(&ctx).await {
            Ok(_) => {
                ctx.metrics
                    .finished(J::QUEUE, "succeeded", started.elapsed());
                return Ok(());
            }
            Err(JobError::Retryable(err)) => {
                attempt += 1;
                let delay = backoff(attempt);
                tracing::warn!(queue = J::QUEUE, task = job.task_id(), %err, ?delay, attempt, "not stored yet; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(JobError::Permanent(message)) => {
                tracing::error!(queue = J::QUEUE, task = job.task_id(), %message, "payload cannot be stored; dropped");
                ctx.metrics.finished(J::QUEUE, "failed", started.elapsed());
                return Ok(());
            }
        }
    }
}

/// How often the retention sweep runs.
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Rows deleted per statement of the sweep.
const RETENTION_CHUNK: i64 = 10_000;

/// How long what the service records is kept, in days.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// Operation log records.
    pub log_days: u32,
    /// Finished jobs, backups and memory reports.
    pub job_days: u32,
}

fn days_ago(days: u32) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::days(i64::from(days))
}

/// Deletes what is past retention at start and then daily. Every worker
/// may run it: deleting what is already gone is harmless.
pub(crate) async fn retention_loop(db: PgPool, keep: Retention, stop: watch::Receiver<bool>) {
    let db = &db;
    cache_shared::shutdown::every(RETENTION_EVERY, stop, move || async move {
        let cutoff = days_ago(keep.log_days);
        match cache_shared::db::oplog::purge_before(db, cutoff, RETENTION_CHUNK).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(
                deleted,
                days = keep.log_days,
                "operation log records past retention deleted"
            ),
            Err(err) => tracing::warn!(%err, "log retention sweep failed; retrying tomorrow"),
        }
        let cutoff = days_ago(keep.job_days);
        match cache_shared::db::retention::sweep(db, cutoff, RETENTION_CHUNK).await {
            Ok(swept) => tracing::info!(
                jobs = swept.jobs,
                backups = swept.backups,
                reports = swept.reports,
                days = keep.job_days,
                "jobs, backups and reports past retention deleted"
            ),
            Err(err) => tracing::warn!(%err, "job retention sweep failed; retrying tomorrow"),
        }
    })
    .await;
}

/// Audit events claimed per round.
const AUDIT_BATCH: i64 = 5;
/// Another worker leaves claimed events alone this long: longer than a
/// round can take (5 events × 4 attempts × 5 s timeout + 7 s of backoff).
const AUDIT_LEASE_SECONDS: f64 = 180.0;
/// An event that failed every retry of a round is tried again after this.
const AUDIT_RETRY_SECONDS: f64 = 10.0;

/// Posts pending admin actions to the audit service, oldest first; an event
/// that cannot be delivered stays pending and holds back newer ones, so the
/// service receives them in order. One the service refuses as such (a 4xx)
/// is closed with the refusal recorded, never sent again.
pub(crate) async fn audit_loop(
    db: PgPool,
    url: Option<String>,
    client: Client,
    metrics: JobMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let Some(base) = url else { return };
    let url = format!("{}/internal/events", base.trim_end_matches('/'));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let due = match admin_actions::claim_audit(&db, AUDIT_BATCH, AUDIT_LEASE_SECONDS).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(%err, "audit outbox not read; retrying");
                continue;
            }
        };
        let mut held_back = false;
        for event in due {
            if held_back {
                release(&db, &event, "an earlier event is not delivered yet").await;
                continue;
            }
            let body = event_body(&event);
            let sent = tokio::select! {
                sent = client.post_with_retries(&url, &body) => sent,
                _ = stop.changed() => {
                    release(&db, &event, "worker stopping").await;
                    return;
                }
            };
            match sent {
                Ok(()) => {
                    metrics.audit_delivered.inc();
                    if let Err(err) = admin_actions::audit_delivered(&db, event.id).await {
                        tracing::warn!(%err, id = event.id, "audit event delivered but not marked; it may be sent again");
                    }
                }
                Err(err @ OutboundError::Refused(_)) => {
                    tracing::error!(%err, id = event.id, "audit service refused the event; recorded, not retried");
                    if let Err(store) =
                        admin_actions::audit_refused(&db, event.id, &err.to_string()).await
                    {
                        tracing::warn!(err = %store, id = event.id, "refusal not recorded; the event comes back when its lease ends");
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, id = event.id, "audit event not delivered; kept for later");
                    release(&db, &event, &err.to_string()).await;
                    held_back = true;
                }
            }
        }
    }
}

async fn release(db: &PgPool, event: &PendingAudit, why: &str) {
    if let Err(err) = admin_actions::audit_failed(db, event.id, why, AUDIT_RETRY_SECONDS).await {
        tracing::warn!(%err, id = event.id, "audit event lease not released; it comes back when the lease ends");
    }
}

/// The audit service's view of an admin action.
pub fn event_body(event: &PendingAudit) -> serde_json::Value {
    serde_json::json!({
        "eventId": format!("cache-service-{}", event.id),
        "service": "cache-service",
        "type": format!("cache.{}", event.action),
        "action": event.action,
        "actor": event.actor,
        "tenantId": event.tenant_id,
        "details": event.details,
        "occurredAt": event.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// Serves `GET /metrics` on `listener` until stopped.
pub(crate) async fn serve_metrics(
    listener: Option<tokio::net::TcpListener>,
    metrics: Metrics,
    tokens: cache_shared::tokens::ServiceTokens,
    mut stop: watch::Receiver<bool>,
) {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    let Some(listener) = listener else { return };
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let metrics = metrics.clone();
            let tokens = tokens.clone();
            async move {
                // With METRICS_TOKEN set, as the api's: only its bearer tokens.
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(cache_shared::tokens::bearer)
                    .unwrap_or("");
                if !tokens.is_empty() && !tokens.accepts(given.as_bytes()) {
                    return (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Bearer")],
                        "missing or wrong metrics token\n",
                    )
                        .into_response();
                }
                (
                    [(header::CONTENT_TYPE, cache_shared::metrics::TEXT_FORMAT)],
                    metrics.render(),
                )
                    .into_response()
            }
        }),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
    if let Err(err) = served {
        tracing::warn!(%err, "worker metrics endpoint stopped");
    }
}

/// How often the worker looks for evictions.
const EVICTIONS_EVERY: Duration = Duration::from_secs(20);
/// Keys a recount step reads.
const RECOUNT_BATCH: usize = 1000;
use cache_shared::quota::COUNTED_MARKER;
/// Held by the worker recounting, so workers take turns.
const RECOUNT_LOCK: &str = "q:{_platform}:recounting";

/// Recounts tenant and namespace usage from the keys
/// ([`cache_shared::quota::reconcile`]) when the accounting cannot have seen
/// a change: the first time a worker runs on a Redis (keys written before
/// accounting existed), whenever Redis has evicted keys since the last look,
/// and when asked (the marker removed: a namespace changed, a flush ran).
/// One worker at a time.
pub(crate) async fn recount_loop(
    cache: cache_shared::cache::Cache,
    step_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let cache = &cache;
    let evicted = &std::sync::atomic::AtomicU64::new(u64::MAX);
    cache_shared::shutdown::every(EVICTIONS_EVERY, stop, move || async move {
        if let Err(err) = recount_if_needed(cache, evicted, step_timeout).await {
            tracing::warn!(%err, "usage recount not done; retrying next round");
        }
    })
    .await;
}

async fn recount_if_needed(
    cache: &cache_shared::cache::Cache,
    last_evicted: &std::sync::atomic::AtomicU64,
    step_timeout: Duration,
) -> Result<(), cache_shared::Error> {
    use deadpool_redis::redis as r;
    use std::sync::atomic::Ordering;

    let redis = cache.redis();
    let evicted = redis.server_figures().await?.evicted_keys;
    let before = last_evicted.swap(evicted, Ordering::Relaxed);
    let (counted, lock_taken): (bool, bool) = redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let counted: bool = r::cmd("EXISTS")
                .arg(COUNTED_MARKER)
                .query_async(&mut conn)
                .await?;
            let evictions = before != u64::MAX && evicted > before;
            if counted && !evictions {
                return Ok((true, false));
            }
            let taken: Option<String> = r::cmd("SET")
                .arg(RECOUNT_LOCK)
                .arg(std::process::id())
                .arg("NX")
                .arg("PX")
                .arg(600_000)
                .query_async(&mut conn)
                .await?;
            Ok((counted, taken.is_some()))
        })
        .await?;
    if !lock_taken {
        return Ok(());
    }
    let result = cache_shared::quota::reconcile(
        redis,
        cache.namespaces(),
        RECOUNT_BATCH,
        step_timeout.max(Duration::from_secs(5)),
    )
    .await;
    redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let mut pipe = r::pipe();
            pipe.del(RECOUNT_LOCK).ignore();
            if result.is_ok() {
                pipe.set(COUNTED_MARKER, 1).ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
            Ok(())
        })
        .await?;
    let done = result?;
    tracing::info!(
        tenants = done.tenants,
        namespaces = done.namespaces,
        raced = done.raced,
        keys = done.keys,
        first = !counted,
        "tenant usage recounted from the keys"
    );
    Ok(())
}
