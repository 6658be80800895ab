//! Tenant limits (API.md §9): the platform's defaults, operators' per-tenant
//! overrides, and the book every process keeps of them. A process reloads
//! the overrides every few seconds ([`crate::db::tenant_limits::reload`]), so a change made
//! through any api instance applies in all of them without a restart.

use std::collections::HashMap;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::reloaded::{Reloaded, Ticket};

/// The defaults every tenant starts with; `0` means unlimited.
#[derive(Debug, Clone, Args)]
pub struct LimitSettings {
    /// Keys a tenant may hold (0: unlimited).
    #[arg(long, env = "TENANT_MAX_KEYS", default_value_t = 100_000)]
    pub tenant_max_keys: u64,

    /// Bytes (keys + stored values) a tenant may hold (0: unlimited).
    #[arg(long, env = "TENANT_MAX_BYTES", default_value_t = 200 * 1024 * 1024)]
    pub tenant_max_bytes: u64,

    /// Cache operations per second a tenant may make, across api instances (0: unlimited).
    #[arg(long, env = "TENANT_RATE_LIMIT", default_value_t = 0)]
    pub tenant_rate_limit: u64,

    /// Operations a tenant may make at once above its rate (default: twice the rate).
    #[arg(long, env = "TENANT_RATE_BURST")]
    pub tenant_rate_burst: Option<u64>,

    /// Jobs a tenant may have queued or running at once (0: unlimited).
    #[arg(long, env = "TENANT_MAX_ACTIVE_JOBS", default_value_t = 20)]
    pub tenant_max_active_jobs: u64,
}

/// A tenant's effective limits; `0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimits {
    pub max_keys: u64,
    pub max_bytes: u64,
    pub requests_per_second: u64,
    pub burst: u64,
    pub max_active_jobs: u64,
}

/// An operator's overrides of one tenant; `None` follows the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitOverrides {
    pub max_keys: Option<u64>,
    pub max_bytes: Option<u64>,
    pub requests_per_second: Option<u64>,
    pub burst: Option<u64>,
    pub max_active_jobs: Option<u64>,
}

/// A change of overrides: a field absent is kept, `null` returns it to the
/// default, a number replaces it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitPatch {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub max_keys: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub max_bytes: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub requests_per_second: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub burst: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub max_active_jobs: Option<Option<u64>>,
}

/// A field that is present: `null` becomes `Some(None)`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

impl LimitPatch {
    pub fn apply(&self, before: LimitOverrides) -> LimitOverrides {
        let field = |patch: Option<Option<u64>>, old: Option<u64>| patch.unwrap_or(old);
        LimitOverrides {
            max_keys: field(self.max_keys, before.max_keys),
            max_bytes: field(self.max_bytes, before.max_bytes),
            requests_per_second: field(self.requests_per_second, before.requests_per_second),
            burst: field(self.burst, before.burst),
            max_active_jobs: field(self.max_active_jobs, before.max_active_jobs),
        }
    }
}

impl LimitSettings {
    /// The limits of a tenant with `overrides` (none: the defaults).
    pub fn apply(&self, overrides: &LimitOverrides) -> TenantLimits {
        let rate = overrides
            .requests_per_second
            .unwrap_or(self.tenant_rate_limit);
        // An unset burst follows the tenant's rate, overridden or not.
        let burst = overrides
            .burst
            .or(self.tenant_rate_burst)
            .unwrap_or_else(|| rate.saturating_mul(2));
        TenantLimits {
            max_keys: overrides.max_keys.unwrap_or(self.tenant_max_keys),
            max_bytes: overrides.max_bytes.unwrap_or(self.tenant_max_bytes),
            requests_per_second: rate,
            burst,
            max_active_jobs: overrides
                .max_active_jobs
                .unwrap_or(self.tenant_max_active_jobs),
        }
    }
}

/// The limits of every tenant as this process knows them.
#[derive(Debug)]
pub struct LimitBook {
    settings: LimitSettings,
    overrides: Reloaded<HashMap<String, LimitOverrides>>,
}

impl LimitBook {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            overrides: Reloaded::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// `tenant`'s limits now.
    pub fn of(&self, tenant: &str) -> TenantLimits {
        self.overrides.with(|overrides| {
            self.settings
                .apply(overrides.get(tenant).unwrap_or(&LimitOverrides::default()))
        })
    }

    /// Whether any tenant may have a rate limit (the request path skips the
    /// limiter when none can).
    pub fn any_rate_limit(&self) -> bool {
        self.settings.tenant_rate_limit > 0
            || self.overrides.with(|overrides| {
                overrides
                    .values()
                    .any(|o| o.requests_per_second.is_some_and(|r| r > 0))
            })
    }

    /// Taken before a full reload reads PostgreSQL.
    pub fn reload_ticket(&self) -> Ticket {
        self.overrides.ticket()
    }

    /// Replaces the overrides with a full reload read after `ticket`
    /// (dropped if a newer one or a change on this instance came first).
    pub fn replace(
        &self,
        ticket: Ticket,
        rows: impl IntoIterator<Item = (String, LimitOverrides)>,
    ) {
        self.overrides.replace(ticket, rows.into_iter().collect());
    }

    /// Records one tenant's new overrides at once, before the next reload.
    pub fn set(&self, tenant: &str, overrides: LimitOverrides) {
        self.overrides.update(|all| {
            all.insert(tenant.to_owned(), overrides);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            tenant_max_keys: 100,
            tenant_max_bytes: 1000,
            tenant_rate_limit: 10,
            tenant_rate_burst: None,
            tenant_max_active_jobs: 20,
        }
    }

    #[test]
    fn overrides_replace_defaults_field_by_field_and_burst_follows_the_rate() {
        let book = LimitBook::new(settings());
        assert_eq!(book.of("a").burst, 20);
        book.set(
            "a",
            LimitOverrides {
                requests_per_second: Some(50),
                max_keys: Some(0),
                ..LimitOverrides::default()
            },
        );
        let a = book.of("a");
        assert_eq!((a.requests_per_second, a.burst, a.max_keys), (50, 100, 0));
        assert_eq!(a.max_bytes, 1000);
        assert_eq!(book.of("b"), settings().apply(&LimitOverrides::default()));
        let patch: LimitPatch = serde_json::from_str(r#"{"maxKeys": null, "burst": 3}"#).unwrap();
        let after = patch.apply(LimitOverrides {
            max_keys: Some(5),
            max_bytes: Some(9),
            ..LimitOverrides::default()
        });
        assert_eq!(
            (after.max_keys, after.max_bytes, after.burst),
            (None, Some(9), Some(3))
        );
        assert!(serde_json::from_str::<LimitPatch>(r#"{"maxKeys": -1}"#).is_err());
        assert!(serde_json::from_str::<LimitPatch>(r#"{"maxKey": 1}"#).is_err());
        let explicit = LimitSettings {
            tenant_rate_burst: Some(7),
            ..settings()
        };
        assert_eq!(explicit.apply(&LimitOverrides::default()).burst, 7);
    }
}
