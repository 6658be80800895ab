-- UNLINK_KEYS of quota/mod.rs: its doc comment says what it takes and returns.
local changes = {}
local removed = 0
for _, key in ipairs(KEYS) do
  removed = removed + unlink_counted(changes, key)
end
settle_unlinks(changes)
return removed
