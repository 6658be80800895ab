//! `cache-worker`: the process that runs the service's jobs. It connects to
//! Redis and PostgreSQL, reports itself alive through heartbeats that `/health`
//! reads, and stops cleanly on SIGTERM. It never serves requests.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use cache_shared::config::{DatabaseSettings, RedisSettings, TelemetrySettings};
use cache_shared::health::{self, HEARTBEAT_INTERVAL};
use cache_shared::redis::RedisStore;
use clap::{Args, Parser, Subcommand};

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
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

/// How long start-up waits for Redis and PostgreSQL before giving up.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the worker until `shutdown` resolves.
///
/// # Errors
///
/// When Redis or PostgreSQL cannot be reached at start-up.
pub async fn run(
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let redis = RedisStore::new(&settings.redis).context("parsing REDIS_URL")?;
    let db = cache_shared::db::lazy_pool(&settings.database).context("parsing DATABASE_URL")?;
    let name = worker_name(&settings.worker_name);

    wait_for("redis", || async { redis.ping().await.map(|_| ()) }).await?;
    wait_for("postgres", || async {
        cache_shared::db::ping(&db, settings.database.timeout())
            .await
            .map(|_| ())
    })
    .await?;
    tracing::info!(worker = %name, "cache-worker ready");

    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(err) = health::heartbeat(&redis, &name).await {
                    tracing::warn!(%err, "heartbeat failed; retrying next tick");
                }
            }
            () = &mut shutdown => break,
        }
    }
    if let Err(err) = health::sign_off(&redis, &name).await {
        tracing::warn!(%err, "could not remove the heartbeat at shutdown");
    }
    db.close().await;
    tracing::info!(worker = %name, "cache-worker stopped");
    Ok(())
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
