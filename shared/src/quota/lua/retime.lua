-- RETIME of quota/mod.rs: its doc comment says what it takes and returns.
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
