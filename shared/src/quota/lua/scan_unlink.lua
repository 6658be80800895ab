-- SCAN_UNLINK of quota/mod.rs: its doc comment says what it takes and returns.
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
