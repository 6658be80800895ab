//! How much each tenant stores (keys, and bytes = the caller's key bytes +
//! the value bytes as stored, less the expiry header), kept exact by the writes themselves, and the
//! quota check that refuses a write before anything is stored (API.md §9).
//!
//! # Accounting
//!
//! Every script that adds, replaces, re-times or removes a tenant's key
//! updates, in the same atomic step, the tenant's usage hash
//! (`q:{tenant}:usage`, fields `k` and `b`). Keys that expire on their own
//! are accounted ahead of time: a key written with an expiry is also added
//! to the expiry bucket of its absolute expiry time (10-second buckets in
//! `q:{tenant}:exp`, indexed by `q:{tenant}:expz`); once a bucket lies wholly
//! in the past, its keys are gone and it is subtracted from the usage
//! ("settled"), by the next write or read of the tenant's usage. Replacing,
//! deleting or re-timing a key takes it out of its old bucket first
//! (`PEXPIRETIME`), so a key is subtracted exactly once. Keys Redis evicts
//! under `maxmemory` (and keys written before accounting existed) are what
//! no script sees: [`reconcile`] recounts every tenant from its keys, and
//! the worker runs it when Redis reports evictions. Every accounted change
//! bumps the tenant's write counter (`w`), so a recount that raced a write
//! is dropped instead of applied.
//!
//! All these keys carry the tenant's hash tag, so they share a slot with
//! the tenant's values.

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};

use crate::codec::{EXPIRY_HEADER_BYTES, EXPIRY_HEADER_LUA};
use crate::error::Error;
use crate::keys::TenantId;
use crate::limits::TenantLimits;
use crate::redis::{RedisStore, ScanPages};

/// Width of an expiry bucket in milliseconds.
pub const BUCKET_MS: i64 = 10_000;

/// The usage hash, the expiry buckets and their index of one tenant.
#[derive(Debug, Clone)]
pub struct UsageKeys {
    pub usage: String,
    pub buckets: String,
    pub index: String,
}

impl UsageKeys {
    pub fn of(tenant: &TenantId) -> Self {
        Self::named(tenant.as_str())
    }

    fn named(tenant: &str) -> Self {
        Self {
            usage: format!("q:{{{tenant}}}:usage"),
            buckets: format!("q:{{{tenant}}}:exp"),
            index: format!("q:{{{tenant}}}:expz"),
        }
    }

    /// The accounting of one namespace of a tenant: the same three keys
    /// under `q:{tenant}:n:{prefix}` (fixed endings, so no two prefixes
    /// share a key).
    pub fn of_namespace(tenant: &str, prefix: &str) -> Self {
        Self {
            usage: format!("q:{{{tenant}}}:n:{prefix}:usage"),
            buckets: format!("q:{{{tenant}}}:n:{prefix}:exp"),
            index: format!("q:{{{tenant}}}:n:{prefix}:expz"),
        }
    }
}

/// A tenant's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub keys: u64,
    pub bytes: u64,
}

/// Functions every accounting script starts with (after the codec's
/// [`EXPIRY_HEADER_LUA`]; sizes leave the header out). `plen` is the length
/// of the tenant's key prefix (`c:{tenant}:`), so `#key - plen` is the
/// caller's key length.
const LIBRARY: &str = r"
local BUCKET = 10000
local function bucket_of(at) return math.floor(at / BUCKET) end
local function add_to_bucket(x, xz, at, bytes, sign)
  if at <= 0 then return end
  local b = bucket_of(at)
  local left = redis.call('HINCRBY', x, b .. ':k', sign)
  redis.call('HINCRBY', x, b .. ':b', sign * bytes)
  if left <= 0 then
    redis.call('HDEL', x, b .. ':k', b .. ':b')
    redis.call('ZREM', xz, b)
  elseif sign > 0 and left == 1 then
    redis.call('ZADD', xz, b, b)
  end
end
-- Moves a key of `old_bytes` expiring at `old_at` to `new_at` with
-- `new_bytes`; within one bucket, only its byte count changes.
local function rebucket(x, xz, old_at, old_bytes, new_at, new_bytes)
  if old_at > 0 and new_at > 0 and bucket_of(old_at) == bucket_of(new_at) then
    if new_bytes ~= old_bytes then
      redis.call('HINCRBY', x, bucket_of(new_at) .. ':b', new_bytes - old_bytes)
    end
    return
  end
  add_to_bucket(x, xz, old_at, old_bytes, -1)
  add_to_bucket(x, xz, new_at, new_bytes, 1)
end
-- Subtracts the buckets wholly past from the usage, a second after their
-- end (the script's clock and the one Redis expires keys by may differ by
-- the script's own run time, so a key Redis still holds is never settled).
local function settle(u, x, xz, now)
  local due = redis.call('ZRANGEBYSCORE', xz, '-inf', bucket_of(now - 1000) - 1, 'LIMIT', 0, 256)
  local dk, db = 0, 0
  for _, b in ipairs(due) do
    local f = redis.call('HMGET', x, b .. ':k', b .. ':b')
    dk = dk + (tonumber(f[1]) or 0)
    db = db + (tonumber(f[2]) or 0)
    redis.call('HDEL', x, b .. ':k', b .. ':b')
    redis.call('ZREM', xz, b)
  end
  if dk ~= 0 then redis.call('HINCRBY', u, 'k', -dk) end
  if db ~= 0 then redis.call('HINCRBY', u, 'b', -db) end
end
local function usage(u)
  local f = redis.call('HMGET', u, 'k', 'b')
  return tonumber(f[1]) or 0, tonumber(f[2]) or 0
end
-- A tenant's event stream (see crate::events), from its usage key
-- `q:{t}:usage`: `e:{t}`, written only while someone listens (`e:{t}:on`).
local function events_of(u)
  local stream = 'e' .. string.sub(u, 2, -7)
  if redis.call('EXISTS', stream .. ':on') == 1 then return stream end
  return nil
end
local function emit(stream, key, plen, op, now)
  if stream then
    redis.call('XADD', stream, 'MAXLEN', '~', 1000, '*',
      'k', string.sub(key, plen + 1), 'o', op, 'a', now)
  end
end
-- Takes one present key out of the accounting; returns its size.
local function forget(u, x, xz, key, plen)
  local old = value_len(key)
  if old == 0 then return 0 end
  local size = #key - plen + old
  add_to_bucket(x, xz, redis.call('PEXPIRETIME', key), size, -1)
  return size
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{EXPIRY_HEADER_LUA}{LIBRARY}{body}"))
}

/// KEYS: usage, buckets, index, then the keys to write, then the usage,
/// buckets and index of each namespace they fall in. ARGV: max keys, max
/// bytes (0: unlimited), `1` to write only absent keys, prefix length, a
/// lease token (`''`: none; with one key only), the number of namespaces,
/// each namespace's key limit and what happens over it (0: nothing, 1:
/// refuse, 2: trim later), then per key its envelope, TTL in milliseconds
/// (0: none) and namespace (its 1-based position, 0: none); each value is
/// stored behind the expiry header of the instant its `PXAT` names. Keys
/// are distinct. Writes all or nothing: returns `{'ok', written, j…}` with
/// the positions of the namespaces now over their limit that nobody is
/// trimming yet (their trim marker is set for a minute), `{limit, quota, usage}` when
/// the batch would go over a quota, or `{'lease'}` when the token is not the
/// key's current lease (it expired, or the key was written or deleted
/// since: a delete ends the key's lease, a write makes the key exist). The
/// lease key is `l:` and the rest of the cache key (same hash tag).
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local u, x, xz = KEYS[1], KEYS[2], KEYS[3]
local max_keys, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local nx, plen, lease = ARGV[3] == '1', tonumber(ARGV[4]), ARGV[5]
local m = tonumber(ARGV[6])
local first = 7 + 2 * m
local n = (#ARGV - first + 1) / 3
local lease_key
if lease ~= '' then
  lease_key = 'l' .. string.sub(KEYS[4], 2)
  if redis.call('GET', lease_key) ~= lease or redis.call('EXISTS', KEYS[4]) == 1 then
    return {'lease'}
  end
end
local now = now_ms()
settle(u, x, xz, now)
local events = events_of(u)
-- Per namespace: its keys, and what the batch adds to it.
local ns = {}
for j = 1, m do
  local b = 3 + n + 3 * (j - 1)
  ns[j] = {u = KEYS[b + 1], x = KEYS[b + 2], xz = KEYS[b + 3],
           limit = tonumber(ARGV[5 + 2 * j]), mode = ARGV[6 + 2 * j], dk = 0, db = 0}
  settle(ns[j].u, ns[j].x, ns[j].xz, now)
end
local olds = {}
local dk, db = 0, 0
for i = 1, n do
  local a = first + 3 * (i - 1)
  local key, value, j = KEYS[i + 3], ARGV[a], tonumber(ARGV[a + 2])
  local old = value_len(key)
  olds[i] = old
  local ddk, ddb = 0, 0
  if old == 0 then
    ddk, ddb = 1, #key - plen + #value
  elseif not nx then
    ddb = #value - old
  end
  dk, db = dk + ddk, db + ddb
  if j > 0 then
    ns[j].dk, ns[j].db = ns[j].dk + ddk, ns[j].db + ddb
  end
end
local keys, bytes = usage(u)
if max_keys > 0 and dk > 0 and keys + dk > max_keys then
  return {'maxKeys', max_keys, keys}
end
if max_bytes > 0 and db > 0 and bytes + db > max_bytes then
  return {'maxBytes', max_bytes, bytes}
end
for j = 1, m do
  local c = ns[j]
  if c.mode == '1' and c.limit > 0 and c.dk > 0 then
    local held = usage(c.u)
    if held + c.dk > c.limit then return {'namespace.maxKeys', c.limit, held} end
  end
end
local written = 0
for i = 1, n do
  if not (nx and olds[i] > 0) then
    local a = first + 3 * (i - 1)
    local key, value, ttl, j = KEYS[i + 3], ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local old_at = -1
    if olds[i] > 0 then old_at = redis.call('PEXPIRETIME', key) end
    local at = -1
    if ttl > 0 then
      at = now + ttl
      redis.call('SET', key, expiry_header(at) .. value, 'PXAT', at)
    else
      redis.call('SET', key, expiry_header(0) .. value)
    end
    local before, after = #key - plen + olds[i], #key - plen + #value
    rebucket(x, xz, old_at, before, at, after)
    if j > 0 then rebucket(ns[j].x, ns[j].xz, old_at, before, at, after) end
    emit(events, key, plen, 'set', now)
    written = written + 1
  end
end
if dk ~= 0 then redis.call('HINCRBY', u, 'k', dk) end
if db ~= 0 then redis.call('HINCRBY', u, 'b', db) end
if written > 0 then redis.call('HINCRBY', u, 'w', 1) end
local answer = {'ok', written}
for j = 1, m do
  local c = ns[j]
  local held = 0
  if c.dk ~= 0 then held = redis.call('HINCRBY', c.u, 'k', c.dk) end
  if c.db ~= 0 then redis.call('HINCRBY', c.u, 'b', c.db) end
  if written > 0 then redis.call('HINCRBY', c.u, 'w', 1) end
  if c.mode == '2' and c.limit > 0 and held > c.limit
     and redis.call('SET', c.u .. ':trim', 1, 'NX', 'PX', 60000) then
    answer[#answer + 1] = j
  end
end
if lease_key then redis.call('DEL', lease_key) end
return answer
",
    )
});

/// The SHA1 of the write script, for benchmarks that run it alone with
/// `EVALSHA` (Redis has it once the service wrote a value).
pub fn write_script_sha() -> &'static str {
    WRITE.get_hash()
}

/// KEYS: usage, buckets, index, then the keys, then the usage, buckets and
/// index of each namespace they fall in. ARGV: prefix length, the number of
/// namespaces, the event the removal is (`delete`, or `evicted` for a
/// trim), then per key its namespace (1-based, 0: none). Removes the keys
/// and ends their leases (see [`WRITE`]); returns how many existed.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local u, x, xz, plen = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1])
local m, op = tonumber(ARGV[2]), ARGV[3]
local n = #ARGV - 3
local now = now_ms()
settle(u, x, xz, now)
local events = events_of(u)
local ns = {}
for j = 1, m do
  local b = 3 + n + 3 * (j - 1)
  ns[j] = {u = KEYS[b + 1], x = KEYS[b + 2], xz = KEYS[b + 3], dk = 0, db = 0}
  settle(ns[j].u, ns[j].x, ns[j].xz, now)
end
local dk, db = 0, 0
for i = 1, n do
  local key, j = KEYS[i + 3], tonumber(ARGV[i + 3])
  local at = redis.call('PEXPIRETIME', key)
  local size = forget(u, x, xz, key, plen)
  redis.call('DEL', 'l' .. string.sub(key, 2))
  if size > 0 then
    redis.call('UNLINK', key)
    emit(events, key, plen, op, now)
    dk = dk + 1
    db = db + size
    if j > 0 then
      local c = ns[j]
      add_to_bucket(c.x, c.xz, at, size, -1)
      c.dk, c.db = c.dk + 1, c.db + size
    end
  end
end
if dk ~= 0 then
  redis.call('HINCRBY', u, 'k', -dk)
  redis.call('HINCRBY', u, 'b', -db)
  redis.call('HINCRBY', u, 'w', 1)
end
for j = 1, m do
  local c = ns[j]
  if c.dk ~= 0 then
    redis.call('HINCRBY', c.u, 'k', -c.dk)
    redis.call('HINCRBY', c.u, 'b', -c.db)
    redis.call('HINCRBY', c.u, 'w', 1)
  end
end
return dk
",
    )
});

/// KEYS: usage, buckets, index, key, then the usage, buckets and index of
/// its namespace if it has one. ARGV: prefix length, TTL in milliseconds
/// (0: no expiry). Sets the key's expiry and its value's expiry header
/// together. Returns 1 when the key exists.
static RETIME: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local u, x, xz, key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local nx, nxz = KEYS[6], KEYS[7]
local plen, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
settle(u, x, xz, now)
if nx then settle(KEYS[5], nx, nxz, now) end
local old_at = redis.call('PEXPIRETIME', key)
local size = forget(u, x, xz, key, plen)
if size == 0 then return 0 end
local at = 0
if ttl > 0 then
  at = now + ttl
  redis.call('PEXPIREAT', key, at)
  add_to_bucket(x, xz, at, size, 1)
else
  redis.call('PERSIST', key)
end
if nx then
  rebucket(nx, nxz, old_at, size, at, size)
  redis.call('HINCRBY', KEYS[5], 'w', 1)
end
if redis.call('GETRANGE', key, 0, 0) == 'T' then
  redis.call('SETRANGE', key, 1, struct.pack('>I8', at))
end
emit(events_of(u), key, plen, 'expire', now)
redis.call('HINCRBY', u, 'w', 1)
return 1
",
    )
});

/// KEYS: usage, buckets, index, key, then the usage, buckets and index of
/// its namespace if it has one. ARGV: prefix length, the bytes expected at
/// the key, the bytes to store (with the expected bytes' expiry header).
/// Replaces the value, keeping its TTL, only if it is still the expected
/// one; returns 1 when replaced.
static COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local u, x, xz, key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local plen = tonumber(ARGV[1])
if redis.call('GET', key) ~= ARGV[2] then return 0 end
local at = redis.call('PEXPIRETIME', key)
local klen = #key - plen
local before = value_len(key)
redis.call('SET', key, ARGV[3], 'KEEPTTL')
local after = value_len(key)
rebucket(x, xz, at, klen + before, at, klen + after)
local db = after - before
if db ~= 0 then redis.call('HINCRBY', u, 'b', db) end
redis.call('HINCRBY', u, 'w', 1)
if KEYS[5] then
  rebucket(KEYS[6], KEYS[7], at, klen + before, at, klen + after)
  if db ~= 0 then redis.call('HINCRBY', KEYS[5], 'b', db) end
  redis.call('HINCRBY', KEYS[5], 'w', 1)
end
return 1
",
    )
});

/// KEYS: usage, buckets, index. Settles past buckets; returns `{keys, bytes}`.
static READ: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
settle(KEYS[1], KEYS[2], KEYS[3], now_ms())
local k, b = usage(KEYS[1])
return {k, b}
",
    )
});

/// ARGV: cursor, pattern, page size, time budget in microseconds, most
/// keys examined. One step of a flush inside Redis: `SCAN` pages and the
/// `UNLINK` of what they found, each key taken out of its tenant's
/// accounting, until the cursor is done, the budget is spent or `most` keys
/// were examined, whichever comes first. The budget is what bounds the wait
/// of any other command queued behind the step, however sparse the
/// pattern's keys are in the keyspace (a sparse tenant costs many pages per
/// key found); `most` bounds it where `TIME` does not move inside a script.
/// Returns the next cursor, the keys removed and the keys examined. A
/// tenant's pattern stays inside its hash tag, so under Redis Cluster the
/// step touches one slot.
pub static SCAN_UNLINK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local cursor, pattern, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local budget, most = tonumber(ARGV[4]), tonumber(ARGV[5])
local function clock_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local started = clock_us()
-- Per tenant: keys, bytes, and per expiry bucket its keys and bytes, so
-- each tenant's accounting is changed once per step, not once per key.
local changes = {}
local removed, examined = 0, 0
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', count)
  cursor = page[1]
  local keys = page[2]
  examined = examined + math.max(count, #keys)
  for _, key in ipairs(keys) do
    local tenant = string.match(key, '^c:{([^}]*)}:')
    if tenant then
      local old = value_len(key)
      if old > 0 then
        local c = changes[tenant]
        if not c then
          c = {0, 0, {}}
          changes[tenant] = c
        end
        local size = #key - #tenant - 5 + old
        c[1] = c[1] + 1
        c[2] = c[2] + size
        local at = redis.call('PEXPIRETIME', key)
        if at > 0 then
          local b = bucket_of(at)
          local e = c[3][b]
          if not e then
            e = {0, 0}
            c[3][b] = e
          end
          e[1] = e[1] + 1
          e[2] = e[2] + size
        end
      end
    end
  end
  for i = 1, #keys, 500 do
    removed = removed + redis.call('UNLINK', unpack(keys, i, math.min(i + 499, #keys)))
  end
until cursor == '0' or examined >= most or clock_us() - started >= budget
for tenant, c in pairs(changes) do
  local u, x, xz = 'q:{' .. tenant .. '}:usage', 'q:{' .. tenant .. '}:exp', 'q:{' .. tenant .. '}:expz'
  redis.call('HINCRBY', u, 'k', -c[1])
  redis.call('HINCRBY', u, 'b', -c[2])
  redis.call('HINCRBY', u, 'w', 1)
  for b, e in pairs(c[3]) do
    local left = redis.call('HINCRBY', x, b .. ':k', -e[1])
    redis.call('HINCRBY', x, b .. ':b', -e[2])
    if left <= 0 then
      redis.call('HDEL', x, b .. ':k', b .. ':b')
      redis.call('ZREM', xz, b)
    end
  end
end
return {cursor, removed, examined}
",
    )
});

/// KEYS: usage, buckets, index. ARGV: the write counter seen before the
/// recount (`''`: none), keys, bytes, then per bucket its number, keys and
/// bytes. Replaces the accounting with the recount unless a write came in
/// meanwhile; returns 1 when applied.
static APPLY_RECOUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local u, x, xz = KEYS[1], KEYS[2], KEYS[3]
if (redis.call('HGET', u, 'w') or '') ~= ARGV[1] then return 0 end
redis.call('DEL', x, xz)
redis.call('HSET', u, 'k', ARGV[2], 'b', ARGV[3])
for i = 4, #ARGV, 3 do
  local b = ARGV[i]
  redis.call('HSET', x, b .. ':k', ARGV[i + 1], b .. ':b', ARGV[i + 2])
  redis.call('ZADD', xz, b, b)
end
return 1
",
    )
});

/// Set once usage (tenants' and namespaces') has been counted from the
/// keys on this Redis; removed to ask the worker for a recount (after a
/// namespace change or a flush, which no script accounts per namespace).
pub const COUNTED_MARKER: &str = "q:{_platform}:counted:namespaces";

/// Asks the worker for a recount of every account from the keys (see
/// [`COUNTED_MARKER`]).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn request_recount(redis_store: &RedisStore) -> Result<(), Error> {
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let () = redis::cmd("DEL")
                .arg(COUNTED_MARKER)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
}

/// Empties the accounts of `tenant`'s namespaces `prefixes` (after a flush
/// of all its keys, which the flush's script accounts per tenant only).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn forget_namespaces(
    redis_store: &RedisStore,
    tenant: &TenantId,
    prefixes: &[String],
) -> Result<(), Error> {
    if prefixes.is_empty() {
        return Ok(());
    }
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let mut del = redis::cmd("DEL");
            for prefix in prefixes {
                let keys = UsageKeys::of_namespace(tenant.as_str(), prefix);
                del.arg(keys.usage).arg(keys.buckets).arg(keys.index);
            }
            let () = del.query_async(&mut conn).await?;
            Ok(())
        })
        .await
}

/// What one [`reconcile`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Tenants whose accounting was replaced by their recount.
    pub tenants: u64,
    /// Namespaces whose accounting was replaced by their recount.
    pub namespaces: u64,
    /// Tenants written to during the pass, left for the next one.
    pub raced: u64,
    /// Keys walked.
    pub keys: u64,
}

/// Keys, bytes and expiry buckets counted from the keys themselves, with
/// the write counter seen before counting (`None`: none yet).
#[derive(Debug, Default)]
struct Recount {
    seen: Option<String>,
    keys: u64,
    bytes: u64,
    buckets: std::collections::HashMap<i64, (u64, u64)>,
}

impl Recount {
    fn add(&mut self, size: u64, expires_at: i64) {
        self.keys += 1;
        self.bytes += size;
        if expires_at > 0 {
            let bucket = self.buckets.entry(expires_at / BUCKET_MS).or_default();
            bucket.0 += 1;
            bucket.1 += size;
        }
    }

    /// Replaces the accounting at `keys` with this recount unless a write
    /// came in since `seen`; `true` when applied.
    async fn apply(
        self,
        redis_store: &RedisStore,
        keys: &UsageKeys,
        step_timeout: std::time::Duration,
    ) -> Result<bool, Error> {
        let mut invocation = APPLY_RECOUNT.prepare_invoke();
        invocation
            .key(&keys.usage)
            .key(&keys.buckets)
            .key(&keys.index)
            .arg(self.seen.unwrap_or_default())
            .arg(self.keys)
            .arg(self.bytes);
        for (bucket, (k, b)) in &self.buckets {
            invocation.arg(*bucket).arg(*k).arg(*b);
        }
        let applied: i64 = redis_store
            .timed_for(step_timeout, async {
                let mut conn = redis_store.conn().await?;
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        Ok(applied == 1)
    }
}

/// Recounts every tenant's keys and bytes, and those of each of its
/// namespaces as `namespaces` defines them, from the stored keys (a walk of
/// the whole keyspace, `batch` keys a step) and replaces the accounting
/// with the recount, expiry buckets included; an account written to during
/// the walk keeps its accounting (see the module docs).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn reconcile(
    redis_store: &RedisStore,
    namespaces: &crate::namespaces::NamespaceBook,
    batch: usize,
    step_timeout: std::time::Duration,
) -> Result<Reconciled, Error> {
    use std::collections::HashMap;
    use std::sync::Arc;

    let mut tenants: HashMap<String, Recount> = HashMap::new();
    // The write counters first: a write after this point makes the recount stale.
    walk(
        redis_store,
        "q:{*}:usage",
        batch,
        step_timeout,
        async |conn, keys| {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.hget(key, "w");
            }
            let counters: Vec<Option<String>> = pipe.query_async(conn).await?;
            Ok(keys.into_iter().zip(counters).collect::<Vec<_>>())
        },
    )
    .await?
    .into_iter()
    .filter_map(|(key, w)| Some((usage_tenant(&key)?.to_owned(), w)))
    .for_each(|(tenant, w)| {
        tenants.entry(tenant).or_default().seen = Some(w.unwrap_or_default());
    });
    // Each known tenant's namespaces and their write counters, before the walk.
    let mut sets: HashMap<String, Arc<crate::namespaces::NamespaceSet>> = HashMap::new();
    let mut spaces: HashMap<(String, String), Recount> = HashMap::new();
    for tenant in tenants.keys() {
        let set = namespaces.of(tenant);
        let prefixes: Vec<String> = set.listed().into_iter().map(|ns| ns.prefix).collect();
        let counters: Vec<Option<String>> = redis_store
            .timed_for(step_timeout, async {
                let mut conn = redis_store.conn().await?;
                let mut pipe = redis::pipe();
                for prefix in &prefixes {
                    pipe.hget(UsageKeys::of_namespace(tenant, prefix).usage, "w");
                }
                Ok(pipe.query_async(&mut conn).await?)
            })
            .await?;
        for (prefix, w) in prefixes.into_iter().zip(counters) {
            let recount = Recount {
                seen: Some(w.unwrap_or_default()),
                ..Recount::default()
            };
            spaces.insert((tenant.clone(), prefix), recount);
        }
        sets.insert(tenant.clone(), set);
    }
    let mut walked = 0u64;
    let sizes = walk(
        redis_store,
        "c:{*}:*",
        batch,
        step_timeout,
        async |conn, keys| {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.strlen(key)
                    .cmd("PEXPIRETIME")
                    .arg(key)
                    .getrange(key, 0, 0);
            }
            let answers: Vec<(u64, i64, Vec<u8>)> = pipe.query_async(conn).await?;
            Ok(keys.into_iter().zip(answers).collect::<Vec<_>>())
        },
    )
    .await?;
    for (key, (stored, expires_at, first)) in sizes {
        walked += 1;
        let Some(tenant) = tenant_of(&key) else {
            continue;
        };
        if stored == 0 {
            continue; // gone since the page was read
        }
        let header = if first == b"T" && stored > EXPIRY_HEADER_BYTES as u64 {
            EXPIRY_HEADER_BYTES as u64
        } else {
            0
        };
        let user_key_len = key.len() - tenant.len() - 5;
        let size = user_key_len as u64 + stored - header;
        tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| Recount {
                seen: Some(String::new()),
                ..Recount::default()
            })
            .add(size, expires_at);
        let set = sets
            .entry(tenant.to_owned())
            .or_insert_with(|| namespaces.of(tenant));
        if let Some(ns) = set.find(&key[key.len() - user_key_len..]) {
            spaces
                .entry((tenant.to_owned(), ns.prefix.clone()))
                .or_insert_with(|| Recount {
                    seen: Some(String::new()),
                    ..Recount::default()
                })
                .add(size, expires_at);
        }
    }
    let mut done = Reconciled {
        keys: walked,
        ..Reconciled::default()
    };
    for (tenant, recount) in tenants {
        if recount
            .apply(redis_store, &UsageKeys::named(&tenant), step_timeout)
            .await?
        {
            done.tenants += 1;
        } else {
            done.raced += 1;
        }
    }
    for ((tenant, prefix), recount) in spaces {
        let keys = UsageKeys::of_namespace(&tenant, &prefix);
        if recount.apply(redis_store, &keys, step_timeout).await? {
            done.namespaces += 1;
        } else {
            done.raced += 1;
        }
    }
    Ok(done)
}

/// Walks the keys matching `pattern`, reading each page with `read`.
async fn walk<T>(
    redis_store: &RedisStore,
    pattern: &str,
    batch: usize,
    step_timeout: std::time::Duration,
    read: impl AsyncFn(&mut crate::redis::Conn, Vec<String>) -> Result<Vec<T>, Error>,
) -> Result<Vec<T>, Error> {
    let mut pages = ScanPages::new(redis_store, pattern, batch, step_timeout);
    let mut found = Vec::new();
    while let Some(page) = pages
        .next(async |conn, keys| read(conn, keys).await)
        .await?
    {
        found.extend(page);
    }
    Ok(found)
}

/// The tenant of a usage hash `q:{tenant}:usage` (not a namespace's,
/// `q:{tenant}:n:{prefix}:usage`, which the same pattern can match).
fn usage_tenant(key: &str) -> Option<&str> {
    let tenant = key.strip_prefix("q:{")?.strip_suffix("}:usage")?;
    (!tenant.contains(['{', '}', ':'])).then_some(tenant)
}

/// Length of `c:{tenant}:`.
fn prefix_len(tenant: &TenantId) -> usize {
    tenant.as_str().len() + 5
}

fn with_usage_keys(invocation: &mut redis::ScriptInvocation<'_>, tenant: &TenantId) {
    let keys = UsageKeys::of(tenant);
    invocation.key(keys.usage).key(keys.buckets).key(keys.index);
}

/// The namespace a key falls in, as its accounting needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InNamespace<'a> {
    pub prefix: &'a str,
    /// Keys the namespace may hold (0: unlimited).
    pub max_keys: u64,
    /// Whether a write beyond is refused (else it is trimmed afterwards).
    pub reject: bool,
}

impl<'a> InNamespace<'a> {
    /// How a key of `namespace` is accounted.
    pub fn of(namespace: &'a crate::namespaces::Namespace) -> Self {
        Self {
            prefix: &namespace.prefix,
            max_keys: namespace.max_keys,
            reject: namespace.over_limit == crate::namespaces::OverLimit::Reject,
        }
    }

    /// Only the prefix: for accounting that checks no limit.
    fn prefix(prefix: &'a str) -> Self {
        Self {
            prefix,
            max_keys: 0,
            reject: false,
        }
    }

    /// The script's mode: 0 no limit, 1 refuse, 2 trim later.
    fn mode(&self) -> u8 {
        match (self.max_keys, self.reject) {
            (0, _) => 0,
            (_, true) => 1,
            (_, false) => 2,
        }
    }
}

/// Where writes ask for a namespace to be trimmed back under its
/// `maxKeys`: a list of `tenant\nprefix` the worker drains (each namespace
/// once a minute at most, by its trim marker). Outside every tenant's slot,
/// written after the script.
pub const TRIM_REQUESTS: &str = "q:{_platform}:namespace-trims";

/// Most trim requests waiting: beyond, the oldest are dropped (their
/// namespaces ask again on their next write after the marker expires).
const TRIM_REQUESTS_KEPT: isize = 10_000;

/// One key to write: its Redis key, its envelope (tag and payload: the
/// script puts the expiry header before it), TTL in milliseconds (0: none)
/// and namespace.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    pub redis_key: &'a str,
    pub stored: &'a [u8],
    pub ttl_ms: u64,
    pub namespace: Option<InNamespace<'a>>,
}

/// The distinct namespaces of `items` (each once) and each item's 1-based
/// position among them (0: none), as the scripts take them.
fn namespace_slots<'a>(
    items: impl Iterator<Item = Option<InNamespace<'a>>>,
) -> (Vec<InNamespace<'a>>, Vec<usize>) {
    let mut distinct: Vec<InNamespace<'a>> = Vec::new();
    let slots = items
        .map(|ns| {
            ns.map_or(0, |ns| {
                match distinct.iter().position(|d| d.prefix == ns.prefix) {
                    Some(at) => at + 1,
                    None => {
                        distinct.push(ns);
                        distinct.len()
                    }
                }
            })
        })
        .collect();
    (distinct, slots)
}

fn with_namespace_keys(
    invocation: &mut redis::ScriptInvocation<'_>,
    tenant: &TenantId,
    prefix: &str,
) {
    let keys = UsageKeys::of_namespace(tenant.as_str(), prefix);
    invocation.key(keys.usage).key(keys.buckets).key(keys.index);
}

/// Writes `items` (distinct keys) into `tenant` all or nothing, or none
/// when the tenant's quota would be exceeded; `only_absent` writes only the
/// keys that do not exist. Returns how many keys were written.
///
/// Runs on `conn`: the caller times it.
///
/// # Errors
///
/// [`Error::QuotaExceeded`] (nothing written), Redis errors.
pub async fn write(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    limits: &TenantLimits,
    items: &[Write<'_>],
    only_absent: bool,
) -> Result<u64, Error> {
    write_leased(conn, tenant, limits, items, only_absent, "").await
}

/// [`write`] of one key with the lease token a read handed out (`""`: none).
///
/// # Errors
///
/// [`Error::Conflict`] when the token is no longer the key's lease (nothing
/// written), and those of [`write`].
pub async fn write_leased(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    limits: &TenantLimits,
    items: &[Write<'_>],
    only_absent: bool,
    lease: &str,
) -> Result<u64, Error> {
    let (namespaces, slots) = namespace_slots(items.iter().map(|item| item.namespace));
    let mut invocation = WRITE.prepare_invoke();
    with_usage_keys(&mut invocation, tenant);
    invocation
        .arg(limits.max_keys)
        .arg(limits.max_bytes)
        .arg(u8::from(only_absent))
        .arg(prefix_len(tenant))
        .arg(lease)
        .arg(namespaces.len());
    for ns in &namespaces {
        invocation.arg(ns.max_keys).arg(ns.mode());
    }
    for (item, slot) in items.iter().zip(&slots) {
        invocation
            .key(item.redis_key)
            .arg(item.stored)
            .arg(item.ttl_ms)
            .arg(*slot);
    }
    for ns in &namespaces {
        with_namespace_keys(&mut invocation, tenant, ns.prefix);
    }
    let answer: Vec<redis::Value> = invocation.invoke_async(conn).await?;
    match answer.first() {
        Some(redis::Value::BulkString(ok)) if ok == b"ok" => {
            let written: u64 = answer
                .get(1)
                .map(|n| redis::from_redis_value(n.clone()))
                .transpose()?
                .unwrap_or(0);
            let over: Vec<usize> = answer[2..]
                .iter()
                .map(|j| redis::from_redis_value(j.clone()))
                .collect::<Result<_, _>>()?;
            if !over.is_empty() {
                let mut pipe = redis::pipe();
                for j in over {
                    if let Some(ns) = j.checked_sub(1).and_then(|at| namespaces.get(at)) {
                        pipe.lpush(TRIM_REQUESTS, format!("{tenant}\n{}", ns.prefix))
                            .ignore();
                    }
                }
                pipe.ltrim(TRIM_REQUESTS, 0, TRIM_REQUESTS_KEPT - 1)
                    .ignore();
                let () = pipe.query_async(conn).await?;
            }
            Ok(written)
        }
        _ if answer.len() == 1 => Err(Error::Conflict(
            "the lease token is no longer current: the key was written or deleted since, or \
             the lease expired; nothing stored"
                .into(),
        )),
        _ => {
            let (limit, quota, usage): (String, u64, u64) =
                redis::from_redis_value(redis::Value::Array(answer))?;
            Err(Error::QuotaExceeded {
                limit: match limit.as_str() {
                    "maxKeys" => "maxKeys",
                    "namespace.maxKeys" => "namespace.maxKeys",
                    _ => "maxBytes",
                },
                quota,
                usage,
            })
        }
    }
}

/// Removes keys of `tenant` (each with its namespace); returns how many existed.
///
/// # Errors
///
/// Redis errors.
pub async fn delete(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    redis_keys: &[(&str, Option<&str>)],
) -> Result<u64, Error> {
    remove(conn, tenant, redis_keys, "delete").await
}

/// [`delete`] of keys the service evicts (a namespace's trim): the event
/// listeners see says `evicted`.
///
/// # Errors
///
/// Redis errors.
pub async fn evict(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    redis_keys: &[(&str, Option<&str>)],
) -> Result<u64, Error> {
    remove(conn, tenant, redis_keys, "evicted").await
}

async fn remove(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    redis_keys: &[(&str, Option<&str>)],
    event: &str,
) -> Result<u64, Error> {
    let (namespaces, slots) = namespace_slots(
        redis_keys
            .iter()
            .map(|(_, prefix)| prefix.map(InNamespace::prefix)),
    );
    let mut invocation = DELETE.prepare_invoke();
    with_usage_keys(&mut invocation, tenant);
    invocation
        .arg(prefix_len(tenant))
        .arg(namespaces.len())
        .arg(event);
    for ((key, _), slot) in redis_keys.iter().zip(&slots) {
        invocation.key(*key).arg(*slot);
    }
    for ns in &namespaces {
        with_namespace_keys(&mut invocation, tenant, ns.prefix);
    }
    Ok(invocation.invoke_async(conn).await?)
}

/// Gives an existing key of `tenant` (in namespace `prefix`, if any) a new
/// TTL in milliseconds (0: none); `false` when the key does not exist.
///
/// # Errors
///
/// Redis errors.
pub async fn retime(
    conn: &mut crate::redis::Conn,
    tenant: &TenantId,
    redis_key: &str,
    prefix: Option<&str>,
    ttl_ms: u64,
) -> Result<bool, Error> {
    let mut invocation = RETIME.prepare_invoke();
    with_usage_keys(&mut invocation, tenant);
    invocation
        .key(redis_key)
        .arg(prefix_len(tenant))
        .arg(ttl_ms);
    if let Some(prefix) = prefix {
        with_namespace_keys(&mut invocation, tenant, prefix);
    }
    let found: i64 = invocation.invoke_async(conn).await?;
    Ok(found == 1)
}

/// Replaces `expected` by `replacement` at `redis_key` (TTL kept) if it is
/// still there; `true` when replaced. `redis_key` must be a cache key
/// (`c:{tenant}:…`).
///
/// # Errors
///
/// [`Error::Internal`] for a key outside every tenant, Redis errors.
pub async fn compare_and_set(
    conn: &mut crate::redis::Conn,
    redis_key: &str,
    prefix: Option<&str>,
    expected: &[u8],
    replacement: &[u8],
) -> Result<bool, Error> {
    let tenant = tenant_of(redis_key)
        .ok_or_else(|| Error::internal(format!("'{redis_key}' is not a tenant's key")))?;
    let keys = UsageKeys::named(tenant);
    let mut invocation = COMPARE_AND_SET.prepare_invoke();
    invocation
        .key(keys.usage)
        .key(keys.buckets)
        .key(keys.index)
        .key(redis_key)
        .arg(tenant.len() + 5)
        .arg(expected)
        .arg(replacement);
    if let Some(prefix) = prefix {
        let ns = UsageKeys::of_namespace(tenant, prefix);
        invocation.key(ns.usage).key(ns.buckets).key(ns.index);
    }
    let replaced: i64 = invocation.invoke_async(conn).await?;
    Ok(replaced == 1)
}

/// The tenant of a cache key `c:{tenant}:…`.
fn tenant_of(redis_key: &str) -> Option<&str> {
    let rest = redis_key.strip_prefix("c:{")?;
    let end = rest.find("}:")?;
    Some(&rest[..end])
}

/// `tenant`'s usage now (past expiry buckets settled first).
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn usage(redis_store: &RedisStore, tenant: &TenantId) -> Result<Usage, Error> {
    read_usage(redis_store, &UsageKeys::of(tenant)).await
}

/// The usage of `tenant`'s namespace `prefix` now: its keys and bytes.
///
/// # Errors
///
/// [`Error::CacheUnavailable`].
pub async fn namespace_usage(
    redis_store: &RedisStore,
    tenant: &TenantId,
    prefix: &str,
) -> Result<Usage, Error> {
    read_usage(
        redis_store,
        &UsageKeys::of_namespace(tenant.as_str(), prefix),
    )
    .await
}

async fn read_usage(redis_store: &RedisStore, keys: &UsageKeys) -> Result<Usage, Error> {
    redis_store
        .timed(async {
            let mut conn = redis_store.conn().await?;
            let mut invocation = READ.prepare_invoke();
            invocation
                .key(&keys.usage)
                .key(&keys.buckets)
                .key(&keys.index);
            let (keys, bytes): (i64, i64) = invocation.invoke_async(&mut conn).await?;
            Ok(Usage {
                keys: u64::try_from(keys).unwrap_or(0),
                bytes: u64::try_from(bytes).unwrap_or(0),
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_of_a_cache_key() {
        assert_eq!(tenant_of("c:{acme}:user:1"), Some("acme"));
        assert_eq!(tenant_of("c:{acme}:"), Some("acme"));
        assert_eq!(tenant_of("s:{_platform}:x"), None);
        assert_eq!(tenant_of("c:{acme"), None);
    }
}
