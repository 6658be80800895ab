//! How fast background work goes: a rate cap, and a governor that lowers
//! the rate while the requests the api instances serve are slower than
//! they were when the work started (README, "Flushes yield to requests").

use std::time::Duration;

use cache_shared::redis::RedisStore;
use tokio::time::Instant;

/// Keeps a job under a rate: waits whenever it is ahead of schedule (by at
/// least a timer tick, so short waits are not rounded up into slowness).
/// With a [`Governor`], the rate follows the latency requests see.
#[derive(Debug)]
pub struct Pacer {
    /// When the units done so far are due at the rates they were done at.
    due: Instant,
    done: i64,
    per_second: f64,
    governor: Option<Governor>,
}

/// Most time a job that fell behind may catch up on at once: after a
/// stall it resumes its rate instead of bursting.
const MOST_CREDIT: Duration = Duration::from_millis(100);

impl Pacer {
    pub fn new(per_second: u64) -> Self {
        Self {
            due: Instant::now(),
            done: 0,
            per_second: per_second.max(1) as f64,
            governor: None,
        }
    }

    /// This pacer, its rate kept by `governor` between its floor and the cap.
    pub fn governed(mut self, governor: Governor) -> Self {
        self.governor = Some(governor);
        self
    }

    /// The rate it holds now, in units a second.
    pub fn rate(&self) -> f64 {
        self.per_second
    }

    /// When it is time, lets the governor (if any) read the latency
    /// requests see from `redis` and set the rate; a failed read keeps it.
    pub async fn govern(&mut self, redis: &RedisStore) {
        let Some(governor) = &mut self.governor else {
            return;
        };
        if !governor.is_due() {
            return;
        }
        let p99 = match cache_shared::pace::slowest(redis).await {
            Ok(p99) => p99,
            Err(err) => {
                tracing::debug!(%err, "request latency not read; keeping the rate");
                governor.keep();
                return;
            }
        };
        self.per_second = governor.adjust(self.per_second, p99);
    }

    /// Waits until `done` units (counted from the start) are due.
    pub async fn wait(&mut self, done: i64) {
        let units = (done - self.done).max(0);
        self.done = done;
        let now = Instant::now();
        self.due = self.due.max(now - MOST_CREDIT)
            + Duration::from_secs_f64(units as f64 / self.per_second);
        let ahead = self.due.saturating_duration_since(now);
        if ahead >= Duration::from_millis(2) {
            tokio::time::sleep(ahead).await;
        }
    }
}

/// Lowers a rate while requests are slower than before the work began
/// (their p99 above `limit` times the first one read) and raises it back
/// as they recover.
#[derive(Debug)]
pub struct Governor {
    limit: f64,
    floor: f64,
    cap: f64,
    baseline: Option<u64>,
    checked: Option<Instant>,
}

/// How often the governor reads the latency: as often as the api
/// instances publish it.
const CHECK_EVERY: Duration = cache_shared::pace::PUBLISH_EVERY;

/// The rate is cut to this share of itself while requests suffer...
const SLOW_DOWN: f64 = 0.7;
/// ...and grows back by this share of the cap each check they do not.
const SPEED_UP: f64 = 0.1;

/// The slowest a governed job goes, as a share of its cap: it always ends.
const FLOOR: f64 = 0.1;

impl Governor {
    /// A governor of a job capped at `cap` units a second, holding the
    /// requests' p99 under `limit` times what it was at the start.
    pub fn new(cap: u64, limit: f64) -> Self {
        let cap = cap.max(1) as f64;
        Self {
            limit,
            floor: cap * FLOOR,
            cap,
            baseline: None,
            checked: None,
        }
    }

    fn is_due(&self) -> bool {
        self.checked.is_none_or(|at| at.elapsed() >= CHECK_EVERY)
    }

    /// A check that read nothing: the next one waits its turn.
    fn keep(&mut self) {
        self.checked = Some(Instant::now());
    }

    /// The rate after a check that read `p99` (microseconds; `None`: no
    /// api instance served enough requests lately to say, so nothing to
    /// yield to). The first figure read is the baseline.
    pub fn adjust(&mut self, rate: f64, p99: Option<u64>) -> f64 {
        self.checked = Some(Instant::now());
        let Some(p99) = p99 else {
            return (rate + self.cap * SPEED_UP).min(self.cap);
        };
        let Some(baseline) = self.baseline else {
            self.baseline = Some(p99);
            return rate;
        };
        if p99 as f64 > baseline as f64 * self.limit {
            (rate * SLOW_DOWN).max(self.floor)
        } else {
            (rate + self.cap * SPEED_UP).min(self.cap)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_falls_while_requests_suffer_and_recovers_after() {
        let mut g = Governor::new(100_000, 1.3);
        let mut rate = 100_000.0;
        rate = g.adjust(rate, Some(1_000));
        assert_eq!(rate, 100_000.0, "the first figure is the baseline");
        rate = g.adjust(rate, Some(1_250));
        assert_eq!(rate, 100_000.0, "within the limit");
        rate = g.adjust(rate, Some(1_400));
        assert_eq!(rate, 70_000.0);
        for _ in 0..20 {
            rate = g.adjust(rate, Some(5_000));
        }
        assert_eq!(rate, 10_000.0, "never below the floor");
        rate = g.adjust(rate, Some(1_100));
        assert_eq!(rate, 20_000.0);
        for _ in 0..20 {
            rate = g.adjust(rate, Some(900));
        }
        assert_eq!(rate, 100_000.0, "never above the cap");
    }

    #[test]
    fn without_figures_it_runs_at_the_cap_and_takes_the_first_one_as_baseline() {
        let mut g = Governor::new(1_000, 1.5);
        assert_eq!(g.adjust(500.0, None), 600.0);
        assert_eq!(g.adjust(600.0, Some(2_000)), 600.0);
        assert_eq!(g.adjust(600.0, Some(2_900)), 700.0);
        assert_eq!(g.adjust(700.0, Some(3_100)), 700.0 * SLOW_DOWN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_holds_its_rate_and_banks_no_more_than_a_moment_after_a_stall() {
        let mut pacer = Pacer::new(1_000);
        let start = Instant::now();
        pacer.wait(500).await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        // A stall of 10 s: only 100 ms of it may be caught up.
        tokio::time::advance(Duration::from_secs(10)).await;
        let resumed = Instant::now();
        pacer.wait(1_000).await;
        assert_eq!(resumed.elapsed(), Duration::from_millis(400));
    }
}
