//! API key lookups, remembered for a few seconds so the hot path does not
//! query PostgreSQL per request, and hardened against token floods:
//!
//! - keys that exist and tokens that do not are remembered apart, each
//!   bounded, so unknown tokens can never push a valid key out;
//! - each client address has a budget of failed lookups per window; beyond
//!   it, tokens not already known are refused without a query;
//! - lookups of tokens not in memory take one of a few permits, so a flood
//!   cannot take every PostgreSQL connection;
//! - while PostgreSQL is down, keys seen within `API_KEY_STALE_SECONDS`
//!   keep working (a revocation made meanwhile waits for PostgreSQL).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_shared::Error;
use cache_shared::api_keys;
use cache_shared::db::api_keys::{self as key_rows, ApiKeyRecord};
use sqlx::PgPool;

/// Keys (and unknown tokens) remembered at most, each.
const MAX_REMEMBERED: usize = 10_000;
/// Client addresses whose failures are counted at most.
const MAX_CLIENTS: usize = 10_000;
/// Failed lookups a client address may cause per window.
pub const FAILED_AUTH_BUDGET: u32 = 30;
/// The window of [`FAILED_AUTH_BUDGET`].
pub const FAILED_AUTH_WINDOW: Duration = Duration::from_secs(10);
/// `last_used_at` is written at most this often per key.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// How long keys are remembered, and how long past that while PostgreSQL is down.
#[derive(Debug, Clone, Copy)]
pub struct KeyCacheSettings {
    pub ttl: Duration,
    pub stale: Duration,
    /// Lookups of unknown tokens at once (keep it under the pool size).
    pub concurrent_lookups: usize,
}

struct Known {
    record: ApiKeyRecord,
    fetched: Instant,
    marked_used: Option<Instant>,
}

struct Failures {
    since: Instant,
    count: u32,
}

/// See the module docs.
pub struct KeyCache {
    settings: KeyCacheSettings,
    known: Mutex<HashMap<[u8; 32], Known>>,
    unknown: Mutex<HashMap<[u8; 32], Instant>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    lookups: tokio::sync::Semaphore,
    queries: AtomicU64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a token was not resolved to a key.
#[derive(Debug)]
pub enum Refusal {
    /// No usable key has this token.
    Unknown,
    /// The client address spent its failed-lookup budget: try again later.
    Budget { retry_after_secs: u64 },
    /// PostgreSQL was needed and did not answer.
    Store(Error),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeyCache {
    pub fn new(settings: KeyCacheSettings) -> Self {
        Self {
            lookups: tokio::sync::Semaphore::new(settings.concurrent_lookups.max(1)),
            settings,
            known: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            queries: AtomicU64::new(0),
        }
    }

    /// PostgreSQL lookups made so far (for tests and figures).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Keys remembered now.
    pub fn known_keys(&self) -> usize {
        lock(&self.known).len()
    }

    /// The usable key presented as `secret` by `client`.
    ///
    /// # Errors
    ///
    /// A [`Refusal`] saying why not.
    pub async fn resolve(
        &self,
        db: &PgPool,
        secret: &str,
        client: Option<IpAddr>,
    ) -> Result<ApiKeyRecord, Refusal> {
        let hash = api_keys::digest(secret);
        let now = Instant::now();
        if let Some(record) = self.fresh(&hash, now) {
            return self.usable(db, &hash, record, now);
        }
        if lock(&self.unknown)
            .get(&hash)
            .is_some_and(|at| now.duration_since(*at) < self.settings.ttl)
        {
            return Err(self.failed(client, now));
        }
        if let Some(wait) = client.and_then(|c| self.over_budget(c, now)) {
            return Err(Refusal::Budget {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        let found = {
            let _permit =
                self.lookups.acquire().await.map_err(|_| {
                    Refusal::Store(Error::internal("the key lookup gate is closed"))
                })?;
            self.queries.fetch_add(1, Ordering::Relaxed);
            key_rows::find_by_hash(db, &hash).await
        };
        match found {
            Ok(Some(record)) => {
                self.remember(hash, record.clone(), now);
                self.usable(db, &hash, record, now)
            }
            Ok(None) => {
                self.remember_unknown(hash, now);
                Err(self.failed(client, now))
            }
            Err(err) => match self.stale(&hash, now) {
                Some(record) => {
                    tracing::warn!(%err, "PostgreSQL unavailable: a recently seen API key is accepted from memory");
                    self.usable(db, &hash, record, now)
                }
                None => Err(Refusal::Store(err)),
            },
        }
    }

    fn usable(
        &self,
        db: &PgPool,
        hash: &[u8; 32],
        record: ApiKeyRecord,
        now: Instant,
    ) -> Result<ApiKeyRecord, Refusal> {
        if !record.is_usable(chrono::Utc::now()) {
            return Err(Refusal::Unknown);
        }
        self.mark_used(db, hash, &record.id, now);
        Ok(record)
    }

    fn fresh(&self, hash: &[u8; 32], now: Instant) -> Option<ApiKeyRecord> {
        lock(&self.known)
            .get(hash)
            .filter(|k| now.duration_since(k.fetched) < self.settings.ttl)
            .map(|k| k.record.clone())
    }

    fn stale(&self, hash: &[u8; 32], now: Instant) -> Option<ApiKeyRecord> {
        lock(&self.known)
            .get(hash)
            .filter(|k| now.duration_since(k.fetched) < self.settings.ttl + self.settings.stale)
            .map(|k| k.record.clone())
    }

    fn remember(&self, hash: [u8; 32], record: ApiKeyRecord, now: Instant) {
        let keep = self.settings.ttl + self.settings.stale;
        let mut known = lock(&self.known);
        if known.len() >= MAX_REMEMBERED && !known.contains_key(&hash) {
            known.retain(|_, k| now.duration_since(k.fetched) < keep);
            if known.len() >= MAX_REMEMBERED
                && let Some(oldest) = known.iter().min_by_key(|(_, k)| k.fetched).map(|(h, _)| *h)
            {
                known.remove(&oldest);
            }
        }
        let marked_used = known.get(&hash).and_then(|k| k.marked_used);
        known.insert(
            hash,
            Known {
                record,
                fetched: now,
                marked_used,
            },
        );
        drop(known);
        lock(&self.unknown).remove(&hash);
    }

    fn remember_unknown(&self, hash: [u8; 32], now: Instant) {
        let mut unknown = lock(&self.unknown);
        if unknown.len() >= MAX_REMEMBERED {
            unknown.retain(|_, at| now.duration_since(*at) < self.settings.ttl);
            if unknown.len() >= MAX_REMEMBERED {
                unknown.clear();
            }
        }
        unknown.insert(hash, now);
    }

    /// Counts a failed authentication of another kind (a platform token)
    /// against `client`'s budget.
    pub fn count_failure(&self, client: Option<IpAddr>) {
        let _ = self.failed(client, Instant::now());
    }

    /// Seconds `client` must wait before a new credential is looked up, when
    /// it spent its failed-authentication budget.
    pub fn budget_wait(&self, client: Option<IpAddr>) -> Option<u64> {
        client
            .and_then(|c| self.over_budget(c, Instant::now()))
            .map(|wait| wait.as_secs().max(1))
    }

    /// Counts a failed lookup against `client`.
    fn failed(&self, client: Option<IpAddr>, now: Instant) -> Refusal {
        if let Some(client) = client {
            let mut failures = lock(&self.failures);
            if failures.len() >= MAX_CLIENTS && !failures.contains_key(&client) {
                failures.retain(|_, f| now.duration_since(f.since) < FAILED_AUTH_WINDOW);
                if failures.len() >= MAX_CLIENTS {
                    failures.clear();
                }
            }
            let entry = failures.entry(client).or_insert(Failures {
                since: now,
                count: 0,
            });
            if now.duration_since(entry.since) >= FAILED_AUTH_WINDOW {
                *entry = Failures {
                    since: now,
                    count: 0,
                };
            }
            entry.count = entry.count.saturating_add(1);
        }
        Refusal::Unknown
    }

    /// How long `client` must wait, if it spent its budget.
    fn over_budget(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let failures = lock(&self.failures);
        let entry = failures.get(&client)?;
        let elapsed = now.duration_since(entry.since);
        (elapsed < FAILED_AUTH_WINDOW && entry.count >= FAILED_AUTH_BUDGET)
            .then(|| FAILED_AUTH_WINDOW - elapsed)
    }

    /// Writes `last_used_at` in the background, at most once a minute per key.
    fn mark_used(&self, db: &PgPool, hash: &[u8; 32], id: &str, now: Instant) {
        {
            let mut known = lock(&self.known);
            let Some(entry) = known.get_mut(hash) else {
                return;
            };
            if entry
                .marked_used
                .is_some_and(|t| now.duration_since(t) < LAST_USED_EVERY)
            {
                return;
            }
            entry.marked_used = Some(now);
        }
        let db = db.clone();
        let ids = vec![id.to_owned()];
        tokio::spawn(async move {
            if let Err(err) = key_rows::mark_used(&db, &ids).await {
                tracing::debug!(%err, "could not record key use");
            }
        });
    }
}
