//! User sessions in the platform namespace, with a per-user and a per-tenant
//! index so that revoking a user's or a tenant's sessions reads one set instead
//! of scanning the keyspace. A session is a hash (`u`, `t`, `ttl`, `d`); the
//! scripts in [`crate::scripts`] change it and its indexes together.

use crate::cache::Cache;
use crate::codec::Value;
use crate::error::Error;
use crate::keys::{SessionKeys, TenantId, validate_key};
use crate::scripts::{SESSION_DELETE, SESSION_GET, SESSION_PRUNE, SESSION_REVOKE, SESSION_SET};
use crate::stats::op::Op;
use crate::ttl::{Expiry, from_redis_ttl};

/// TTL of a session stored without one: 15 minutes.
pub const DEFAULT_SESSION_TTL: Expiry = Expiry::Seconds(900);

/// Longest accepted user id.
pub const MAX_USER_ID_BYTES: usize = 256;

/// A session as callers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub session_id: String,
    pub user_id: String,
    pub tenant_id: String,
    /// Compact JSON, `null` when none was given.
    pub data: Value,
    /// Remaining TTL in seconds, `-1` for no expiry.
    pub ttl: i64,
}

/// What a caller stores.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session_id: String,
    pub user_id: String,
    pub tenant_id: String,
    pub data: Option<Value>,
    pub ttl: Option<Expiry>,
}

/// Checks a user id: the same rules as a cache key, at most 256 bytes.
///
/// # Errors
///
/// [`Error::Validation`] naming `field`.
pub fn validate_user_id(user_id: &str, field: &str) -> Result<(), Error> {
    validate_key(user_id, field)?;
    if user_id.len() > MAX_USER_ID_BYTES {
        return Err(Error::validation(
            field.to_owned(),
            format!("{field} must be at most {MAX_USER_ID_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Stores (or replaces) a session and indexes it under its user and tenant.
///
/// # Errors
///
/// [`Error::Validation`], [`Error::PayloadTooLarge`], [`Error::CacheUnavailable`].
pub async fn set(cache: &Cache, new: NewSession) -> Result<Session, Error> {
    let started = std::time::Instant::now();
    validate_key(&new.session_id, "sessionId")?;
    validate_user_id(&new.user_id, "userId")?;
    TenantId::parse(&new.tenant_id, "tenantId")?;
    let data = new.data.unwrap_or_else(|| Value::Json("null".into()));
    if matches!(data, Value::Bytes(_)) {
        return Err(Error::validation("data", "data must be JSON"));
    }
    cache.check_size(&data, "data")?;
    let expiry = new.ttl.unwrap_or(DEFAULT_SESSION_TTL);
    let ttl_arg = expiry.seconds().unwrap_or(0);

    let mut invocation = SESSION_SET.prepare_invoke();
    invocation
        .key(SessionKeys::session(&new.session_id))
        .key(SessionKeys::user_index(&new.user_id))
        .key(SessionKeys::tenant_index(&new.tenant_id))
        .arg(&new.session_id)
        .arg(&new.user_id)
        .arg(&new.tenant_id)
        .arg(ttl_arg)
        .arg(cache.encode_platform(&data)?)
        .arg(SessionKeys::USER_INDEX_PREFIX)
        .arg(SessionKeys::TENANT_INDEX_PREFIX);
    let result = cache
        .on_redis(async |conn| {
            let _: i64 = invocation.invoke_async(conn).await?;
            Ok(())
        })
        .await;
    let platform = cache.platform_stats();
    // A session id is a credential: logged without it.
    cache
        .stats()
        .observe_write(Op::Session, &platform, started, None, None, result)?;
    Ok(Session {
        session_id: new.session_id,
        user_id: new.user_id,
        tenant_id: new.tenant_id,
        data,
        ttl: expiry.reported(),
    })
}

/// Reads a session; with `touch`, its TTL restarts from the one it was stored with.
///
/// # Errors
///
/// [`Error::SessionNotFound`] when absent, [`Error::Validation`], [`Error::CacheUnavailable`].
pub async fn get(cache: &Cache, session_id: &str, touch: bool) -> Result<Session, Error> {
    let started = std::time::Instant::now();
    validate_key(session_id, "sessionId")?;
    let mut invocation = SESSION_GET.prepare_invoke();
    invocation
        .key(SessionKeys::session(session_id))
        .arg(session_id)
        .arg(SessionKeys::USER_INDEX_PREFIX)
        .arg(SessionKeys::TENANT_INDEX_PREFIX)
        .arg(if touch { "1" } else { "0" });
    let result = cache
        .on_redis(async |conn| {
            let found: Option<(String, String, i64, Vec<u8>, i64)> =
                invocation.invoke_async(conn).await?;
            Ok(found)
        })
        .await;
    let platform = cache.platform_stats();
    let found = cache
        .stats()
        .observe(Op::Session, &platform, started, None, result)?;
    cache
        .stats()
        .record_secret_lookup(&platform, Op::Session, found.is_some());
    let (user_id, tenant_id, _stored_ttl, data, remaining) = found.ok_or(Error::SessionNotFound)?;
    Ok(Session {
        session_id: session_id.to_owned(),
        user_id,
        tenant_id,
        data: cache.decode_platform(&data)?,
        ttl: from_redis_ttl(remaining).unwrap_or(-1),
    })
}

/// Deletes a session and its index entries; `false` when there was none.
///
/// # Errors
///
/// [`Error::Validation`], [`Error::CacheUnavailable`].
pub async fn delete(cache: &Cache, session_id: &str) -> Result<bool, Error> {
    let started = std::time::Instant::now();
    validate_key(session_id, "sessionId")?;
    let mut invocation = SESSION_DELETE.prepare_invoke();
    invocation
        .key(SessionKeys::session(session_id))
        .arg(session_id)
        .arg(SessionKeys::USER_INDEX_PREFIX)
        .arg(SessionKeys::TENANT_INDEX_PREFIX);
    let result = cache
        .on_redis(async |conn| {
            let deleted: i64 = invocation.invoke_async(conn).await?;
            Ok(deleted == 1)
        })
        .await;
    let platform = cache.platform_stats();
    let deleted =
        cache
            .stats()
            .observe_write(Op::Session, &platform, started, None, None, result)?;
    Ok(deleted)
}

/// Whose sessions a revocation targets.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    #[schema(min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f]+$")]
    pub user_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$"
    )]
    pub tenant_id: Option<String>,
}

impl Owner {
    /// # Errors
    ///
    /// [`Error::Validation`] for a malformed user or tenant id.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(user) = &self.user_id {
            validate_user_id(user, "userId")?;
        }
        if let Some(tenant) = &self.tenant_id {
            TenantId::parse(tenant, "tenantId")?;
        }
        Ok(())
    }

    /// The index to read: the user's when given (smaller), else the tenant's.
    fn index(&self) -> Option<String> {
        match (&self.user_id, &self.tenant_id) {
            (Some(user), _) => Some(SessionKeys::user_index(user)),
            (None, Some(tenant)) => Some(SessionKeys::tenant_index(tenant)),
            (None, None) => None,
        }
    }
}

/// The session ids indexed for `owner` (possibly including expired ones).
///
/// # Errors
///
/// [`Error::Validation`] when `owner` names nobody, [`Error::CacheUnavailable`].
pub async fn indexed_ids(cache: &Cache, owner: &Owner) -> Result<Vec<String>, Error> {
    let index = owner
        .index()
        .ok_or_else(|| Error::validation("userId", "userId or tenantId is required"))?;
    let redis = cache.redis();
    redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let ids: Vec<String> = deadpool_redis::redis::cmd("SMEMBERS")
                .arg(&index)
                .query_async(&mut conn)
                .await?;
            Ok(ids)
        })
        .await
}

/// Revokes those of `ids` that still belong to `owner`; returns how many.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn revoke(cache: &Cache, owner: &Owner, ids: &[String]) -> Result<u64, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut invocation = SESSION_REVOKE.prepare_invoke();
    for id in ids {
        invocation.key(SessionKeys::session(id));
    }
    invocation
        .arg(SessionKeys::USER_INDEX_PREFIX)
        .arg(SessionKeys::TENANT_INDEX_PREFIX)
        .arg(owner.user_id.as_deref().unwrap_or(""))
        .arg(owner.tenant_id.as_deref().unwrap_or(""));
    for id in ids {
        invocation.arg(id);
    }
    let redis = cache.redis();
    redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let revoked: u64 = invocation.invoke_async(&mut conn).await?;
            Ok(revoked)
        })
        .await
}

/// Removes from one index the ids whose session has expired; returns how many.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn prune_index(cache: &Cache, index: &str, ids: &[String]) -> Result<u64, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut invocation = SESSION_PRUNE.prepare_invoke();
    invocation.key(index).arg(SessionKeys::SESSION_PREFIX);
    for id in ids {
        invocation.arg(id);
    }
    let redis = cache.redis();
    redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let pruned: u64 = invocation.invoke_async(&mut conn).await?;
            Ok(pruned)
        })
        .await
}
