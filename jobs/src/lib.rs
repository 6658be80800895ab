//! The job contract of cache-service, shared by the api (which starts jobs)
//! and the worker (which runs them): the job types and their parameters,
//! the payloads that travel on explicitly named queues ([`payload`]), the
//! one authorization point ([`policy`]) and the enqueue side
//! ([`queue::JobQueue`]). Nothing here runs a job: handlers live in the
//! worker, so the api links none of them.
//!
//! A new job type is one parameters type implementing [`payload::Params`],
//! one line in `job_types!` below and one handler line in the worker's
//! registry.

pub mod allow_list;
pub mod backup;
pub mod compress;
pub mod flush;
pub mod memory_analysis;
pub mod payload;
pub mod policy;
pub mod preload;
pub mod queue;
pub mod reencrypt;
pub mod schedule;
pub mod upkeep;

use std::fmt;
use std::str::FromStr;

use cache_shared::Error;

use crate::payload::{Checks, Params, Payload};
use crate::queue::JobQueue;

/// Most keys written in one atomic batch (the cache's batch limit).
pub const MAX_WRITE_BATCH: usize = cache_shared::cache::MAX_BATCH_KEYS;

/// Declares every job type at once: its variant, its name (in the API, the
/// `jobs` table, metrics and its queue's name: fixed forever) and its
/// parameters type. Generates [`JobType`], [`JobSpec`] and the dispatch
/// from a spec to its typed payload.
macro_rules! job_types {
    ($($variant:ident = $name:literal, $params:ty;)*) => {
        /// A kind of job that callers can start over HTTP (API.md §6).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum JobType {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl JobType {
            pub const ALL: &'static [JobType] = &[$(JobType::$variant),*];

            /// The name used in the API, in the `jobs` table and in metrics.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(JobType::$variant => $name,)*
                }
            }
        }

        /// A job to start, by type, with the parameters its endpoint takes.
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(tag = "type", content = "params")]
        pub enum JobSpec {
            $(#[serde(rename = $name)] $variant($params),)*
        }

        impl JobSpec {
            pub fn job_type(&self) -> JobType {
                match self {
                    $(JobSpec::$variant(_) => JobType::$variant,)*
                }
            }

            /// Checks the parameters before anything is recorded or enqueued.
            ///
            /// # Errors
            ///
            /// [`Error::Validation`] or [`Error::PayloadTooLarge`] naming the bad field.
            pub fn validate(&self, checks: &Checks<'_>) -> Result<(), Error> {
                match self {
                    $(JobSpec::$variant(params) => Params::validate(params, checks),)*
                }
            }

            /// Pushes the job's payload onto its type's queue.
            pub(crate) async fn push(
                self,
                queue: &JobQueue,
                job_id: &str,
                tenant_id: &str,
            ) -> Result<(), Error> {
                match self {
                    $(JobSpec::$variant(params) => {
                        queue.push_task(Payload::new(job_id, tenant_id, params)).await
                    })*
                }
            }
        }

        $(impl payload::Typed for $params {
            const TYPE: JobType = JobType::$variant;
        })*
    };
}

job_types! {
    Flush = "flush", flush::FlushParams;
    Preload = "preload", preload::PreloadParams;
    Compress = "compress", compress::CompressParams;
    MemoryAnalysis = "memory_analysis", memory_analysis::AnalysisParams;
    SessionCleanup = "session_cleanup", cache_shared::sessions::Owner;
    CollectStats = "collect_stats", payload::NoParams;
    Backup = "backup", backup::BackupParams;
    Restore = "restore", backup::RestoreParams;
    Reencrypt = "reencrypt", reencrypt::ReencryptParams;
}

impl JobType {
    /// The queue of this type under `prefix`. Named explicitly, never derived
    /// from a Rust type name, so that renaming code never strands queued jobs.
    pub fn queue_name(self, prefix: &str) -> String {
        queue_name(prefix, self.as_str())
    }
}

/// The Redis name of queue `name` under `prefix`.
pub fn queue_name(prefix: &str, name: &str) -> String {
    format!("{prefix}:jobs:{name}")
}

/// Every queue: the job types' and the service's own upkeep queues.
pub fn all_queues() -> impl Iterator<Item = &'static str> {
    JobType::ALL
        .iter()
        .map(|t| t.as_str())
        .chain(upkeep::QUEUES)
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job type name that is not one of [`JobType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownJobType(pub String);

impl fmt::Display for UnknownJobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown job type '{}'", self.0)
    }
}

impl std::error::Error for UnknownJobType {}

impl FromStr for JobType {
    type Err = UnknownJobType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownJobType(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_queues_are_distinct() {
        let mut queues = std::collections::HashSet::new();
        for &t in JobType::ALL {
            assert_eq!(t.as_str().parse::<JobType>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
            assert!(queues.insert(t.queue_name("cache-service")));
        }
        assert!("stats_rollup".parse::<JobType>().is_err());
    }
}
