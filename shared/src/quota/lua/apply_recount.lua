-- APPLY_RECOUNT of quota/mod.rs: its doc comment says what it takes and returns.
local u, x, xz = KEYS[1], KEYS[2], KEYS[3]
if (redis.call('HGET', u, 'w') or '') ~= ARGV[1] then return 0 end
redis.call('DEL', x, xz)
redis.call('HSET', u, 'k', ARGV[2], 'b', ARGV[3])
-- The buckets are new: the next settle finds the lowest (library.lua's `d`).
redis.call('HDEL', u, 'd')
for i = 4, #ARGV, 3 do
  local b = ARGV[i]
  redis.call('HSET', x, b .. ':k', ARGV[i + 1], b .. ':b', ARGV[i + 2])
  redis.call('ZADD', xz, b, b)
end
return 1
