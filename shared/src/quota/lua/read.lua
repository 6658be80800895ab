-- READ of quota/mod.rs: its doc comment says what it takes and returns.
local k, b = settled_usage(KEYS[1], KEYS[2], KEYS[3], now_ms())
return {k, b}
