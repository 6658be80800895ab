-- Functions every accounting script starts with (see `LIBRARY` in quota/mod.rs).
local BUCKET = 10000
local function bucket_of(at) return math.floor(at / BUCKET) end
-- Field `d` of a usage hash: no bucket of its index lies below it. A new
-- bucket lowers it, a settle sets it to the lowest bucket left (NO_BUCKET
-- when none is), so a script settles only once a bucket is due instead of
-- searching the index every time. Absent: unknown, the next settle finds it.
local NO_BUCKET = '1000000000000000'
local function lower_hint(x, b)
  local u = string.sub(x, 1, -4) .. 'usage'
  local d = tonumber(redis.call('HGET', u, 'd'))
  if d and b < d then redis.call('HSET', u, 'd', b) end
end
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
    lower_hint(x, b)
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
-- `hint` is the hash's `d` (nil: unknown); returns the keys and bytes it
-- took off the usage.
local function settle_hinted(u, x, xz, now, hint)
  local last = bucket_of(now - 1000) - 1
  if hint and hint > last then return 0, 0 end
  local due = redis.call('ZRANGEBYSCORE', xz, '-inf', last, 'LIMIT', 0, 256)
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
  -- A full page may leave more due: the hint stays below them. A tenant
  -- that never wrote keeps no usage hash.
  if #due < 256 then
    local lowest = redis.call('ZRANGE', xz, 0, 0)[1]
    if lowest or hint or redis.call('EXISTS', u) == 1 then
      redis.call('HSET', u, 'd', lowest or NO_BUCKET)
    end
  end
  return dk, db
end
local function settle(u, x, xz, now)
  settle_hinted(u, x, xz, now, tonumber(redis.call('HGET', u, 'd')))
end
local function usage(u)
  local f = redis.call('HMGET', u, 'k', 'b')
  return tonumber(f[1]) or 0, tonumber(f[2]) or 0
end
-- Settles, then returns the usage, read once with the hint.
local function settled_usage(u, x, xz, now)
  local f = redis.call('HMGET', u, 'k', 'b', 'd')
  local dk, db = settle_hinted(u, x, xz, now, tonumber(f[3]))
  return (tonumber(f[1]) or 0) - dk, (tonumber(f[2]) or 0) - db
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
-- The accounts of the `m` namespaces whose keys follow the `n` keys a
-- script changes (after usage, buckets and index): settled, with the
-- change's key and byte counts.
local function open_namespaces(n, m, now)
  local ns = {}
  for j = 1, m do
    local b = 3 + n + 3 * (j - 1)
    ns[j] = {u = KEYS[b + 1], x = KEYS[b + 2], xz = KEYS[b + 3], dk = 0, db = 0}
    settle(ns[j].u, ns[j].x, ns[j].xz, now)
  end
  return ns
end
-- Adds a change to the usage hash `u` (and bumps its write counter when
-- something changed); returns the key count after it (nil: unchanged).
local function count_change(u, dk, db, changed)
  local keys
  if dk ~= 0 then keys = redis.call('HINCRBY', u, 'k', dk) end
  if db ~= 0 then redis.call('HINCRBY', u, 'b', db) end
  if changed then redis.call('HINCRBY', u, 'w', 1) end
  return keys
end
-- Removes `key`, noting in `changes` what its tenant's accounting loses
-- when it is a tenant's value (`c:{t}:…`); returns 1 when it was there.
-- One key per UNLINK: a page's keys may hash to several slots, which a
-- cluster node refuses in one command.
local function unlink_counted(changes, key)
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
  return redis.call('UNLINK', key)
end
-- Takes what unlink_counted noted out of each tenant's accounting, once
-- per tenant rather than once per key.
local function settle_unlinks(changes)
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
end
