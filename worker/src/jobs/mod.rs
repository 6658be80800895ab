//! The job handlers, one module per job type, each implementing [`Handler`]
//! for its type's parameters (from the `cache-jobs` contract). The
//! worker's registry (`crate::run`) gives each its queue.

pub mod backup;
pub mod collect_stats;
pub mod compress;
pub mod fetch;
pub mod flush;
pub mod memory_analysis;
pub mod pages;
pub mod preload;
pub mod reencrypt;
pub mod session_cleanup;

use std::future::Future;

use cache_jobs::payload::{Params, Payload};
use cache_shared::keys::TenantId;

use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::runner::Job;

/// What running a job of one type does.
pub trait Handler: Params {
    /// Does the work once (the runner retries and records it).
    fn run(
        ctx: &JobContext,
        job: &Payload<Self>,
    ) -> impl Future<Output = Result<Outcome, JobError>> + Send;
}

impl<P: Handler> Job for Payload<P> {
    const TYPE: cache_jobs::JobType = <P as cache_jobs::payload::Typed>::TYPE;

    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn tenant(&self) -> &str {
        &self.tenant_id
    }

    fn run(&self, ctx: &JobContext) -> impl Future<Output = Result<Outcome, JobError>> + Send {
        P::run(ctx, self)
    }
}

/// The tenant a job's payload names.
///
/// # Errors
///
/// [`JobError::Permanent`] for an id that is not a tenant's.
pub fn tenant_of<P>(job: &Payload<P>) -> Result<TenantId, JobError> {
    TenantId::from_record(&job.tenant_id).map_err(JobError::from)
}
