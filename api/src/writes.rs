//! What a single-key read or write says beyond its key, the same on both
//! planes (API.md §2, §10): a value or a negative entry, the TTL rules and
//! a lease token on writes; a lease and its wait on reads.

use std::time::Duration;

use cache_shared::Error;
use cache_shared::cache::{Entry, SetOptions};
use cache_shared::codec::Value;
use cache_shared::keys::TenantId;
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::state::AppState;

/// A present JSON value, `null` included (serde's `Option` would read
/// `null` as absent).
pub fn present_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// One write's fields, from either plane's body.
#[derive(Debug, Default)]
pub struct Write {
    pub value: Option<Value>,
    pub ttl: Option<Expiry>,
    pub exact_ttl: bool,
    pub negative: bool,
    pub lease: Option<String>,
    pub compute_ms: Option<u32>,
}

impl Write {
    /// Stores it as `tenant`'s `key`; returns the TTL a read now reports.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a value with `negative`, or neither; those
    /// of [`cache_shared::cache::Cache::set`].
    pub async fn store(self, state: &AppState, tenant: &TenantId, key: &str) -> Result<i64, Error> {
        match (self.value, self.negative) {
            (Some(_), true) => Err(Error::validation(
                "value",
                "a negative entry has no value: send either value or \"negative\": true",
            )),
            (None, true) => {
                state
                    .cache
                    .set_negative(tenant, key, self.ttl, self.lease.as_deref())
                    .await
            }
            (None, false) => Err(Error::validation("value", "value is required")),
            (Some(value), false) => {
                let options = SetOptions {
                    ttl: self.ttl,
                    exact_ttl: self.exact_ttl,
                    lease: self.lease,
                    compute_ms: self.compute_ms,
                };
                state.cache.set(tenant, key, &value, &options).await
            }
        }
    }
}

/// `?lease=true[&leaseWaitMs=N]` of a read (API.md §10).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ReadQuery {
    /// On a miss: the first caller gets a lease token, others wait for its value.
    pub lease: Option<bool>,
    /// How long a caller waits for the lease holder's value (0–5000 ms, default 100).
    #[param(maximum = 5000)]
    pub lease_wait_ms: Option<u64>,
}

/// Default wait of a lease read.
const DEFAULT_LEASE_WAIT: Duration = Duration::from_millis(100);

impl ReadQuery {
    /// Reads `tenant`'s `key`, with a lease when asked.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a wait beyond 5000 ms, those of the read.
    pub async fn read(
        &self,
        state: &AppState,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Entry, Error> {
        if self.lease != Some(true) {
            return state.cache.get(tenant, key).await;
        }
        let wait = match self.lease_wait_ms {
            None => DEFAULT_LEASE_WAIT,
            Some(ms) if ms <= 5000 => Duration::from_millis(ms),
            Some(_) => {
                return Err(Error::validation(
                    "leaseWaitMs",
                    "leaseWaitMs must be from 0 to 5000",
                ));
            }
        };
        state.cache.get_leased(tenant, key, wait).await
    }
}
