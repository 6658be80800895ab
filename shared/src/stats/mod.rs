//! In-process figures of cache operations and what is made of them: the
//! operations ([`op`]), latency histograms ([`histogram`]), the hot-key
//! detector ([`hot_keys`]), the per-tenant live figures ([`live`]), their
//! per-period rollups ([`rollup`]) and their Prometheus metrics ([`export`]).
//! Each module imports only those listed before it (and `live` the
//! operation log, which knows only [`op`]).

pub mod export;
pub mod histogram;
pub mod hot_keys;
pub mod live;
pub mod op;
pub mod rollup;
