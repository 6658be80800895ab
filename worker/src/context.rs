//! What every job handler can reach, and the knobs that pace heavy jobs.

use std::time::Duration;

use cache_shared::cache::Cache;
use cache_shared::metrics::JobMetrics;
use sqlx::PgPool;

use crate::jobs::fetch::FetchLimits;
use cache_jobs::allow_list::AllowList;

/// Pacing of batch jobs so that they never starve request traffic.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Keys per `SCAN`/write batch.
    pub batch: usize,
    /// Pause between batches, leaving Redis to other tenants.
    pub pause: Duration,
    /// Deadline of one batch's Redis work (longer than a request's).
    pub batch_timeout: Duration,
    /// Keys per `SCAN` page of a flush step.
    pub flush_batch: usize,
    /// Longest one flush step holds Redis: the most any other command can
    /// wait behind it.
    pub flush_step_budget: Duration,
    /// Most keys a flush examines (and so at most removes) per second.
    pub flush_keys_per_second: u64,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            batch: 1000,
            pause: Duration::from_millis(2),
            batch_timeout: Duration::from_secs(10),
            flush_batch: 50,
            flush_step_budget: Duration::from_micros(250),
            flush_keys_per_second: 110_000,
        }
    }
}

/// Where preloads may fetch from, and how much.
#[derive(Debug, Clone)]
pub struct PreloadSources {
    pub allow: AllowList,
    pub limits: FetchLimits,
}

/// Shared state of the worker's handlers.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub cache: Cache,
    pub db: PgPool,
    pub pacing: Pacing,
    pub preload: PreloadSources,
    pub metrics: JobMetrics,
}
