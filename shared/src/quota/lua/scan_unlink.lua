-- SCAN_UNLINK of quota/mod.rs: its doc comment says what it takes and returns.
local cursor, pattern, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local budget, most = tonumber(ARGV[4]), tonumber(ARGV[5])
local function clock_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local started = clock_us()
-- Per tenant: keys, bytes, and per expiry bucket its keys and bytes.
local changes = {}
local removed, examined = 0, 0
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', count)
  cursor = page[1]
  local keys = page[2]
  examined = examined + math.max(count, #keys)
  for _, key in ipairs(keys) do
    removed = removed + unlink_counted(changes, key)
  end
until cursor == '0' or examined >= most or clock_us() - started >= budget
settle_unlinks(changes)
return {cursor, removed, examined}
