//! Cached permission results in the platform namespace. Keys have the form
//! `permission:{userId}:{tenantId}:{resource}:{action}[:…]`; each entry is
//! listed in a per-user and a per-tenant index so invalidation reads a set,
//! never scans the keyspace.

use crate::cache::Cache;
use crate::codec::{Value, split_expiry, unix_now_ms};
use crate::error::Error;
use crate::keys::{PermissionKeys, validate_key};
use crate::scripts::{PERMISSION_INVALIDATE, PERMISSION_SET};
use crate::stats::op::Op;
use crate::ttl::{Expiry, from_redis_ttl};

/// TTL of a permission result stored without one: 5 minutes.
pub const DEFAULT_PERMISSION_TTL: Expiry = Expiry::Seconds(300);

/// A validated permission key and the parts the indexes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionKey {
    key: String,
    user_end: usize,
    tenant_end: usize,
}

impl PermissionKey {
    /// # Errors
    ///
    /// [`Error::Validation`] naming `field` unless the key has at least five
    /// non-empty `:`-separated segments, the first being `permission`.
    pub fn parse(key: &str, field: &'static str) -> Result<Self, Error> {
        validate_key(key, field)?;
        let rule = || {
            Error::validation(
                field,
                format!(
                    "{field} must look like permission:{{userId}}:{{tenantId}}:{{resource}}:{{action}} with no empty segment"
                ),
            )
        };
        let segments: Vec<&str> = key.split(':').collect();
        if segments.len() < 5
            || segments[0] != "permission"
            || segments.iter().any(|s| s.is_empty())
        {
            return Err(rule());
        }
        let user_end = "permission:".len() + segments[1].len();
        let tenant_end = user_end + 1 + segments[2].len();
        Ok(Self {
            key: key.to_owned(),
            user_end,
            tenant_end,
        })
    }

    /// Builds the key from its parts (the `?userId=&tenantId=&resource=&action=` form).
    ///
    /// # Errors
    ///
    /// As [`PermissionKey::parse`].
    pub fn from_parts(
        user_id: &str,
        tenant_id: &str,
        resource: &str,
        action: &str,
    ) -> Result<Self, Error> {
        Self::parse(
            &format!("permission:{user_id}:{tenant_id}:{resource}:{action}"),
            "key",
        )
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    pub fn user_id(&self) -> &str {
        &self.key["permission:".len()..self.user_end]
    }

    pub fn tenant_id(&self) -> &str {
        &self.key[self.user_end + 1..self.tenant_end]
    }
}

/// Checks a user or tenant id used to select permission entries: a valid key
/// part with no `:` (which would split it into two segments).
///
/// # Errors
///
/// [`Error::Validation`] naming `field`.
pub fn validate_part(value: &str, field: &'static str) -> Result<(), Error> {
    validate_key(value, field)?;
    if value.contains(':') {
        return Err(Error::validation(
            field,
            format!("{field} must not contain ':'"),
        ));
    }
    Ok(())
}

/// A cached permission result with its remaining TTL.
#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    pub key: String,
    pub result: Value,
    pub ttl: i64,
}

/// Which entries an invalidation drops.
#[derive(Debug, Clone)]
pub enum Selector {
    Key(PermissionKey),
    User(String),
    Tenant(String),
    UserInTenant { user_id: String, tenant_id: String },
}

/// Stores a permission result and indexes it; returns the reported TTL.
///
/// # Errors
///
/// [`Error::PayloadTooLarge`], [`Error::CacheUnavailable`].
pub async fn set(
    cache: &Cache,
    key: &PermissionKey,
    result: &Value,
    ttl: Option<Expiry>,
) -> Result<i64, Error> {
    let started = std::time::Instant::now();
    cache.check_size(result, "result")?;
    let expiry = ttl.unwrap_or(DEFAULT_PERMISSION_TTL);
    let mut invocation = PERMISSION_SET.prepare_invoke();
    invocation
        .key(PermissionKeys::entry(key.as_str()))
        .key(PermissionKeys::user_index(key.user_id()))
        .key(PermissionKeys::tenant_index(key.tenant_id()))
        .arg(key.as_str())
        .arg(cache.encode_platform(result)?)
        .arg(expiry.seconds().unwrap_or(0));
    let outcome = cache
        .on_redis(async |conn| {
            let _: i64 = invocation.invoke_async(conn).await?;
            Ok(())
        })
        .await;
    let platform = cache.platform_stats();
    let key = Some(key.as_str());
    cache
        .stats()
        .observe_write(Op::Permission, &platform, started, key, None, outcome)?;
    Ok(expiry.reported())
}

/// # Errors
///
/// [`Error::KeyNotFound`] when absent, [`Error::CacheUnavailable`].
pub async fn get(cache: &Cache, key: &PermissionKey) -> Result<Permission, Error> {
    let started = std::time::Instant::now();
    let entry = PermissionKeys::entry(key.as_str());
    let outcome = cache
        .on_redis(async |conn| {
            let stored: Option<Vec<u8>> = deadpool_redis::redis::cmd("GET")
                .arg(&entry)
                .query_async(conn)
                .await?;
            // The header gives the TTL, except for entries written before it.
            let ttl = match &stored {
                Some(bytes) => match split_expiry(bytes).0.ttl_at(unix_now_ms()) {
                    Some(ttl) => ttl,
                    None => {
                        let ttl: i64 = deadpool_redis::redis::cmd("TTL")
                            .arg(&entry)
                            .query_async(conn)
                            .await?;
                        from_redis_ttl(ttl).unwrap_or(-1)
                    }
                },
                None => -1,
            };
            Ok((stored, ttl))
        })
        .await;
    let platform = cache.platform_stats();
    let (stored, ttl) = cache.stats().observe(
        Op::Permission,
        &platform,
        started,
        Some(key.as_str()),
        outcome,
    )?;
    cache
        .stats()
        .record_lookup(&platform, Op::Permission, key.as_str(), stored.is_some());
    let stored = stored.ok_or_else(|| Error::missing(key.as_str()))?;
    Ok(Permission {
        key: key.as_str().to_owned(),
        result: cache.decode_platform(&stored)?,
        ttl,
    })
}

/// Drops the selected entries and their index memberships; returns how many existed.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn invalidate(cache: &Cache, selector: &Selector) -> Result<u64, Error> {
    let started = std::time::Instant::now();
    let mut invocation = PERMISSION_INVALIDATE.prepare_invoke();
    // Every call names a key of the platform slot, which routes it to the
    // primary holding that slot on a cluster.
    match selector {
        Selector::Key(key) => invocation.key(PermissionKeys::entry(key.as_str())),
        Selector::User(user) => invocation.key(PermissionKeys::user_index(user)),
        Selector::Tenant(tenant) => invocation.key(PermissionKeys::tenant_index(tenant)),
        Selector::UserInTenant { user_id, tenant_id } => invocation
            .key(PermissionKeys::user_index(user_id))
            .key(PermissionKeys::tenant_index(tenant_id)),
    };
    invocation
        .arg(PermissionKeys::ENTRY_PREFIX)
        .arg(PermissionKeys::USER_INDEX_PREFIX)
        .arg(PermissionKeys::TENANT_INDEX_PREFIX);
    if let Selector::Key(key) = selector {
        invocation.arg(key.as_str());
    }
    let outcome = cache
        .on_redis(async |conn| {
            let deleted: u64 = invocation.invoke_async(conn).await?;
            Ok(deleted)
        })
        .await;
    let platform = cache.platform_stats();
    let deleted =
        cache
            .stats()
            .observe_write(Op::Permission, &platform, started, None, None, outcome)?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_user_and_tenant() {
        let key = PermissionKey::parse("permission:u-1:acme:doc:read:extra", "key").unwrap();
        assert_eq!(key.user_id(), "u-1");
        assert_eq!(key.tenant_id(), "acme");
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "permission:u:t:doc",
            "perm:u:t:doc:read",
            "permission::t:doc:read",
            "permission:u:t:doc:",
            "permission:u:t::read",
            "Permission:u:t:doc:read",
        ] {
            assert!(PermissionKey::parse(bad, "key").is_err(), "{bad} accepted");
        }
    }
}
