//! What every handler can reach: the cache operations, the database pool and
//! the request limits. One `Arc`, so handing it to a request is one atomic add.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use cache_jobs::queue::JobQueue;
use cache_shared::cache::Cache;
use cache_shared::config::ObservabilitySettings;
use cache_shared::limits::LimitBook;
use sqlx::PgPool;

use crate::admission::{InFlight, RateLimiter};
use crate::cli::HttpSettings;
use crate::instrumentation::metrics::Instruments;
use crate::key_cache::KeyCache;
use cache_shared::tokens::{ServiceDirectory, ServiceTokens};

#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub cache: Cache,
    pub db: PgPool,
    pub jobs: JobQueue,
    /// Whether the queues have a Redis of their own (`QUEUE_REDIS_URL`), checked by `/health`.
    pub queue_has_own_redis: bool,
    pub key_cache: KeyCache,
    /// Platform tokens (`AUTH_SERVICE_URL`); `None`: only API keys.
    pub platform_auth: Option<crate::platform_auth::PlatformAuth>,
    /// For the connections of its own a task opens (near-cache tracking).
    pub redis_settings: cache_shared::config::RedisSettings,
    /// The tenants whose events this instance streams.
    pub events: Arc<crate::events::EventHub>,
    /// Every tenant's limits (defaults and operators' overrides).
    pub limits: Arc<LimitBook>,
    /// Each tenant's rate of cache operations on this instance.
    pub rate: Arc<RateLimiter>,
    /// Requests in flight on this instance, across its serving threads.
    pub in_flight: InFlight,
    /// The internal plane's callers: anonymous and named services, their scopes.
    pub services: ServiceDirectory,
    /// `METRICS_TOKEN`: empty leaves `/metrics` open.
    pub metrics_tokens: ServiceTokens,
    pub settings: HttpSettings,
    /// HTTPS (`TLS_CERT_FILE`/`TLS_KEY_FILE`); `None`: plain HTTP.
    pub tls: Option<crate::tls::Https>,
    pub observability: ObservabilitySettings,
    pub instruments: Instruments,
    /// This process among the api instances (rollups are merged per instance).
    pub instance_id: String,
    pub started_at: Instant,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
