//! The payloads of the service's own upkeep jobs: statistics rollups and
//! operation-log batches shipped by api instances (the worker stores them). They have no record in PostgreSQL (they
//! must queue up while it is down) and are idempotent by construction: a
//! rollup by instance and period, a log batch by its records' request ids.

use cache_shared::oplog::LogRecord;
use cache_shared::stats::rollup::PeriodFigures;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::payload::Queued;

/// Names of the upkeep queues.
pub const QUEUES: [&str; 2] = [StatsRollupJob::QUEUE, LogPersistJob::QUEUE];

/// One api instance's figures of one period, per tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsRollupJob {
    /// Queue task id (a ULID).
    pub id: String,
    pub instance_id: String,
    pub period_start: DateTime<Utc>,
    pub period_minutes: i32,
    pub tenants: Vec<TenantFigures>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantFigures {
    pub tenant_id: String,
    pub figures: PeriodFigures,
}

impl Queued for StatsRollupJob {
    const QUEUE: &'static str = "stats_rollup";

    fn task_id(&self) -> &str {
        &self.id
    }
}

/// A batch of operation-log records from one api instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogPersistJob {
    /// Queue task id (a ULID).
    pub id: String,
    pub records: Vec<LogRecord>,
}

impl Queued for LogPersistJob {
    const QUEUE: &'static str = "log_persist";

    fn task_id(&self) -> &str {
        &self.id
    }
}
