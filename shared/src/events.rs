//! Invalidation events (API.md §10): what happened to a tenant's keys
//! (`set`, `delete`, `expire`, `expired`, `evicted`, `flush`; never values),
//! for other services to drop their local copies.
//!
//! Each tenant has one Redis stream, `e:{tenant}` (its hash tag, so the
//! scripts that change keys append to it in the same atomic step: a
//! tenant's events are in the order its changes happened). Streams are
//! written only while someone listens: a listener keeps `e:{tenant}:on`
//! alive, and each stream holds about its last [`BUFFERED`] events, which
//! is what a client can resume (`Last-Event-ID`) after a short disconnect.
//! Keys that expire or that Redis evicts are reported by Redis itself
//! (keyspace notifications) and appended by the worker.

use deadpool_redis::redis;

use crate::error::Error;
use crate::keys::TenantId;
use crate::redis::RedisStore;

/// Events a tenant's stream keeps (approximately: Redis trims it in whole
/// nodes); the accounting scripts write the same figure.
pub const BUFFERED: usize = 1000;

/// How long a listener's mark lasts unless renewed.
pub const LISTENING_MS: u64 = 60_000;

/// How long a stream is kept after its last listener left.
const STREAM_KEPT_MS: u64 = 600_000;

/// One event, as its stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The stream entry id (`ms-seq`): what `Last-Event-ID` names.
    pub id: String,
    /// The caller's key (for `flush`: the pattern flushed).
    pub key: String,
    pub op: String,
    /// When, Unix milliseconds.
    pub at_ms: u64,
}

/// The stream of `tenant`'s events.
pub fn stream_key(tenant: &str) -> String {
    format!("e:{{{tenant}}}")
}

fn listening_key(tenant: &str) -> String {
    format!("e:{{{tenant}}}:on")
}

/// Marks `tenant` as listened to (for [`LISTENING_MS`]): from now on its
/// changes are written to its stream.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn listen(redis_store: &RedisStore, tenant: &TenantId) -> Result<(), Error> {
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let () = redis::pipe()
                .cmd("SET")
                .arg(listening_key(tenant.as_str()))
                .arg(1)
                .arg("PX")
                .arg(LISTENING_MS)
                .ignore()
                .cmd("PEXPIRE")
                .arg(stream_key(tenant.as_str()))
                .arg(STREAM_KEPT_MS)
                .ignore()
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
}

/// The id of `tenant`'s newest event (`0-0` when there is none).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn last_id(redis_store: &RedisStore, tenant: &TenantId) -> Result<String, Error> {
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let newest: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
                .arg(stream_key(tenant.as_str()))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            Ok(newest
                .into_iter()
                .next()
                .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
        })
        .await
}

/// What a resumption found: the events after the given id, and whether
/// some between may have been dropped from the buffer already (the client
/// must then start over: a `reset`).
#[derive(Debug, Default)]
pub struct Replay {
    pub events: Vec<Event>,
    pub gap: bool,
}

/// `tenant`'s events after `after` (at most [`BUFFERED`]).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn replay(
    redis_store: &RedisStore,
    tenant: &TenantId,
    after: &str,
) -> Result<Replay, Error> {
    let Some(after_id) = StreamId::parse(after) else {
        // Not an id this service gave: nothing to resume from.
        return Ok(Replay {
            events: Vec::new(),
            gap: true,
        });
    };
    let stream = stream_key(tenant.as_str());
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let exists: bool = redis::cmd("EXISTS")
                .arg(&stream)
                .query_async(&mut conn)
                .await?;
            if !exists {
                return Ok(Replay {
                    events: Vec::new(),
                    gap: after_id != StreamId::ZERO,
                });
            }
            let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&stream)
                .query_async(&mut conn)
                .await?;
            let number = |name: &str| {
                info.get(name)
                    .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                    .unwrap_or(0)
            };
            let id_of = |name: &str| {
                info.get(name)
                    .and_then(|v| match v {
                        redis::Value::Array(entry) => entry.first().cloned(),
                        other => Some(other.clone()),
                    })
                    .and_then(|v| redis::from_redis_value::<String>(v).ok())
                    .and_then(|id| StreamId::parse(&id))
            };
            // Trimming drops the oldest entries: if any were dropped and the
            // client's last one is older than the oldest kept, some it never
            // saw may be among them.
            let trimmed = number("entries-added") > number("length");
            let oldest = id_of("first-entry").or_else(|| id_of("last-generated-id"));
            let gap = trimmed && oldest.is_some_and(|oldest| after_id < oldest);
            let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(BUFFERED)
                .query_async(&mut conn)
                .await?;
            Ok(Replay {
                events: entries.into_iter().filter_map(parse_entry).collect(),
                gap,
            })
        })
        .await
}

/// Appends an event the scripts do not write (a flush) to `tenant`'s
/// stream, if anyone listens.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn emit(
    redis_store: &RedisStore,
    tenant: &TenantId,
    key: &str,
    op: &str,
) -> Result<(), Error> {
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            emit_on(&mut conn, tenant.as_str(), key, op).await
        })
        .await
}

/// [`emit`] for every tenant someone listens to (a flush of every tenant).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn emit_everywhere(redis_store: &RedisStore, key: &str, op: &str) -> Result<(), Error> {
    let mut listened = Vec::new();
    let mut pages =
        crate::redis::ScanPages::new(redis_store, "e:{*}:on", 1000, redis_store.command_timeout());
    while let Some(page) = pages.next(async |_, keys| Ok(keys)).await? {
        listened.extend(page);
    }
    for mark in listened {
        let Some(tenant) = mark
            .strip_prefix("e:{")
            .and_then(|rest| rest.strip_suffix("}:on"))
        else {
            continue;
        };
        redis_store
            .timed(async {
                let mut conn = redis_store.conn().await?;
                emit_on(&mut conn, tenant, key, op).await
            })
            .await?;
    }
    Ok(())
}

/// [`emit`] on a connection the caller holds (and times).
///
/// # Errors
///
/// Redis errors.
pub async fn emit_on(
    conn: &mut impl redis::aio::ConnectionLike,
    tenant: &str,
    key: &str,
    op: &str,
) -> Result<(), Error> {
    let _: Option<String> = EMIT
        .prepare_invoke()
        .key(listening_key(tenant))
        .key(stream_key(tenant))
        .arg(BUFFERED)
        .arg(key)
        .arg(op)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// KEYS: the listening mark, the stream. ARGV: events kept, key, op.
static EMIT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'k', ARGV[2], 'o', ARGV[3], 'a', now)
",
    )
});

/// Waits up to `block_ms` for `tenant`'s events after `after` (on a
/// connection of the caller's own: the wait blocks it).
///
/// # Errors
///
/// Redis errors.
pub async fn read_after(
    conn: &mut impl redis::aio::ConnectionLike,
    tenant: &str,
    after: &str,
    block_ms: u64,
) -> Result<Vec<Event>, Error> {
    type Streams = Vec<(String, Vec<(String, Vec<String>)>)>;
    let read: Option<Streams> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(BUFFERED)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(stream_key(tenant))
        .arg(after)
        .query_async(conn)
        .await?;
    Ok(read
        .into_iter()
        .flatten()
        .flat_map(|(_, entries)| entries)
        .filter_map(parse_entry)
        .collect())
}

fn parse_entry((id, fields): (String, Vec<String>)) -> Option<Event> {
    let mut event = Event {
        id,
        key: String::new(),
        op: String::new(),
        at_ms: 0,
    };
    for pair in fields.chunks(2) {
        match pair {
            [name, value] if name == "k" => event.key.clone_from(value),
            [name, value] if name == "o" => event.op.clone_from(value),
            [name, value] if name == "a" => event.at_ms = value.parse().ok()?,
            _ => {}
        }
    }
    (!event.op.is_empty()).then_some(event)
}

/// A stream entry id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId(u64, u64);

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl StreamId {
    pub const ZERO: Self = Self(0, 0);

    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_as_redis_orders_them() {
        let id = |t| StreamId::parse(t).unwrap();
        assert!(id("5-1") > id("5-0"));
        assert!(id("10-0") > id("9-99"));
        assert_eq!(StreamId::parse("0-0"), Some(StreamId::ZERO));
        assert!(StreamId::parse("x").is_none());
        assert!(StreamId::parse("1-").is_none());
        let parsed = parse_entry((
            "1-0".into(),
            ["k", "user:1", "o", "set", "a", "17"]
                .map(String::from)
                .to_vec(),
        ));
        assert_eq!(
            parsed,
            Some(Event {
                id: "1-0".into(),
                key: "user:1".into(),
                op: "set".into(),
                at_ms: 17
            })
        );
    }
}
