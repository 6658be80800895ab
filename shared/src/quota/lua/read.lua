-- READ of quota/mod.rs: its doc comment says what it takes and returns.
settle(KEYS[1], KEYS[2], KEYS[3], now_ms())
local k, b = usage(KEYS[1])
return {k, b}
