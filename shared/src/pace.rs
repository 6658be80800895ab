//! The latency requests see right now, which every api instance publishes
//! so that background work (a flush) slows down when it starts to hurt
//! them instead of holding a fixed rate (README, "Flushes yield to
//! requests").

use std::time::Duration;

use deadpool_redis::redis;

use crate::error::Error;
use crate::redis::RedisStore;
use crate::stats::histogram::latency_of;

/// Sorted set of `instance|p99_us` members scored by when (Unix ms) they
/// were published. One slot on a cluster, like every platform key.
pub const LATENCY_KEY: &str = "{_platform}:latency";

/// How often an api instance publishes; also the window its figure covers.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Figures older than this are not read: their instance stopped, or saw
/// too few requests since to say anything.
const FRESH_MS: i64 = 1_500;

/// Figures older than this are dropped by the next publication, so the set
/// holds a few members per live instance, whatever comes and goes.
const KEEP_MS: i64 = 5_000;

/// Fewer requests than this in a window give no figure: a p99 of a
/// handful of requests is one request's luck.
const MIN_REQUESTS: u64 = 100;

/// The p99 of the requests of successive windows, from the cumulative
/// bucket counts of a latency histogram ([`crate::stats::live::LiveStats::latency_buckets`]).
#[derive(Debug, Default)]
pub struct Window {
    last: Vec<u64>,
}

impl Window {
    /// The p99 in microseconds of what `totals` counted since the last
    /// call; `None` when that was fewer than [`MIN_REQUESTS`].
    pub fn next(&mut self, totals: Vec<u64>) -> Option<u64> {
        let delta: Vec<u64> = totals
            .iter()
            .enumerate()
            .map(|(i, &n)| n.saturating_sub(self.last.get(i).copied().unwrap_or(0)))
            .collect();
        self.last = totals;
        let requests: u64 = delta.iter().sum();
        if requests < MIN_REQUESTS {
            return None;
        }
        let latency = latency_of(delta.into_iter().enumerate(), requests, 0, u64::MAX);
        Some((latency.p99_ms * 1000.0).round() as u64)
    }
}

/// Publishes `instance`'s latest p99 (microseconds).
///
/// # Errors
///
/// [`Error::CacheUnavailable`] when Redis does not answer in time.
pub async fn publish(redis: &RedisStore, instance: &str, p99_us: u64) -> Result<(), Error> {
    let now = chrono::Utc::now().timestamp_millis();
    redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let () = redis::pipe()
                .zadd(LATENCY_KEY, format!("{instance}|{p99_us}"), now)
                .ignore()
                .zrembyscore(LATENCY_KEY, "-inf", format!("({}", now - KEEP_MS))
                .ignore()
                .pexpire(LATENCY_KEY, KEEP_MS)
                .ignore()
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
}

/// The largest p99 (microseconds) any api instance published lately:
/// what the slowest-served requests see. `None` when none did.
///
/// # Errors
///
/// [`Error::CacheUnavailable`] when Redis does not answer in time.
pub async fn slowest(redis: &RedisStore) -> Result<Option<u64>, Error> {
    let now = chrono::Utc::now().timestamp_millis();
    let members: Vec<String> = redis
        .timed(async {
            let mut conn = redis.conn().await?;
            let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(LATENCY_KEY)
                .arg(now - FRESH_MS)
                .arg("+inf")
                .query_async(&mut conn)
                .await?;
            Ok(members)
        })
        .await?;
    Ok(largest(&members))
}

/// The largest p99 of `instance|p99_us` members (unparsable ones skipped).
fn largest(members: &[String]) -> Option<u64> {
    members
        .iter()
        .filter_map(|m| m.rsplit_once('|')?.1.parse::<u64>().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::histogram::Histogram;

    fn totals(h: &Histogram) -> Vec<u64> {
        h.totals().0
    }

    #[test]
    fn a_window_reports_the_p99_of_its_own_requests_only() {
        let h = Histogram::default();
        let mut window = Window::default();
        // A slow past: 1 000 requests of 50 ms.
        for _ in 0..1000 {
            h.record(50_000);
        }
        assert!(window.next(totals(&h)).is_some_and(|p99| p99 >= 45_000));
        // Then 1 000 fast ones, 10 of them (1 %) slower: 980 at 200 µs, 20 at 2 ms.
        for i in 0..1000 {
            h.record(if i < 980 { 200 } else { 2_000 });
        }
        let p99 = window.next(totals(&h)).expect("enough requests");
        // Within the histogram's 9 % bucket error of 2 ms, not the past's 50.
        assert!((1_800..=2_200).contains(&p99), "p99 {p99} µs");
    }

    #[test]
    fn a_quiet_window_says_nothing() {
        let h = Histogram::default();
        let mut window = Window::default();
        for _ in 0..(MIN_REQUESTS - 1) {
            h.record(100);
        }
        assert_eq!(window.next(totals(&h)), None);
        h.record(100);
        // The previous window's requests are not counted again.
        assert_eq!(window.next(totals(&h)), None);
    }

    #[test]
    fn the_slowest_instance_is_read() {
        let members = ["api-1-a|800", "api-2-b|2500", "junk", "api-3|x"].map(String::from);
        assert_eq!(largest(&members), Some(2500));
        assert_eq!(largest(&[]), None);
    }
}
