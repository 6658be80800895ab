-- DELETE of quota/mod.rs: its doc comment says what it takes and returns.
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
