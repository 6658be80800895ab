//! What every handler can reach: the cache operations, the database pool and
//! the request limits.

use std::sync::Arc;
use std::time::Instant;

use cache_shared::cache::Cache;
use sqlx::PgPool;

use crate::cli::HttpSettings;
use crate::extract::ServiceTokens;

#[derive(Clone, Debug)]
pub struct AppState {
    pub cache: Cache,
    pub db: PgPool,
    pub service_tokens: Arc<ServiceTokens>,
    pub settings: Arc<HttpSettings>,
    pub started_at: Instant,
}
