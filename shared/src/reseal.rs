//! Bringing stored values under the current data key (the `reencrypt` job,
//! API.md §11): values sealed under an older key are opened and sealed
//! again; plain values that should be sealed (in an encrypted namespace, or
//! platform data with `ENCRYPT_PLATFORM_DATA`) are sealed. Each swap happens
//! only if the value is still the one read (a newer write stands) and keeps
//! the key's TTL and headers.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

use crate::codec::{NEGATIVE_ENVELOPE, split_expiry};
use crate::error::Error;
use crate::redis::RedisStore;
use crate::sealing::{Keyring, is_sealed, key_id_of};

/// What resealing did to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resealed {
    /// Sealed under an older key before, under the current one now.
    Rotated,
    /// Plain before, sealed now.
    Sealed,
    /// Nothing to do, or the value changed meanwhile (the newer write stands).
    Unchanged,
}

/// The envelope `envelope` should become, and why; `None` when it is fine.
///
/// # Errors
///
/// [`Error::Sealing`] when its key is not configured or it does not decrypt.
fn next_envelope(
    keys: &Keyring,
    envelope: &[u8],
    should_seal: bool,
) -> Result<Option<(Vec<u8>, Resealed)>, Error> {
    if is_sealed(envelope) {
        if key_id_of(envelope) == keys.current_id() {
            return Ok(None);
        }
        let inner = keys.open(envelope)?;
        return Ok(Some((keys.seal(&inner)?, Resealed::Rotated)));
    }
    if should_seal && !envelope.is_empty() && envelope != NEGATIVE_ENVELOPE {
        return Ok(Some((keys.seal(envelope)?, Resealed::Sealed)));
    }
    Ok(None)
}

/// A tenant's value `stored` (headers and envelope) at `redis_key`, of
/// namespace `prefix` (its accounting follows the size change); sealed
/// when `should_seal` (its namespace is encrypted).
///
/// # Errors
///
/// [`Error::Sealing`] when the value's key is not configured (it stays as
/// it is), [`Error::CacheUnavailable`].
pub async fn tenant_value(
    redis_store: &RedisStore,
    keys: &Keyring,
    (redis_key, prefix): (&str, Option<&str>),
    stored: &[u8],
    should_seal: bool,
    deadline: std::time::Duration,
) -> Result<Resealed, Error> {
    let envelope = split_expiry(stored).1;
    let Some((next, outcome)) = next_envelope(keys, envelope, should_seal)? else {
        return Ok(Resealed::Unchanged);
    };
    let at = (redis_key, prefix);
    let replaced = crate::cache::swap_envelope(redis_store, at, stored, &next, deadline).await?;
    Ok(if replaced {
        outcome
    } else {
        Resealed::Unchanged
    })
}

/// KEYS: a string. ARGV: the bytes expected, the replacement. Replaces
/// (TTL kept) only if the string is still the one expected.
static SWAP_STRING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
",
    )
});

/// KEYS: a hash. ARGV: field, the bytes expected, the replacement. Replaces
/// the field (the hash's TTL kept) only if it still holds what is expected.
static SWAP_FIELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
",
    )
});

/// Where a platform value is stored.
#[derive(Debug, Clone, Copy)]
pub enum PlatformSlot<'a> {
    /// A permission result: a string of headers and envelope.
    String,
    /// A session's data: this field of its hash, an envelope.
    Field(&'a str),
}

/// A platform value (a session's data or a permission result) `stored` at
/// `redis_key`; sealed when `should_seal` (`ENCRYPT_PLATFORM_DATA`).
///
/// # Errors
///
/// As [`tenant_value`].
pub async fn platform_value(
    redis_store: &RedisStore,
    keys: &Keyring,
    (redis_key, slot): (&str, PlatformSlot<'_>),
    stored: &[u8],
    should_seal: bool,
    deadline: std::time::Duration,
) -> Result<Resealed, Error> {
    let envelope = split_expiry(stored).1;
    let Some((next, outcome)) = next_envelope(keys, envelope, should_seal)? else {
        return Ok(Resealed::Unchanged);
    };
    let replacement = crate::codec::with_envelope(stored, &next);
    let replaced: i64 = redis_store
        .timed_for(deadline, async {
            let mut conn = redis_store.conn().await?;
            let mut invocation = match slot {
                PlatformSlot::String => SWAP_STRING.prepare_invoke(),
                PlatformSlot::Field(field) => {
                    let mut invocation = SWAP_FIELD.prepare_invoke();
                    invocation.arg(field);
                    invocation
                }
            };
            invocation.key(redis_key).arg(stored).arg(&replacement);
            Ok(invocation.invoke_async(&mut conn).await?)
        })
        .await?;
    Ok(if replaced == 1 {
        outcome
    } else {
        Resealed::Unchanged
    })
}
