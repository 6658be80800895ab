//! What travels on the queues: one payload type, [`Payload`], generic over
//! the job's parameters, one queue per job type (a queue never carries two
//! types: a payload that does not decode stalls its worker). A payload
//! carries its job record's id and the tenant the record is for; fields may
//! be added, never renamed.

use cache_shared::Error;
use cache_shared::keys::PLATFORM_TENANT;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::JobType;
use crate::allow_list::AllowList;

/// A payload as it travels on its own queue.
pub trait Queued: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static {
    /// The queue's name under the prefix; fixed forever, never derived from a
    /// Rust type name, so that renaming code never strands queued payloads.
    const QUEUE: &'static str;

    /// The id the queue knows the payload by (a ULID).
    fn task_id(&self) -> &str;
}

/// What parameter checks may need beyond the parameters themselves.
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    /// `MAX_VALUE_BYTES`: the largest value a job may write.
    pub max_value_bytes: usize,
    /// The hosts preloads may fetch from.
    pub preload_hosts: &'a AllowList,
}

/// The job type a parameters type belongs to (declared in `job_types!`).
pub trait Typed {
    const TYPE: JobType;
}

/// A job type's parameters, as callers send them and the queue carries them.
pub trait Params:
    Typed + Serialize + DeserializeOwned + Default + Clone + Send + Sync + Unpin + 'static
{
    /// Checks the parameters before anything is recorded or enqueued.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] or [`Error::PayloadTooLarge`] naming the bad field.
    fn validate(&self, checks: &Checks<'_>) -> Result<(), Error>;
}

/// The parameters of a job that takes none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

impl Params for NoParams {
    fn validate(&self, _: &Checks<'_>) -> Result<(), Error> {
        Ok(())
    }
}

impl Params for cache_shared::sessions::Owner {
    fn validate(&self, _: &Checks<'_>) -> Result<(), Error> {
        cache_shared::sessions::Owner::validate(self)
    }
}

fn platform() -> String {
    PLATFORM_TENANT.to_owned()
}

/// One job on its type's queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", bound = "P: Params")]
pub struct Payload<P> {
    /// The id of the job's record (also the queue's task id).
    pub job_id: String,
    /// The tenant the job's record is for, whose share of the worker's job
    /// slots it takes (payloads queued before the field: the platform's).
    #[serde(default = "platform")]
    pub tenant_id: String,
    /// (`owner` in session-cleanup payloads queued before the field;
    /// absent in stats collections' then.)
    #[serde(default, alias = "owner")]
    pub params: P,
}

impl<P: Params> Payload<P> {
    pub fn new(job_id: &str, tenant_id: &str, params: P) -> Self {
        Self {
            job_id: job_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            params,
        }
    }
}

impl<P: Params> Queued for Payload<P> {
    const QUEUE: &'static str = P::TYPE.as_str();

    fn task_id(&self) -> &str {
        &self.job_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flush::FlushParams;

    #[test]
    fn payloads_queued_before_the_generic_payload_still_decode() {
        let flush: Payload<FlushParams> =
            serde_json::from_str(r#"{"jobId":"01J","tenantId":"acme","params":{"pattern":"a*"}}"#)
                .unwrap();
        assert_eq!(flush.tenant_id, "acme");
        assert_eq!(flush.params.pattern.as_deref(), Some("a*"));
        let cleanup: Payload<cache_shared::sessions::Owner> =
            serde_json::from_str(r#"{"jobId":"01J","owner":{"userId":"alice"}}"#).unwrap();
        assert_eq!(cleanup.params.user_id.as_deref(), Some("alice"));
        assert_eq!(cleanup.tenant_id, PLATFORM_TENANT);
        let stats: Payload<NoParams> = serde_json::from_str(r#"{"jobId":"01J"}"#).unwrap();
        assert_eq!(stats.job_id, "01J");
        assert_eq!(
            <Payload<NoParams> as Queued>::QUEUE,
            "collect_stats",
            "the queue names are the job types'"
        );
    }
}
