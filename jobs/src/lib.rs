//! Job definitions of cache-service: one module per job type with its
//! parameters and handler, the payloads that travel on explicitly named
//! queues ([`payloads`]), the enqueue side the api calls ([`queue::JobQueue`])
//! and the runner that records every delivery's outcome ([`runner`]).
//! The api enqueues; only the worker runs handlers.

pub mod backup;
pub mod collect_stats;
pub mod compress;
pub mod context;
pub mod error;
pub mod fetch;
pub mod flush;
pub mod internal;
pub mod memory_analysis;
pub mod outbound;
pub mod payloads;
pub mod policy;
pub mod preload;
pub mod progress;
pub mod queue;
pub mod runner;
pub mod schedule;
pub mod session_cleanup;

use std::fmt;
use std::str::FromStr;

/// Most keys written in one atomic batch (the cache's batch limit).
pub const MAX_WRITE_BATCH: usize = cache_shared::cache::MAX_BATCH_KEYS;

/// How a run ended when it did not fail; the JSON is the job's `result`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(serde_json::Value),
    /// Cancellation was requested and honoured between batches.
    Cancelled(serde_json::Value),
}

/// A kind of job that callers can start over HTTP (API.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    Flush,
    Preload,
    Compress,
    MemoryAnalysis,
    SessionCleanup,
    CollectStats,
    Backup,
    Restore,
}

impl JobType {
    pub const ALL: [JobType; 8] = [
        JobType::Flush,
        JobType::Preload,
        JobType::Compress,
        JobType::MemoryAnalysis,
        JobType::SessionCleanup,
        JobType::CollectStats,
        JobType::Backup,
        JobType::Restore,
    ];

    /// The name used in the API, in the `jobs` table and in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobType::Flush => "flush",
            JobType::Preload => "preload",
            JobType::Compress => "compress",
            JobType::MemoryAnalysis => "memory_analysis",
            JobType::SessionCleanup => "session_cleanup",
            JobType::CollectStats => "collect_stats",
            JobType::Backup => "backup",
            JobType::Restore => "restore",
        }
    }

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
        .chain(internal::QUEUES)
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
            .into_iter()
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
        for t in JobType::ALL {
            assert_eq!(t.as_str().parse::<JobType>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
            assert!(queues.insert(t.queue_name("cache-service")));
        }
        assert!("stats_rollup".parse::<JobType>().is_err());
    }
}
