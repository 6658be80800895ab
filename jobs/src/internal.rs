//! The service's own upkeep jobs: statistics rollups and operation-log
//! batches shipped by api instances. They have no record in PostgreSQL (they
//! must queue up while it is down) and are idempotent by construction: a
//! rollup by instance and period, a log batch by its records' request ids.

use std::future::Future;

use cache_shared::oplog::LogRecord;
use cache_shared::rollup::PeriodFigures;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::context::JobContext;
use crate::error::JobError;
use crate::runner::Queued;

/// Names of the upkeep queues.
pub const QUEUES: [&str; 2] = [StatsRollupJob::QUEUE, LogPersistJob::QUEUE];

/// An upkeep job: run until stored; the worker retries transient failures
/// for as long as it takes (nothing is dropped during an outage).
pub trait InternalJob: Queued {
    /// Does the work once; returns the rows it wrote.
    fn run(&self, ctx: &JobContext) -> impl Future<Output = Result<u64, JobError>> + Send;
}

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

impl InternalJob for LogPersistJob {
    async fn run(&self, ctx: &JobContext) -> Result<u64, JobError> {
        let stored = cache_shared::db::oplog::insert_batch(&ctx.db, &self.records).await?;
        ctx.metrics.oplog_persisted.inc_by(stored.inserted);
        ctx.metrics.oplog_rejected.inc_by(stored.rejected);
        Ok(stored.inserted)
    }
}
