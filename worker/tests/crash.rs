//! Delivery guarantees with real processes: a worker killed with SIGKILL in
//! the middle of a flush leaves its job to another worker, which finishes it
//! exactly; and a job that keeps killing its worker is stopped.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cache_jobs::allow_list::AllowList;
use cache_jobs::flush::FlushParams;
use cache_jobs::payload::Payload;
use cache_jobs::policy::Requester;
use cache_jobs::queue::{JobQueue, JobSpec, QueueSettings};
use cache_shared::cache::{Cache, CacheLimits};
use cache_shared::db::jobs::{self, JobRecord};
use cache_shared::keys::TenantId;
use cache_shared::redis::RedisStore;
use cache_shared::stats::live::LiveStats;
use cache_worker::context::{JobContext, Pacing, PreloadSources};
use cache_worker::jobs::fetch::FetchLimits;
use cache_worker::runner::{self, Delivery, MAX_CRASHES};
use cache_worker::{Cli, WorkerSettings};
use clap::Parser;
use deadpool_redis::redis;

/// A redis-server of the test's own, so the flush's pace does not depend on
/// what else the shared Redis holds; killed on drop.
struct OwnRedis {
    url: String,
    _child: tokio::process::Child,
}

async fn own_redis() -> OwnRedis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.get_multiplexed_async_connection().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    OwnRedis { url, _child: child }
}

fn settings(prefix: &str, redis_url: &str) -> WorkerSettings {
    Cli::try_parse_from([
        "cache-worker",
        "--redis-url",
        redis_url,
        "--queue-prefix",
        prefix,
        "--queue-heartbeat-seconds",
        "1",
        "--queue-missed-heartbeats",
        "2",
    ])
    .unwrap()
    .settings()
}

async fn setup(settings: &mut WorkerSettings) -> (JobQueue, sqlx::PgPool) {
    settings.database.database_url =
        cache_shared::db::testing::fresh_database(&settings.database.database_url)
            .await
            .unwrap();
    let db = cache_shared::db::lazy_pool(&settings.database).unwrap();
    let conn =
        cache_shared::redis::dedicated_connection(&settings.redis, Duration::from_secs(5)).unwrap();
    let queue = JobQueue::new(
        conn,
        QueueSettings::from_args(&settings.queue),
        db.clone(),
        1 << 20,
        Duration::from_secs(5),
    );
    (queue, db)
}

fn spawn_worker(settings: &WorkerSettings) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_cache-worker"))
        .env("QUEUE_PREFIX", &settings.queue.queue_prefix)
        .env("REDIS_URL", &settings.redis.redis_url)
        .env("DATABASE_URL", &settings.database.database_url)
        .env("QUEUE_HEARTBEAT_SECONDS", "1")
        .env("QUEUE_MISSED_HEARTBEATS", "2")
        .env("JOB_BATCH_SIZE", "200")
        .env("JOB_BATCH_PAUSE_MS", "5")
        .env("FLUSH_BATCH_SIZE", "200")
        .env("FLUSH_MAX_KEYS_PER_SECOND", "20000")
        .env("RUST_LOG", "warn")
        .env("WORKER_METRICS_PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn job(db: &sqlx::PgPool, id: &str) -> JobRecord {
    jobs::get(db, id, None).await.unwrap().unwrap()
}

/// A flush of tenant `crashy` queued on a Redis of the test's own (alive as
/// long as the handle), with no worker: tests drive its record by hand.
async fn queued_flush(params: FlushParams) -> (OwnRedis, WorkerSettings, sqlx::PgPool, JobRecord) {
    let prefix = format!("crash-{}", ulid::Ulid::new());
    let own = own_redis().await;
    let mut settings = settings(&prefix, &own.url);
    let (queue, db) = setup(&mut settings).await;
    let job = queue
        .authorize(
            &Requester::internal(TenantId::parse("crashy", "t").unwrap()),
            JobSpec::Flush(params),
        )
        .await
        .unwrap();
    let record = queue.submit(job, None).await.unwrap();
    (own, settings, db, record)
}

/// What a worker hands its handlers, built in the test to run one delivery.
fn context(settings: &WorkerSettings, db: sqlx::PgPool) -> JobContext {
    JobContext {
        cache: Cache::new(
            RedisStore::new(&settings.redis).unwrap(),
            CacheLimits::from_settings(&settings.cache),
            Arc::new(LiveStats::default()),
            Arc::new(cache_shared::limits::LimitBook::new(
                settings.limits.clone(),
            )),
        ),
        db,
        pacing: Pacing::default(),
        preload: PreloadSources {
            allow: AllowList::default(),
            limits: FetchLimits {
                max_bytes: 1,
                timeout: Duration::from_secs(1),
            },
        },
        metrics: cache_shared::metrics::JobMetrics::new(&cache_shared::metrics::Metrics::default())
            .unwrap(),
    }
}

async fn wait_for(
    db: &sqlx::PgPool,
    id: &str,
    limit: Duration,
    done: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let record = job(db, id).await;
        if done(&record) {
            return record;
        }
        assert!(tokio::time::Instant::now() < deadline, "{record:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_flush_survives_a_killed_worker_and_deletes_every_key_once() {
    let prefix = format!("crash-{}", ulid::Ulid::new());
    let own = own_redis().await;
    let mut settings = settings(&prefix, &own.url);
    let (queue, db) = setup(&mut settings).await;
    let tenant = format!("t-{}", ulid::Ulid::new().to_string().to_lowercase());
    let client = redis::Client::open(settings.redis.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for chunk in 0..10 {
        let mut pipe = redis::pipe();
        for i in 0..10_000 {
            pipe.set(format!("c:{{{tenant}}}:k{}", chunk * 10_000 + i), "J1")
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }

    let flush = queue
        .authorize(
            &Requester::internal(TenantId::parse(&tenant, "t").unwrap()),
            JobSpec::Flush(FlushParams::default()),
        )
        .await
        .unwrap();
    let record = queue.submit(flush, None).await.unwrap();
    let mut first = spawn_worker(&settings);
    wait_for(&db, &record.id, Duration::from_secs(30), |j| {
        j.progress_done > 0
    })
    .await;
    first.kill().await.unwrap();
    let halfway = job(&db, &record.id).await;
    assert_eq!(halfway.status, "running", "{halfway:?}");

    let mut second = spawn_worker(&settings);
    let done = wait_for(&db, &record.id, Duration::from_secs(30), |j| {
        j.status != "running"
    })
    .await;
    assert_eq!(done.status, "succeeded", "{done:?}");
    assert_eq!(done.crashes, 1);
    assert_eq!(done.attempts, 2);
    let mut cursor: u64 = 0;
    loop {
        let (next, left): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("c:{{{tenant}}}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(left.is_empty(), "{} keys left", left.len());
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    second.kill().await.unwrap();
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_worker_is_stopped() {
    let (_redis, settings, db, record) = queued_flush(FlushParams {
        namespace: Some(format!("none-such-{}", ulid::Ulid::new())),
        ..FlushParams::default()
    })
    .await;
    // Deliveries that each died mid-run: the record stays `running`.
    for _ in 0..MAX_CRASHES {
        assert!(matches!(
            jobs::start(&db, &record.id).await.unwrap(),
            jobs::Start::Run { .. }
        ));
    }
    let ctx = context(&settings, db.clone());
    let payload = Payload::new(&record.id, "crashy", FlushParams::default());
    assert_eq!(runner::execute(&ctx, &payload).await, Delivery::Done);
    let stopped = job(&db, &record.id).await;
    assert_eq!(stopped.status, "failed");
    assert_eq!(stopped.crashes, MAX_CRASHES);
    assert!(stopped.error.unwrap().contains("died"));
}

#[tokio::test]
async fn a_job_whose_worker_died_with_a_cancellation_pending_ends_cancelled() {
    let (_redis, _, db, record) = queued_flush(FlushParams::default()).await;
    // Started, cancelled while running, then its worker died.
    assert!(matches!(
        jobs::start(&db, &record.id).await.unwrap(),
        jobs::Start::Run { .. }
    ));
    jobs::cancel(&db, &record.id, None).await.unwrap();
    assert_eq!(job(&db, &record.id).await.status, "running");
    // The queue delivers it again: it is settled, not run.
    assert!(matches!(
        jobs::start(&db, &record.id).await.unwrap(),
        jobs::Start::Skip
    ));
    let settled = job(&db, &record.id).await;
    assert_eq!(settled.status, "cancelled");
    assert!(settled.finished_at.is_some());
}

#[tokio::test]
async fn a_running_jobs_record_is_touched_while_its_work_goes_on() {
    let (_redis, _, db, record) = queued_flush(FlushParams::default()).await;
    jobs::start(&db, &record.id).await.unwrap();
    let touched = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "select updated_at from jobs where id = $1",
        )
        .bind(&record.id)
        .fetch_one(&db)
        .await
        .unwrap()
    };
    let before = touched().await;
    // Work that reports nothing for six beats.
    let beat = Duration::from_millis(50);
    runner::alive_while(&db, &record.id, beat, tokio::time::sleep(beat * 6)).await;
    let after = touched().await;
    assert!(
        after - before >= chrono::Duration::milliseconds(150),
        "the record was last touched {} ms after the start",
        (after - before).num_milliseconds()
    );
}

/// A relay to PostgreSQL the test can take down (every connection dropped,
/// new ones refused) and bring back.
struct Relay {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, _) = tokio::sync::watch::channel(true);
        let relay = Arc::new(Self { port, up });
        let states = relay.up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = states.subscribe();
                if !*state.borrow() {
                    continue; // down: the connection is dropped at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|up| !up) => {}
                    }
                });
            }
        });
        relay
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// Work that takes PostgreSQL away while it runs, for a while.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct OutageJob {
    job_id: String,
    #[serde(skip)]
    runs: Arc<std::sync::atomic::AtomicU32>,
    #[serde(skip)]
    relay: Option<Arc<Relay>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Relay({})", self.port)
    }
}

impl runner::Job for OutageJob {
    const TYPE: cache_jobs::JobType = cache_jobs::JobType::Flush;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    async fn run(
        &self,
        _: &JobContext,
    ) -> Result<cache_worker::Outcome, cache_worker::error::JobError> {
        self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(relay) = self.relay.clone() {
            relay.set(false);
            // The outage lasts beyond the first attempts to record the outcome.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                relay.set(true);
            });
        }
        Ok(cache_worker::Outcome::Succeeded(
            serde_json::json!({"done": 1}),
        ))
    }
}

#[tokio::test]
async fn a_job_whose_outcome_cannot_be_written_at_first_is_not_run_again() {
    let (_redis, mut settings, db, record) = queued_flush(FlushParams::default()).await;
    let relay = Relay::start().await;
    settings.database.database_url = settings
        .database
        .database_url
        .replace(":5432/", &format!(":{}/", relay.port));
    let ctx = context(
        &settings,
        cache_shared::db::lazy_pool(&settings.database).unwrap(),
    );
    let job = OutageJob {
        job_id: record.id.clone(),
        relay: Some(Arc::clone(&relay)),
        ..OutageJob::default()
    };
    assert_eq!(runner::execute(&ctx, &job).await, Delivery::Done);
    assert_eq!(
        job.runs.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the work ran once"
    );
    let recorded = self::job(&db, &record.id).await;
    assert_eq!(recorded.status, "succeeded", "{recorded:?}");
    assert_eq!(recorded.result, Some(serde_json::json!({"done": 1})));
    assert_eq!(recorded.attempts, 1);
}
