//! `cache-worker`: the process that runs the service's jobs. It registers one
//! queue worker per job type (bounded concurrency, unique names, restarted
//! when its backend fails), reports itself alive through heartbeats that
//! `/health` reads, sweeps finished jobs' queue data, puts back jobs that
//! vanished from their queue, and on SIGTERM stops fetching, lets running
//! jobs finish their batch and exits. It never serves requests.

pub mod context;
pub mod error;
pub mod jobs;
mod key_events;
pub mod namespace_trim;
pub mod progress;
pub mod recovery;
pub mod runner;
mod schedules;
mod slots;
mod upkeep;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apalis::prelude::{
    BackendExt, BoxDynError, Data, Monitor, PollSnapshot, PollStrategy, WorkerBuilder,
    WorkerBuilderExt,
};
use cache_jobs::allow_list::AllowList;
use cache_jobs::backup::{BackupParams, RestoreParams};
use cache_jobs::compress::CompressParams;
use cache_jobs::flush::FlushParams;
use cache_jobs::memory_analysis::AnalysisParams;
use cache_jobs::payload::{NoParams, Payload, Queued};
use cache_jobs::preload::PreloadParams;
use cache_jobs::queue::{JobQueue, QueueSettings};
use cache_jobs::reencrypt::ReencryptParams;
use cache_jobs::upkeep::{LogPersistJob, StatsRollupJob};
use cache_shared::sessions::Owner;

use crate::context::{JobContext, Pacing, PreloadSources};
use crate::jobs::Handler;
use crate::jobs::fetch::FetchLimits;
use crate::recovery::Recovered;
use crate::runner::{Delivery, Job};
use crate::upkeep::InternalJob;
use cache_shared::cache::{Cache, CacheLimits};
use cache_shared::config::{
    CacheSettings, DatabaseSettings, OutboundSettings, PreloadArgs, QueueArgs, RedisSettings,
    TelemetrySettings,
};
use cache_shared::health::{self, HEARTBEAT_INTERVAL};
use cache_shared::metrics::{JobMetrics, Metrics};
use cache_shared::redis::RedisStore;
use cache_shared::shutdown::every;
use cache_shared::stats::live::LiveStats;
use clap::{Args, Parser, Subcommand};
use deadpool_redis::redis::aio::ConnectionManager;

/// How a run ended when it did not fail; the JSON is the job's `result`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(serde_json::Value),
    /// Cancellation was requested and honoured between batches.
    Cancelled(serde_json::Value),
}

#[derive(Debug, Parser)]
#[command(
    name = "cache-worker",
    version,
    about = "The cache-service job worker."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Settings of `run`, the default command.
    #[command(flatten)]
    pub run: WorkerSettings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker and its schedules (the default).
    Run(Box<WorkerSettings>),
}

impl Cli {
    pub fn settings(self) -> WorkerSettings {
        match self.command {
            Some(Command::Run(settings)) => *settings,
            None => self.run,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    /// Prefix of this worker's name in heartbeats (pid and a ULID are appended).
    #[arg(long, env = "WORKER_NAME", default_value = "worker")]
    pub worker_name: String,

    /// Jobs of one type run at the same time by this process.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_concurrency: u16,

    /// Jobs of one type one tenant may run at once in this process (default: half of WORKER_CONCURRENCY, at least 1).
    #[arg(long, env = "WORKER_TENANT_SLOTS",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_tenant_slots: Option<u16>,

    /// Time running jobs get to finish their batch after SIGTERM, in milliseconds.
    #[arg(long, env = "WORKER_SHUTDOWN_TIMEOUT_MS", default_value_t = 20_000)]
    pub worker_shutdown_timeout_ms: u64,

    /// Keys per batch of preload, analysis, compression, backup and cleanup jobs.
    #[arg(long, env = "JOB_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub job_batch_size: u64,

    /// Keys per `SCAN` page of a flush step.
    #[arg(long, env = "FLUSH_BATCH_SIZE", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub flush_batch_size: u64,

    /// Longest one flush step holds Redis, in microseconds: the most another
    /// tenant's command waits behind a flush.
    #[arg(long, env = "FLUSH_STEP_BUDGET_US", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(50..=100_000))]
    pub flush_step_budget_us: u64,

    /// Most keys one flush examines (and so at most removes) per second.
    #[arg(long, env = "FLUSH_MAX_KEYS_PER_SECOND", default_value_t = 110_000,
          value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub flush_max_keys_per_second: u64,

    /// Pause between a job's batches in milliseconds, leaving Redis to requests.
    #[arg(long, env = "JOB_BATCH_PAUSE_MS", default_value_t = 2)]
    pub job_batch_pause_ms: u64,

    /// Seconds between sweeps of finished jobs' queue data.
    #[arg(long, env = "QUEUE_VACUUM_INTERVAL_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub queue_vacuum_interval_seconds: u64,

    /// Finished jobs keep their queue data this long (PostgreSQL keeps their history).
    #[arg(long, env = "QUEUE_KEEP_FINISHED_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(60..=2_592_000))]
    pub queue_keep_finished_seconds: u64,

    /// Operation log records are kept this many days (swept daily).
    #[arg(long, env = "LOG_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub log_retention_days: u32,

    /// Finished jobs, backups and memory reports are kept this many days (swept daily).
    #[arg(long, env = "JOB_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub job_retention_days: u32,

    /// Port of this worker's Prometheus `/metrics` (0: not served).
    #[arg(long, env = "WORKER_METRICS_PORT", default_value_t = 3012)]
    pub worker_metrics_port: u16,

    /// Address the worker's `/metrics` listens on.
    #[arg(long, env = "WORKER_METRICS_ADDRESS", default_value = "0.0.0.0")]
    pub worker_metrics_address: std::net::IpAddr,

    #[command(flatten)]
    pub metrics: cache_shared::config::MetricsTokenArgs,

    /// Where admin actions are posted (`{url}/internal/events`); unset: kept, not sent.
    #[arg(long, env = "AUDIT_SERVICE_URL")]
    pub audit_service_url: Option<String>,

    #[command(flatten)]
    pub outbound: OutboundSettings,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub preload: PreloadArgs,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub limits: cache_shared::limits::LimitSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

impl WorkerSettings {
    pub fn queue_settings(&self) -> QueueSettings {
        QueueSettings::from_args(&self.queue)
    }

    fn pacing(&self) -> Pacing {
        Pacing {
            batch: usize::try_from(self.job_batch_size).unwrap_or(1000),
            pause: Duration::from_millis(self.job_batch_pause_ms),
            flush_batch: usize::try_from(self.flush_batch_size).unwrap_or(50),
            flush_step_budget: Duration::from_micros(self.flush_step_budget_us),
            flush_keys_per_second: self.flush_max_keys_per_second,
            ..Pacing::default()
        }
    }
}

/// How long start-up waits for Redis and PostgreSQL before giving up.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// How often an idle queue worker looks for new jobs.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Wakes an idle queue worker every period to look for jobs. apalis's own
/// interval strategy re-arms its timer after a tick without polling it, so
/// a worker whose fetch right after a tick came back empty while its job
/// slots were full was left with no timer: it slept until its next
/// heartbeat and jobs queued meanwhile waited seconds. This one always
/// leaves the next tick armed.
struct Ticker(tokio::time::Interval);

impl Ticker {
    fn new(period: Duration) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self(interval)
    }
}

impl PollStrategy for Ticker {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        let mut ticked = false;
        // Polled until pending, so the waker is registered for the next tick.
        while self.0.poll_tick(cx).is_ready() {
            ticked = true;
        }
        if ticked {
            std::task::Poll::Ready(Some(()))
        } else {
            std::task::Poll::Pending
        }
    }
}

/// Deadline of the queue's own Redis calls (fetching, acknowledging).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the worker until `shutdown` resolves.
///
/// # Errors
///
/// When Redis or PostgreSQL cannot be reached at start-up.
pub async fn run(
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    cache_shared::tls::install_crypto_provider();
    let redis = RedisStore::new(&settings.redis).context("parsing REDIS_URL")?;
    let db = cache_shared::db::lazy_pool(&settings.database).context("parsing DATABASE_URL")?;
    let name = worker_name(&settings.worker_name);
    let metrics = Metrics::default();
    let metrics_listener = match settings.worker_metrics_port {
        0 => None,
        port => {
            let addr = std::net::SocketAddr::new(settings.worker_metrics_address, port);
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding WORKER_METRICS_PORT {addr}"))?,
            )
        }
    };

    // A refused password or a TLS mismatch is a configuration error: stop now, not after
    // the start-up deadline of an outage.
    cache_shared::redis::check_credentials(&settings.redis).await?;
    let queue_redis = settings
        .queue
        .redis(&settings.redis)
        .map_err(anyhow::Error::msg)?;
    if settings.queue.has_own_redis() {
        cache_shared::redis::check_credentials(&queue_redis).await?;
    }
    wait_for("redis", || async { redis.ping().await.map(|_| ()) }).await?;
    wait_for("postgres", || async {
        cache_shared::db::ping(&db, settings.database.timeout())
            .await
            .map(|_| ())
    })
    .await?;

    let tenant_limits = Arc::new(cache_shared::limits::LimitBook::new(
        settings.limits.clone(),
    ));
    if let Err(err) = cache_shared::db::tenant_limits::reload(&db, &tenant_limits).await {
        tracing::warn!(%err, "tenant limits not loaded yet; defaults apply until they are");
    }
    let ctx = JobContext {
        cache: Cache::new(
            redis.clone(),
            CacheLimits::from_settings(&settings.cache),
            Arc::new(LiveStats::default()),
            Arc::clone(&tenant_limits),
        )
        .with_encryption(
            settings.cache.keyring().map_err(anyhow::Error::msg)?,
            settings.cache.encrypt_platform_data,
        ),
        db: db.clone(),
        pacing: settings.pacing(),
        preload: PreloadSources {
            allow: AllowList::parse(&settings.preload.preload_allowed_hosts),
            limits: FetchLimits {
                max_bytes: settings.preload.preload_max_bytes,
                timeout: Duration::from_secs(settings.preload.preload_timeout_seconds),
            },
        },
        metrics: JobMetrics::new(&metrics).context("defining the Prometheus metrics")?,
    };
    metrics
        .add(cache_shared::metrics::SealCounts::new(
            ctx.cache.shared_keys(),
        )?)
        .context("defining the Prometheus metrics")?;
    if let Err(err) = cache_shared::db::namespaces::reload(&db, ctx.cache.namespaces()).await {
        tracing::warn!(%err, "namespaces not loaded yet; the defaults apply until they are");
    }
    let conn = cache_shared::redis::dedicated_connection(&queue_redis, QUEUE_TIMEOUT)
        .context("parsing QUEUE_REDIS_URL")?;
    let queues = settings.queue_settings();
    let concurrency = usize::from(settings.worker_concurrency);
    let tenant_slots = settings
        .worker_tenant_slots
        .map_or((concurrency / 2).max(1), usize::from);

    // Set when shutdown begins: deliveries still waiting for a slot go back
    // to the queue instead of starting work.
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    let registrar = Registrar {
        queues: &queues,
        conn: &conn,
        ctx: &ctx,
        concurrency,
        tenant_slots,
        closing: &closing_seen,
        process_name: &name,
    };
    // The registry: every queue of `cache_jobs::all_queues`, each drained
    // by its handler (a job type's parameters name its handler).
    let queue_workers = [
        Registrar::job::<FlushParams>,
        Registrar::job::<PreloadParams>,
        Registrar::job::<Owner>,
        Registrar::job::<NoParams>,
        Registrar::job::<AnalysisParams>,
        Registrar::job::<CompressParams>,
        Registrar::job::<BackupParams>,
        Registrar::job::<RestoreParams>,
        Registrar::job::<ReencryptParams>,
        Registrar::upkeep::<StatsRollupJob>,
        Registrar::upkeep::<LogPersistJob>,
    ];
    let monitor = queue_workers
        .iter()
        .fold(Monitor::new(), |monitor, add| add(&registrar, monitor));
    let monitor = monitor
        .should_restart(|worker, err| {
            let delay = restart_backoff(worker.restarts());
            tracing::warn!(worker = worker.name(), restarts = worker.restarts(), %err, ?delay, "queue worker stopped; restarting");
            // The monitor asks synchronously; waiting here (off the async
            // threads' work) keeps a dead Redis from a tight restart loop.
            // A single-threaded runtime (a worker run inside a test) cannot
            // lend its thread to a blocking wait: a short pause only.
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(|| std::thread::sleep(delay));
                }
                _ => std::thread::sleep(delay.min(Duration::from_millis(50))),
            }
            true
        })
        .shutdown_timeout(Duration::from_millis(settings.worker_shutdown_timeout_ms));

    let (stop_heartbeat, heartbeat_stopped) = tokio::sync::watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat_loop(
        redis.clone(),
        name.clone(),
        heartbeat_stopped.clone(),
    ));
    let job_queue = JobQueue::new(
        conn.clone(),
        queues.clone(),
        db.clone(),
        ctx.cache.limits().max_value_bytes,
        QUEUE_TIMEOUT,
    )
    .with_preload_hosts(ctx.preload.allow.clone())
    .with_max_active_jobs(settings.limits.tenant_max_active_jobs);
    let hygiene = tokio::spawn(vacuum_loop(
        job_queue.clone(),
        Duration::from_secs(settings.queue_vacuum_interval_seconds),
        Duration::from_secs(settings.queue_keep_finished_seconds),
        heartbeat_stopped.clone(),
    ));
    let recovery = tokio::spawn(recovery_loop(
        job_queue.clone(),
        queues.hand_over() + RECOVER_RUNNING_AFTER,
        heartbeat_stopped.clone(),
    ));
    let scheduler = tokio::spawn(schedule_loop(job_queue, heartbeat_stopped.clone()));
    let recount = tokio::spawn(upkeep::recount_loop(
        ctx.cache.clone(),
        settings.redis.command_timeout(),
        heartbeat_stopped.clone(),
    ));
    let limits = tokio::spawn(limits_loop(
        ctx.cache.clone(),
        db.clone(),
        heartbeat_stopped.clone(),
    ));
    let trims = tokio::spawn(namespace_trim::trim_loop(
        ctx.clone(),
        heartbeat_stopped.clone(),
    ));
    let key_events = tokio::spawn(key_events::forward_loop(
        settings.redis.clone(),
        redis.clone(),
        format!("{name}-{}", ulid::Ulid::new()),
        heartbeat_stopped.clone(),
    ));
    let retention = tokio::spawn(upkeep::retention_loop(
        db.clone(),
        upkeep::Retention {
            log_days: settings.log_retention_days,
            job_days: settings.job_retention_days,
        },
        heartbeat_stopped.clone(),
    ));
    let audit = tokio::spawn(upkeep::audit_loop(
        db.clone(),
        settings.audit_service_url.clone(),
        cache_shared::outbound::Client::new(&settings.outbound),
        ctx.metrics.clone(),
        heartbeat_stopped.clone(),
    ));
    let exporter = tokio::spawn(upkeep::serve_metrics(
        metrics_listener,
        metrics,
        cache_shared::tokens::ServiceTokens::from_list(settings.metrics.metrics_token.expose()),
        heartbeat_stopped,
    ));
    tracing::info!(worker = %name, queues = %queues.prefix, "cache-worker ready");

    let result = monitor
        .run_with_signal(async move {
            shutdown.await;
            closing.send_replace(true);
            Ok(())
        })
        .await;

    let _ = stop_heartbeat.send(true);
    for (task, what) in [
        (heartbeat, "heartbeat"),
        (hygiene, "queue vacuum"),
        (recovery, "lost-job recovery"),
        (scheduler, "scheduler"),
        (limits, "tenant limits"),
        (trims, "namespace trims"),
        (key_events, "key events"),
        (recount, "usage recount"),
        (retention, "log retention"),
        (audit, "audit delivery"),
        (exporter, "metrics endpoint"),
    ] {
        if let Err(err) = task.await {
            tracing::warn!(%err, "{what} task ended abnormally");
        }
    }
    if let Err(err) = health::sign_off(&redis, &name).await {
        tracing::warn!(%err, "could not remove the heartbeat at shutdown");
    }
    db.close().await;
    result.context("running the queue workers")?;
    tracing::info!(worker = %name, "cache-worker stopped");
    Ok(())
}

/// What every queue worker of this process is built from.
struct Registrar<'a> {
    queues: &'a QueueSettings,
    conn: &'a ConnectionManager,
    ctx: &'a JobContext,
    concurrency: usize,
    tenant_slots: usize,
    closing: &'a tokio::sync::watch::Receiver<bool>,
    process_name: &'a str,
}

impl Registrar<'_> {
    /// A job queue: the runner keeps each job's record; jobs run in the
    /// type's slots, a tenant's share at most ([`slots::Slots`]), out of
    /// more deliveries taken from the queue than run at once.
    fn job<P: Handler>(&self, monitor: Monitor) -> Monitor {
        let slots = Arc::new(slots::Slots::new(self.concurrency, self.tenant_slots));
        let closing = self.closing.clone();
        let handler = move |job: Payload<P>, ctx: Data<JobContext>| {
            let slots = Arc::clone(&slots);
            let mut closing = closing.clone();
            async move {
                let held = tokio::select! {
                    held = slots.acquire(job.tenant()) => held,
                    _ = closing.wait_for(|closing| *closing) => {
                        return Err("the worker is stopping: back to the queue".into());
                    }
                };
                let done = handle(job, ctx).await;
                drop(held);
                done
            }
        };
        self.register::<Payload<P>, _, _>(monitor, self.concurrency * DELIVERIES_PER_SLOT, handler)
    }

    /// An upkeep queue: no job record, retried until it lands.
    fn upkeep<J: InternalJob>(&self, monitor: Monitor) -> Monitor {
        self.register::<J, _, _>(monitor, self.concurrency, upkeep::handle::<J>)
    }

    /// A restartable worker for `J`'s queue under a name unique to this
    /// process and start (apalis refuses a name still registered).
    fn register<J: Queued, H, Fut>(
        &self,
        monitor: Monitor,
        concurrency: usize,
        handler: H,
    ) -> Monitor
    where
        H: Fn(J, Data<JobContext>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxDynError>> + Send + 'static,
    {
        let storage = self.queues.storage::<J>(self.conn.clone());
        let ctx = self.ctx.clone();
        let prefix = format!("{}-{}", self.process_name, J::QUEUE);
        monitor.register(move |_restarts| {
            WorkerBuilder::new(format!("{prefix}-{}", ulid::Ulid::new()))
                .backend(
                    storage
                        .clone()
                        .poll_with_strategy(Ticker::new(POLL_INTERVAL)),
                )
                .data(ctx.clone())
                .concurrency(concurrency)
                .build(handler.clone())
        })
    }
}

/// Deliveries of a job type a process takes per run slot: the ones waiting
/// for their tenant's share let other tenants' jobs through.
const DELIVERIES_PER_SLOT: usize = 8;

/// One delivery: the runner records the outcome; only a record that could not
/// be written asks the queue to deliver again.
async fn handle<J: Job>(job: J, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    match runner::execute(&ctx, &job).await {
        Delivery::Done => Ok(()),
        Delivery::Redeliver(reason) => Err(reason.into()),
    }
}

async fn heartbeat_loop(redis: RedisStore, name: String, stop: tokio::sync::watch::Receiver<bool>) {
    let (redis, name) = (&redis, &name);
    every(HEARTBEAT_INTERVAL, stop, move || async move {
        if let Err(err) = health::heartbeat(redis, name).await {
            tracing::warn!(%err, "heartbeat failed; retrying next tick");
        }
    })
    .await;
}

/// Fires due cron ticks every second (each tick once, whatever the number of workers).
async fn schedule_loop(queue: JobQueue, stop: tokio::sync::watch::Receiver<bool>) {
    let queue = &queue;
    every(Duration::from_secs(1), stop, move || async move {
        match schedules::fire_due(queue).await {
            Ok(0) => {}
            Ok(fired) => tracing::info!(fired, "scheduled jobs started"),
            Err(err) => tracing::warn!(%err, "schedules not checked; retrying next second"),
        }
    })
    .await;
}

/// Reloads tenant limits (quotas checked by preloads and restores) and
/// namespaces (the TTLs preloads take) as often as the api instances do.
async fn limits_loop(cache: Cache, db: sqlx::PgPool, stop: tokio::sync::watch::Receiver<bool>) {
    let (cache, db) = (&cache, &db);
    every(LIMITS_REFRESH, stop, move || async move {
        if let Err(err) = cache_shared::db::tenant_limits::reload(db, cache.tenant_limits()).await {
            tracing::warn!(%err, "tenant limits not reloaded; keeping the last known ones");
        }
        if let Err(err) = cache_shared::db::namespaces::reload(db, cache.namespaces()).await {
            tracing::warn!(%err, "namespaces not reloaded; keeping the last known ones");
        }
    })
    .await;
}

/// How often the worker reloads tenant limits and namespaces.
const LIMITS_REFRESH: Duration = Duration::from_secs(2);

/// Wait before restart `n` of a queue worker: 1 s, 2 s, 4 s, … capped at 30 s.
fn restart_backoff(restarts: usize) -> Duration {
    Duration::from_secs(1u64 << restarts.min(5)).min(Duration::from_secs(30))
}

/// Sweeps finished jobs' queue data every `interval`, keeping `keep` of it.
async fn vacuum_loop(
    queue: JobQueue,
    interval: Duration,
    keep: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let queue = &queue;
    every(interval, stop, move || async move {
        match recovery::vacuum(queue, keep).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "vacuumed finished jobs from the queues"),
            Err(err) => tracing::warn!(%err, "queue vacuum failed; retrying next round"),
        }
    })
    .await;
}

/// How long a job's record may say `queued` unchanged before recovery checks
/// that its queue still holds it.
const RECOVER_AFTER: Duration = Duration::from_secs(60);

/// How long a running job may go without reporting, beyond the queue's own
/// hand-over of a dead worker's jobs, before recovery checks its queue: five
/// times the beat at which a live job's record is touched.
const RECOVER_RUNNING_AFTER: Duration = Duration::from_secs(runner::RECORD_BEAT.as_secs() * 5);

/// How often recovery looks: a lost job is back within about a minute and a half.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(30);

/// Puts jobs that vanished from their queue (Redis restarted without its
/// data) back from their records, every [`RECOVERY_INTERVAL`].
async fn recovery_loop(
    queue: JobQueue,
    running_idle: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let queue = &queue;
    every(RECOVERY_INTERVAL, stop, move || async move {
        match recovery::recover_lost(queue, RECOVER_AFTER, running_idle).await {
            Ok(done) if done == Recovered::default() => {}
            Ok(done) => tracing::warn!(
                requeued = done.requeued,
                failed = done.failed,
                "jobs missing from their queues recovered"
            ),
            Err(err) => tracing::warn!(%err, "lost-job recovery failed; retrying next round"),
        }
    })
    .await;
}

/// A name unique to this process: a restarted worker must never collide with
/// the heartbeat of its predecessor.
fn worker_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), ulid::Ulid::new())
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), cache_shared::Error>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(err) if started.elapsed() < STARTUP_DEADLINE => {
                tracing::warn!(%err, "{what} not answering yet; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                return Err(anyhow::Error::new(err))
                    .with_context(|| format!("{what} did not answer within {STARTUP_DEADLINE:?}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_up_to_thirty_seconds() {
        let delays: Vec<u64> = (0..8).map(|n| restart_backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    /// Counts the wake-ups a strategy arranges.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    async fn wakes_after_each_tick(mut strategy: impl PollStrategy) -> Vec<usize> {
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let snapshot = PollSnapshot::default();
        let mut seen = Vec::new();
        let _ = strategy.poll_drive(&mut cx, &snapshot);
        for _ in 0..3 {
            tokio::time::sleep(POLL_INTERVAL * 2).await;
            seen.push(wakes.0.load(std::sync::atomic::Ordering::SeqCst));
            // The worker, woken, drives the strategy once and then waits.
            let _ = strategy.poll_drive(&mut cx, &snapshot);
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_queue_worker_is_woken_at_every_tick() {
        assert_eq!(
            wakes_after_each_tick(Ticker::new(POLL_INTERVAL)).await,
            [1, 2, 3]
        );
    }
}
