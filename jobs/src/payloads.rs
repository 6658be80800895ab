//! The payloads that travel on the queues, one type per queue (a queue never
//! carries two types: a payload that does not decode stalls its worker).
//! Each carries its job record's id; fields may be added, never renamed.

use cache_shared::keys::TenantId;
use cache_shared::sessions::Owner;
use serde::{Deserialize, Serialize};

use crate::backup::{BackupParams, RestoreParams};
use crate::compress::CompressParams;
use crate::context::JobContext;
use crate::error::JobError;
use crate::flush::FlushParams;
use crate::memory_analysis::AnalysisParams;
use crate::preload::PreloadParams;
use crate::runner::Job;
use crate::{
    JobType, Outcome, backup, collect_stats, compress, flush, memory_analysis, preload,
    session_cleanup,
};

fn tenant(raw: &str) -> Result<TenantId, JobError> {
    TenantId::from_record(raw).map_err(JobError::from)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushJob {
    pub job_id: String,
    pub tenant_id: String,
    pub params: FlushParams,
}

impl Job for FlushJob {
    const TYPE: JobType = JobType::Flush;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn tenant(&self) -> &str {
        &self.tenant_id
    }

    async fn run(&self, ctx: &JobContext) -> Result<Outcome, JobError> {
        flush::run(ctx, &self.job_id, &tenant(&self.tenant_id)?, &self.params).await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreloadJob {
    pub job_id: String,
    pub tenant_id: String,
    pub params: PreloadParams,
}

impl Job for PreloadJob {
    const TYPE: JobType = JobType::Preload;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn tenant(&self) -> &str {
        &self.tenant_id
    }

    async fn run(&self, ctx: &JobContext) -> Result<Outcome, JobError> {
        preload::run(ctx, &self.job_id, &tenant(&self.tenant_id)?, &self.params).await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCleanupJob {
    pub job_id: String,
    pub owner: Owner,
}

impl Job for SessionCleanupJob {
    const TYPE: JobType = JobType::SessionCleanup;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn tenant(&self) -> &str {
        self.owner
            .tenant_id
            .as_deref()
            .unwrap_or(cache_shared::keys::PLATFORM_TENANT)
    }

    async fn run(&self, ctx: &JobContext) -> Result<Outcome, JobError> {
        session_cleanup::run(ctx, &self.job_id, &self.owner).await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectStatsJob {
    pub job_id: String,
}

impl Job for CollectStatsJob {
    const TYPE: JobType = JobType::CollectStats;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    async fn run(&self, ctx: &JobContext) -> Result<Outcome, JobError> {
        collect_stats::run(ctx).await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryAnalysisJob {
    pub job_id: String,
    pub tenant_id: String,
    pub params: AnalysisParams,
}

impl Job for MemoryAnalysisJob {
    const TYPE: JobType = JobType::MemoryAnalysis;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn tenant(&self) -> &str {
        &self.tenant_id
    }

    async fn run(&self, ctx: &JobContext) -> Result<Outcome, JobError> {
        memory_analysis::run(ctx, &self.job_id, &tenant(&self.tenant_id)?, &self.params).await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompressJob {
    pub job_id: String,
    pub tenant_id: String,
    pub params: CompressParams,
}

impl Job for CompressJob {
    const TYPE: JobType = JobType::Compress;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn tenant(&self) -> &str {
        &self.tenant_id
    }

    async fn run(&self, ctx: &JobContext) -> Result<Outcome, JobError> {
        compress::run(ctx, &self.job_id, &tenant(&self.tenant_id)?, &self.params).await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupJob {
    pub job_id: String,
    pub tenant_id: String,
    pub params: BackupParams,
}

impl Job for BackupJob {
    const TYPE: JobType = JobType::Backup;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn tenant(&self) -> &str {
        &self.tenant_id
    }

    async fn run(&self, ctx: &JobContext) -> Result<Outcome, JobError> {
        backup::backup(ctx, &self.job_id, &tenant(&self.tenant_id)?, &self.params).await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreJob {
    pub job_id: String,
    pub tenant_id: String,
    pub params: RestoreParams,
}

impl Job for RestoreJob {
    const TYPE: JobType = JobType::Restore;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn tenant(&self) -> &str {
        &self.tenant_id
    }

    async fn run(&self, ctx: &JobContext) -> Result<Outcome, JobError> {
        backup::restore(ctx, &self.job_id, &tenant(&self.tenant_id)?, &self.params).await
    }
}
