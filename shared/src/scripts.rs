//! Lua scripts that keep an entry and its indexes consistent in one step,
//! and read a bounded batch in one.
//!
//! All keys a script touches carry the `{_platform}` hash tag, so they share one
//! slot: scripts stay valid under Redis Cluster even where they derive index
//! keys from stored fields instead of receiving them in `KEYS`.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

use crate::codec::EXPIRY_HEADER_LUA;

/// Shared helper: make an index live at least as long as an entry with `ttl`
/// (0: forever). `existed` tells a fresh set (no TTL yet) from a persistent one.
const EXTEND_INDEX: &str = r"
local function extend(idx, ttl, existed)
  if ttl == 0 then
    redis.call('PERSIST', idx)
  elseif existed == 0 then
    redis.call('EXPIRE', idx, ttl)
  else
    local current = redis.call('TTL', idx)
    if current >= 0 and current < ttl then
      redis.call('EXPIRE', idx, ttl)
    end
  end
end
local function index(idx, member, ttl)
  local existed = redis.call('EXISTS', idx)
  redis.call('SADD', idx, member)
  extend(idx, ttl, existed)
end
";

/// KEYS: session, user index, tenant index.
/// ARGV: session id, user id, tenant id, ttl (0: none), encoded data,
/// user index prefix, tenant index prefix.
/// Moves the session out of a previous owner's indexes when it changes hands.
pub static SESSION_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{EXTEND_INDEX}
local old = redis.call('HMGET', KEYS[1], 'u', 't')
if old[1] and old[1] ~= ARGV[2] then redis.call('SREM', ARGV[6] .. old[1], ARGV[1]) end
if old[2] and old[2] ~= ARGV[3] then redis.call('SREM', ARGV[7] .. old[2], ARGV[1]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'u', ARGV[2], 't', ARGV[3], 'ttl', ARGV[4], 'd', ARGV[5])
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
index(KEYS[2], ARGV[1], ttl)
index(KEYS[3], ARGV[1], ttl)
return 1
"
    ))
});

/// KEYS: session. ARGV: session id, user index prefix, tenant index prefix,
/// touch flag (`1`: reset the TTL to the one stored with the session).
/// Returns `[user, tenant, stored ttl, data, remaining ttl]` or nil.
pub static SESSION_GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{EXTEND_INDEX}
local f = redis.call('HMGET', KEYS[1], 'u', 't', 'ttl', 'd')
if not f[1] then return false end
local ttl = tonumber(f[3])
if ARGV[4] == '1' and ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  index(ARGV[2] .. f[1], ARGV[1], ttl)
  index(ARGV[3] .. f[2], ARGV[1], ttl)
end
return {{f[1], f[2], f[3], f[4], redis.call('TTL', KEYS[1])}}
"
    ))
});

/// KEYS: session. ARGV: session id, user index prefix, tenant index prefix.
/// Returns 1 when a session was deleted.
pub static SESSION_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local f = redis.call('HMGET', KEYS[1], 'u', 't')
if not f[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[2] .. f[1], ARGV[1])
redis.call('SREM', ARGV[3] .. f[2], ARGV[1])
return 1
",
    )
});

/// KEYS: entry, user index, tenant index. ARGV: permission key, encoded
/// result, ttl (0: none). The entry carries the codec's expiry header, so
/// a read is one `GET`.
pub static PERMISSION_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{EXPIRY_HEADER_LUA}{EXTEND_INDEX}
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  local at = now_ms() + ttl * 1000
  redis.call('SET', KEYS[1], expiry_header(at) .. ARGV[2], 'PXAT', at)
else
  redis.call('SET', KEYS[1], expiry_header(0) .. ARGV[2])
end
index(KEYS[2], ARGV[1], ttl)
index(KEYS[3], ARGV[1], ttl)
return 1
"
    ))
});

/// KEYS: one index (all its entries), two (entries in both), or the one
/// entry to drop. ARGV: entry prefix, user index prefix, tenant index
/// prefix, then, for one entry, its permission key.
/// Returns how many entries existed and were deleted.
pub static PERMISSION_INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local members
if ARGV[4] then
  members = {ARGV[4]}
elseif #KEYS == 1 then
  members = redis.call('SMEMBERS', KEYS[1])
else
  members = redis.call('SINTER', KEYS[1], KEYS[2])
end
local deleted = 0
for _, key in ipairs(members) do
  deleted = deleted + redis.call('DEL', ARGV[1] .. key)
  local user, tenant = string.match(key, '^permission:([^:]+):([^:]+):')
  if user then
    redis.call('SREM', ARGV[2] .. user, key)
    redis.call('SREM', ARGV[3] .. tenant, key)
  end
end
return deleted
",
    )
});

/// KEYS: the sessions to revoke. ARGV: user index prefix, tenant index
/// prefix, user filter (`""`: any), tenant filter (`""`: any), then one
/// session id per key. Deletes each session that still matches the filters
/// and its index entries; drops index entries of sessions already gone.
/// Returns how many sessions were revoked.
pub static SESSION_REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local revoked = 0
for i, key in ipairs(KEYS) do
  local id = ARGV[4 + i]
  local f = redis.call('HMGET', key, 'u', 't')
  if f[1] then
    if (ARGV[3] == '' or f[1] == ARGV[3]) and (ARGV[4] == '' or f[2] == ARGV[4]) then
      redis.call('DEL', key)
      redis.call('SREM', ARGV[1] .. f[1], id)
      redis.call('SREM', ARGV[2] .. f[2], id)
      revoked = revoked + 1
    end
  else
    if ARGV[3] ~= '' then redis.call('SREM', ARGV[1] .. ARGV[3], id) end
    if ARGV[4] ~= '' then redis.call('SREM', ARGV[2] .. ARGV[4], id) end
  end
end
return revoked
",
    )
});

/// KEYS: one session index. ARGV: session key prefix, then session ids.
/// Removes the ids whose session no longer exists; returns how many.
pub static SESSION_PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local pruned = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    pruned = pruned + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return pruned
",
    )
});

/// KEYS: the keys to read. ARGV: the most stored bytes (less expiry
/// headers) to answer. Returns
/// `{total, values, ttls}`, or `{total, {}, {}}` without the values when
/// they add up to more than the limit: an mget's answer stays bounded
/// whatever the values' sizes. A value with an expiry header (see the
/// codec) carries its TTL: its entry in `ttls` is `-3`; only values written
/// before the header cost a `TTL`.
pub static BOUNDED_MGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{EXPIRY_HEADER_LUA}
local total = 0
for i = 1, #KEYS do
  total = total + value_len(KEYS[i])
end
if total > tonumber(ARGV[1]) then return {{total, {{}}, {{}}}} end
local values = redis.call('MGET', unpack(KEYS))
local ttls = {{}}
for i = 1, #KEYS do
  local v = values[i]
  if v and string.byte(v, 1) ~= 84 then
    ttls[i] = redis.call('TTL', KEYS[i])
  else
    ttls[i] = -3
  end
end
return {{total, values, ttls}}
"
    ))
});
