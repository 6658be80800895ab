//! In-process counters of cache operations: calls, errors, hits and misses per
//! operation and a per-second ring for recent throughput. Lock-free and a few
//! atomic adds per request, so the request path pays next to nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// Operations counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
    Delete,
    Mget,
    Mset,
    Exists,
    Expire,
    Ttl,
    Touch,
    Session,
    Permission,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::Get,
        Op::Set,
        Op::Delete,
        Op::Mget,
        Op::Mset,
        Op::Exists,
        Op::Expire,
        Op::Ttl,
        Op::Touch,
        Op::Session,
        Op::Permission,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::Mget => "mget",
            Op::Mset => "mset",
            Op::Exists => "exists",
            Op::Expire => "expire",
            Op::Ttl => "ttl",
            Op::Touch => "touch",
            Op::Session => "session",
            Op::Permission => "permission",
        }
    }
}

const WINDOW_SECONDS: usize = 60;

#[derive(Debug, Default)]
struct OpCounters {
    calls: AtomicU64,
    errors: AtomicU64,
}

/// Live operation counters of one process.
#[derive(Debug)]
pub struct LiveStats {
    ops: [OpCounters; Op::ALL.len()],
    hits: AtomicU64,
    misses: AtomicU64,
    second_stamp: [AtomicU64; WINDOW_SECONDS],
    second_count: [AtomicU64; WINDOW_SECONDS],
}

impl Default for LiveStats {
    fn default() -> Self {
        Self {
            ops: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            second_stamp: std::array::from_fn(|_| AtomicU64::new(0)),
            second_count: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Counters of one operation at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSnapshot {
    pub op: Op,
    pub calls: u64,
    pub errors: u64,
}

impl LiveStats {
    /// Counts one call of `op` and its outcome, passing the result through.
    ///
    /// # Errors
    ///
    /// `result`'s own error, unchanged.
    pub fn observe<T>(&self, op: Op, result: Result<T, Error>) -> Result<T, Error> {
        let counters = &self.ops[op as usize];
        counters.calls.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.tick(now_seconds());
        result
    }

    /// Counts a read that found (`hit`) or missed its key.
    pub fn record_lookup(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn tick(&self, second: u64) {
        let slot = (second % WINDOW_SECONDS as u64) as usize;
        if self.second_stamp[slot].load(Ordering::Relaxed) != second {
            // First operation of a new second in this slot: whoever wins the
            // swap resets the count. A racing increment may be lost, which a
            // rate estimate tolerates.
            if self.second_stamp[slot].swap(second, Ordering::Relaxed) != second {
                self.second_count[slot].store(0, Ordering::Relaxed);
            }
        }
        self.second_count[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Hits and misses since start.
    pub fn lookups(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Hit rate in percent since start, `None` before the first read.
    pub fn hit_rate_percent(&self) -> Option<f64> {
        let (hits, misses) = self.lookups();
        let total = hits + misses;
        (total > 0).then(|| hits as f64 * 100.0 / total as f64)
    }

    /// Operations per second over the last full minute.
    pub fn operations_per_second(&self) -> f64 {
        self.rate_at(now_seconds())
    }

    fn rate_at(&self, now: u64) -> f64 {
        // The current second is still filling up: average the 60 seconds before it.
        let oldest = now.saturating_sub(WINDOW_SECONDS as u64);
        let total: u64 = (0..WINDOW_SECONDS)
            .filter(|&slot| {
                let stamp = self.second_stamp[slot].load(Ordering::Relaxed);
                stamp >= oldest && stamp < now
            })
            .map(|slot| self.second_count[slot].load(Ordering::Relaxed))
            .sum();
        total as f64 / WINDOW_SECONDS as f64
    }

    pub fn snapshot(&self) -> Vec<OpSnapshot> {
        Op::ALL
            .iter()
            .map(|&op| OpSnapshot {
                op,
                calls: self.ops[op as usize].calls.load(Ordering::Relaxed),
                errors: self.ops[op as usize].errors.load(Ordering::Relaxed),
            })
            .collect()
    }
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_errors_and_lookups_are_counted() {
        let stats = LiveStats::default();
        stats.observe(Op::Get, Ok::<_, Error>(())).unwrap();
        stats
            .observe(Op::Get, Err::<(), _>(Error::internal("boom")))
            .unwrap_err();
        stats.record_lookup(true);
        stats.record_lookup(true);
        stats.record_lookup(false);
        stats.record_lookup(true);
        let get = stats.snapshot()[Op::Get as usize];
        assert_eq!((get.calls, get.errors), (2, 1));
        assert_eq!(stats.hit_rate_percent(), Some(75.0));
    }

    #[test]
    fn rate_counts_only_the_last_minute_before_now() {
        let stats = LiveStats::default();
        for _ in 0..120 {
            stats.tick(1_000);
        }
        for _ in 0..60 {
            stats.tick(1_030);
        }
        stats.tick(1_031);
        assert_eq!(stats.rate_at(1_031), 3.0);
        // Thirty seconds later the ticks of second 1000 have left the window.
        assert_eq!(stats.rate_at(1_061), 61.0 / 60.0);
    }
}
