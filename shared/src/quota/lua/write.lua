-- WRITE of quota/mod.rs: its doc comment says what it takes and returns.
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
local keys, bytes = settled_usage(u, x, xz, now)
local events = events_of(u)
-- Per namespace: its keys, its limit, and what the batch adds to it.
local ns = open_namespaces(n, m, now)
for j = 1, m do
  ns[j].limit, ns[j].mode = tonumber(ARGV[5 + 2 * j]), ARGV[6 + 2 * j]
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
count_change(u, dk, db, written > 0)
local answer = {'ok', written}
for j = 1, m do
  local c = ns[j]
  local held = count_change(c.u, c.dk, c.db, written > 0) or 0
  if c.mode == '2' and c.limit > 0 and held > c.limit
     and redis.call('SET', c.u .. ':trim', 1, 'NX', 'PX', 60000) then
    answer[#answer + 1] = j
  end
end
if lease_key then redis.call('DEL', lease_key) end
return answer
