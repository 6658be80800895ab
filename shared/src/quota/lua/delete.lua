-- DELETE of quota/mod.rs: its doc comment says what it takes and returns.
local u, x, xz, plen = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1])
local m, op = tonumber(ARGV[2]), ARGV[3]
local n = #ARGV - 3
local now = now_ms()
settle(u, x, xz, now)
local events = events_of(u)
local ns = open_namespaces(n, m, now)
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
count_change(u, -dk, -db, dk ~= 0)
for j = 1, m do
  count_change(ns[j].u, -ns[j].dk, -ns[j].db, ns[j].dk ~= 0)
end
return dk
