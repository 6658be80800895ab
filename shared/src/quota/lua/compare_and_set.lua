-- COMPARE_AND_SET of quota/mod.rs: its doc comment says what it takes and returns.
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
