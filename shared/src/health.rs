//! Health of the service's dependencies, shared by `/health`, `/ready` and the
//! worker: each check with its latency, and worker liveness from heartbeats
//! the workers write into Redis.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_redis::redis;
use serde::Serialize;
use sqlx::PgPool;

use crate::error::Error;
use crate::redis::RedisStore;

/// Sorted set of worker names scored by their last heartbeat (unix seconds).
pub const WORKER_HEARTBEATS_KEY: &str = "w:{_platform}:heartbeats";

/// How often a worker reports itself alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// A worker silent for longer than this counts as gone.
pub const HEARTBEAT_STALE_AFTER: Duration = Duration::from_secs(20);

/// Overall state: `ok`, `degraded` (Postgres or worker missing) or `down` (Redis missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Degraded,
    Down,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_workers: Option<u64>,
    /// Each node of a Redis Cluster (`REDIS_MODE=cluster`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeCheck>>,
}

/// One node of a Redis Cluster as `/health` and `/ready` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCheck {
    /// `host:port`.
    pub address: String,
    /// `primary` or `replica`.
    #[schema(value_type = String)]
    pub role: &'static str,
    /// Slots it serves (primaries).
    pub slots: u32,
    /// `up`, or `down` when the cluster holds it as failing or (a primary)
    /// it did not answer.
    #[schema(value_type = String)]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
}

impl NodeCheck {
    fn of(probe: crate::redis::NodeProbe) -> Self {
        let up = probe.is_up();
        Self {
            address: probe.node.address,
            role: probe.node.role,
            slots: probe.node.slots,
            status: if up { "up" } else { "down" },
            latency_ms: probe.latency.map(|l| l.as_secs_f64() * 1000.0),
            keys: probe.keys,
        }
    }
}

impl Check {
    fn up(latency: Duration) -> Self {
        Self {
            status: "up",
            latency_ms: Some(latency.as_secs_f64() * 1000.0),
            error: None,
            live_workers: None,
            nodes: None,
        }
    }

    fn down(error: &Error) -> Self {
        Self {
            status: "down",
            latency_ms: None,
            // The class of failure only: never addresses or driver text.
            error: Some(match error {
                Error::CacheUnavailable(_) | Error::StoreUnavailable(_) => {
                    "unreachable or timed out".into()
                }
                _ => "unexpected error".into(),
            }),
            live_workers: None,
            nodes: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checks {
    pub redis: Check,
    pub postgres: Check,
    pub worker: Check,
    /// The job queues' own Redis (`QUEUE_REDIS_URL`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_redis: Option<Check>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub status: Status,
    pub checks: Checks,
}

impl HealthReport {
    /// Adds the queues' own Redis: when it does not answer, jobs cannot
    /// start or finish, so the service is degraded.
    pub fn with_queue_redis(mut self, answered: Result<Duration, &Error>) -> Self {
        let check = match answered {
            Ok(latency) => Check::up(latency),
            Err(err) => Check::down(err),
        };
        if check.status != "up" && self.status == Status::Ok {
            self.status = Status::Degraded;
        }
        self.checks.queue_redis = Some(check);
        self
    }

    pub fn redis_up(&self) -> bool {
        self.checks.redis.status == "up"
    }

    pub fn postgres_up(&self) -> bool {
        self.checks.postgres.status == "up"
    }
}

/// Checks Redis, PostgreSQL and worker heartbeats concurrently.
pub async fn probe(redis: &RedisStore, db: &PgPool) -> HealthReport {
    let (redis_result, pg_result, nodes) = tokio::join!(
        redis.ping(),
        crate::db::ping(db, redis.command_timeout()),
        redis.probe_nodes()
    );
    let mut redis_check = match &redis_result {
        Ok(latency) => Check::up(*latency),
        Err(e) => Check::down(e),
    };
    if let Ok(Some(nodes)) = nodes {
        redis_check.nodes = Some(nodes.into_iter().map(NodeCheck::of).collect());
    }
    let postgres = match &pg_result {
        Ok(latency) => Check::up(*latency),
        Err(e) => Check::down(e),
    };
    let worker = if redis_result.is_ok() {
        let started = std::time::Instant::now();
        match live_workers(redis).await {
            Ok(0) => Check {
                status: "down",
                latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
                error: Some("no worker heartbeat".into()),
                live_workers: Some(0),
                nodes: None,
            },
            Ok(n) => Check {
                live_workers: Some(n),
                ..Check::up(started.elapsed())
            },
            Err(e) => Check::down(&e),
        }
    } else {
        Check::down(&Error::CacheUnavailable("redis is down".into()))
    };
    let status = if redis_check.status != "up" {
        Status::Down
    } else if postgres.status != "up" || worker.status != "up" {
        Status::Degraded
    } else {
        Status::Ok
    };
    HealthReport {
        status,
        checks: Checks {
            redis: redis_check,
            postgres,
            worker,
            queue_redis: None,
        },
    }
}

/// Workers whose last heartbeat is recent.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn live_workers(redis: &RedisStore) -> Result<u64, Error> {
    let since = unix_now().saturating_sub(HEARTBEAT_STALE_AFTER.as_secs());
    redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let n: u64 = redis::cmd("ZCOUNT")
                .arg(WORKER_HEARTBEATS_KEY)
                .arg(since)
                .arg("+inf")
                .query_async(&mut conn)
                .await?;
            Ok(n)
        })
        .await
}

/// Records that worker `name` is alive, and forgets workers long silent.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn heartbeat(redis: &RedisStore, name: &str) -> Result<(), Error> {
    let now = unix_now();
    let forget_before = now.saturating_sub(HEARTBEAT_STALE_AFTER.as_secs() * 30);
    redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let () = redis::pipe()
                .zadd(WORKER_HEARTBEATS_KEY, name, now)
                .ignore()
                .zrembyscore(WORKER_HEARTBEATS_KEY, 0, forget_before)
                .ignore()
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
}

/// Removes worker `name` at shutdown so health stops counting it at once.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn sign_off(redis: &RedisStore, name: &str) -> Result<(), Error> {
    redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let _: i64 = redis::cmd("ZREM")
                .arg(WORKER_HEARTBEATS_KEY)
                .arg(name)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
