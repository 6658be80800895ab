//! What the api and the worker share: configuration, the tenant key layout,
//! the value codec, the error type, the Redis and PostgreSQL clients and the
//! cache, session and permission operations built on them. No HTTP framework
//! and no queue library live here.

pub mod api_keys;
pub mod cache;
pub mod codec;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod health;
pub mod keys;
pub mod leases;
pub mod limits;
pub mod memory_report;
pub mod metrics;
pub mod namespaces;
pub mod near_cache;
pub mod oplog;
pub mod outbound;
pub mod permissions;
pub mod quota;
pub mod random;
pub mod redis;
pub mod refresh;
pub mod reloaded;
pub mod reseal;
pub mod retry;
pub mod scripts;
pub mod sealing;
pub mod sessions;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod ttl;

pub use error::Error;

/// A count as PostgreSQL's `bigint` and Prometheus's integer gauges hold it:
/// beyond `i64::MAX` it saturates rather than fails.
pub fn saturating_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
