//! Period figures for the statistics rollups. Each api instance turns its
//! cumulative live counters into per-period deltas ([`RollupTracker`]) and
//! ships them; the worker merges the instances' [`PeriodFigures`] of a tenant
//! and period into one row. Latency travels as histogram buckets, so merged
//! percentiles are those of all calls, not an average of percentiles.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::histogram::{Latency, bucket_upper_us, latency_of};
use super::live::{LiveStats, TenantStats, Totals};
use super::op::Op;

/// What one or more instances saw of one tenant during one period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeriodFigures {
    pub hits: u64,
    pub misses: u64,
    /// By operation name; operations without calls are left out.
    pub ops: BTreeMap<String, OpFigures>,
    /// Estimated reads of the period's hot keys.
    pub hot_keys: BTreeMap<String, u64>,
}

/// One operation's calls, errors and latency histogram within a period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpFigures {
    pub calls: u64,
    pub errors: u64,
    pub sum_us: u64,
    pub max_us: u64,
    /// Non-empty latency buckets (the live histogram's layout) and their counts.
    pub buckets: BTreeMap<usize, u64>,
}

/// The figures of a `cache_statistics` row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub total_operations: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    /// Percent of reads that hit; `None` without reads.
    pub hit_rate: Option<f64>,
    pub avg_latency_ms: Option<f64>,
    pub p95_latency_ms: Option<f64>,
    pub p99_latency_ms: Option<f64>,
}

impl PeriodFigures {
    pub fn is_empty(&self) -> bool {
        self.hits == 0 && self.misses == 0 && self.ops.is_empty() && self.hot_keys.is_empty()
    }

    /// Adds `other` (another instance, or a period that could not be shipped).
    pub fn merge(&mut self, other: &PeriodFigures) {
        self.hits += other.hits;
        self.misses += other.misses;
        for (name, theirs) in &other.ops {
            self.ops.entry(name.clone()).or_default().add(theirs);
        }
        for (key, &reads) in &other.hot_keys {
            *self.hot_keys.entry(key.clone()).or_default() += reads;
        }
    }

    pub fn summary(&self) -> Summary {
        let mut all = OpFigures::default();
        for op in self.ops.values() {
            all.add(op);
        }
        let timed = (all.calls > 0).then(|| all.latency());
        Summary {
            total_operations: all.calls,
            hits: self.hits,
            misses: self.misses,
            errors: all.errors,
            hit_rate: super::histogram::hit_rate((self.hits, self.misses)),
            avg_latency_ms: timed.map(|l| l.mean_ms),
            p95_latency_ms: timed.map(|l| l.p95_ms),
            p99_latency_ms: timed.map(|l| l.p99_ms),
        }
    }
}

impl OpFigures {
    /// Count, mean and percentiles of the calls in these figures.
    pub fn latency(&self) -> Latency {
        let buckets = self.buckets.iter().map(|(&bucket, &n)| (bucket, n));
        latency_of(buckets, self.calls, self.sum_us, self.max_us)
    }

    /// Adds another instance's (or period's) figures of the same operation.
    pub fn add(&mut self, other: &OpFigures) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
        for (&bucket, &n) in &other.buckets {
            *self.buckets.entry(bucket).or_default() += n;
        }
    }
}

/// Turns cumulative live counters into per-period deltas: remembers what it
/// last handed out per tenant.
#[derive(Debug, Default)]
pub struct RollupTracker {
    baselines: HashMap<String, Totals>,
}

impl RollupTracker {
    /// The figures of every tenant active since the previous call.
    pub fn next_period(&mut self, stats: &LiveStats) -> Vec<(String, PeriodFigures)> {
        let mut periods = Vec::new();
        for tenant in stats.tenants() {
            let now = tenant.totals();
            let before = self.baselines.get(tenant.tenant());
            let mut figures = delta(before, &now);
            figures.hot_keys = tenant.take_period_hot_keys().into_iter().collect();
            self.baselines.insert(tenant.tenant().to_owned(), now);
            if !figures.is_empty() {
                periods.push((tenant.tenant().to_owned(), figures));
            }
        }
        periods.sort_by(|a, b| a.0.cmp(&b.0));
        periods
    }

    /// What `tenant` did since the last period ended (nothing is consumed).
    pub fn current(&self, tenant: &TenantStats) -> PeriodFigures {
        delta(self.baselines.get(tenant.tenant()), &tenant.totals())
    }
}

/// Periods kept per tenant for sliding windows (the longest window).
pub const RECENT_PERIODS: usize = 15;

/// The tracker of the periods shipped so far, and the last
/// [`RECENT_PERIODS`] periods of each tenant: together they give figures
/// over a sliding window (the running period plus the ones before it).
#[derive(Debug, Default)]
pub struct RecentFigures {
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    tracker: RollupTracker,
    periods: HashMap<String, VecDeque<PeriodFigures>>,
}

impl RecentFigures {
    /// Ends the running period: returns its figures (see
    /// [`RollupTracker::next_period`]) and keeps them for windows.
    pub fn next_period(&self, stats: &LiveStats) -> Vec<(String, PeriodFigures)> {
        let mut recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ended = recent.tracker.next_period(stats);
        let active: std::collections::HashSet<&str> =
            ended.iter().map(|(t, _)| t.as_str()).collect();
        for (tenant, ring) in &mut recent.periods {
            if !active.contains(tenant.as_str()) {
                ring.push_back(PeriodFigures::default());
            }
        }
        for (tenant, figures) in &ended {
            let ring = recent.periods.entry(tenant.clone()).or_default();
            // Windows need the counts, not the hot keys.
            ring.push_back(PeriodFigures {
                hits: figures.hits,
                misses: figures.misses,
                ops: figures.ops.clone(),
                hot_keys: BTreeMap::new(),
            });
        }
        recent.periods.retain(|_, ring| {
            while ring.len() > RECENT_PERIODS {
                ring.pop_front();
            }
            ring.iter().any(|p| !p.is_empty())
        });
        ended
    }

    /// Drops what is kept of tenants the live figures forgot.
    pub fn forget(&self, tenants: &[String]) {
        let mut recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for tenant in tenants {
            recent.tracker.baselines.remove(tenant);
            recent.periods.remove(tenant);
        }
    }

    /// `tenant`'s figures over the running period and the `periods - 1`
    /// before it.
    pub fn window(&self, tenant: &TenantStats, periods: usize) -> PeriodFigures {
        let recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut figures = recent.tracker.current(tenant);
        if let Some(ring) = recent.periods.get(tenant.tenant()) {
            for past in ring.iter().rev().take(periods.saturating_sub(1)) {
                figures.merge(past);
            }
        }
        figures
    }
}

fn delta(before: Option<&Totals>, now: &Totals) -> PeriodFigures {
    let empty = Totals::default();
    let before = before.unwrap_or(&empty);
    let mut figures = PeriodFigures {
        hits: now.hits.saturating_sub(before.hits),
        misses: now.misses.saturating_sub(before.misses),
        ..PeriodFigures::default()
    };
    for (i, op) in Op::ALL.iter().enumerate() {
        let Some(now_op) = now.ops.get(i) else {
            continue;
        };
        let before_op = before.ops.get(i);
        let calls = now_op.calls - before_op.map_or(0, |b| b.calls.min(now_op.calls));
        if calls == 0 {
            continue;
        }
        let buckets: BTreeMap<usize, u64> = now_op
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(b, &n)| {
                let was = before_op
                    .and_then(|o| o.buckets.get(b))
                    .copied()
                    .unwrap_or(0);
                (n > was).then(|| (b, n - was))
            })
            .collect();
        // The cumulative maximum may predate the period: bound it by the
        // highest bucket the period used.
        let highest = buckets
            .keys()
            .next_back()
            .map_or(0, |&b| bucket_upper_us(b));
        figures.ops.insert(
            op.name().to_owned(),
            OpFigures {
                calls,
                errors: now_op
                    .errors
                    .saturating_sub(before_op.map_or(0, |b| b.errors)),
                sum_us: now_op
                    .sum_us
                    .saturating_sub(before_op.map_or(0, |b| b.sum_us)),
                max_us: now_op.max_us.min(highest),
                buckets,
            },
        );
    }
    figures
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::error::Error;
    use crate::keys::TenantId;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name, "t").unwrap()
    }

    #[test]
    fn periods_hold_only_what_happened_since_the_last_one() {
        let stats = LiveStats::default();
        let acme = stats.tenant(&tenant("acme"));
        let mut tracker = RollupTracker::default();
        for _ in 0..3 {
            stats
                .observe(Op::Get, &acme, Instant::now(), None, Ok::<_, Error>(()))
                .unwrap();
            stats.record_lookup(&acme, Op::Get, "k", true);
        }
        let first = tracker.next_period(&stats);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.ops["get"].calls, 3);
        assert_eq!(first[0].1.hits, 3);

        stats
            .observe(Op::Set, &acme, Instant::now(), None, Ok::<_, Error>(()))
            .unwrap();
        stats.record_lookup(&acme, Op::Get, "k", false);
        let second = &tracker.next_period(&stats)[0].1;
        assert!(!second.ops.contains_key("get"));
        assert_eq!(second.ops["set"].calls, 1);
        assert_eq!((second.hits, second.misses), (0, 1));
        assert!(tracker.next_period(&stats).is_empty());
    }

    #[test]
    fn windows_cover_the_running_period_and_the_ones_before_it() {
        let stats = LiveStats::default();
        let acme = stats.tenant(&tenant("acme"));
        let recent = RecentFigures::default();
        let call = |us: u64| {
            let started = Instant::now() - std::time::Duration::from_micros(us);
            stats
                .observe(Op::Get, &acme, started, None, Ok::<_, Error>(()))
                .unwrap();
        };
        call(5_000); // period 1: one slow call
        recent.next_period(&stats);
        for _ in 0..3 {
            call(100); // period 2
        }
        recent.next_period(&stats);
        call(200); // the running period

        let now = recent.window(&acme, 1).ops["get"].latency();
        assert_eq!(now.count, 1);
        let two = recent.window(&acme, 2).ops["get"].latency();
        assert_eq!(two.count, 4);
        assert!(two.max_ms < 1.0, "{two:?}");
        let all = recent.window(&acme, 15).ops["get"].latency();
        assert_eq!(all.count, 5);
        assert!(all.max_ms >= 5.0, "{all:?}");

        // Periods age out: two more, and a window of 3 holds the 200 µs call only.
        recent.next_period(&stats);
        recent.next_period(&stats);
        let three = recent.window(&acme, 3).ops["get"].latency();
        assert_eq!(three.count, 1);
        assert!(three.max_ms < 1.0, "{three:?}");
    }

    #[test]
    fn merging_two_instances_gives_the_figures_of_all_their_calls() {
        let mut a = PeriodFigures::default();
        let mut b = PeriodFigures::default();
        // Instance a: 90 fast calls; instance b: 10 slow ones.
        let fast = OpFigures {
            calls: 90,
            errors: 0,
            sum_us: 90 * 100,
            max_us: 100,
            buckets: BTreeMap::from([(super::super::histogram::bucket_of(100), 90)]),
        };
        let slow = OpFigures {
            calls: 10,
            errors: 2,
            sum_us: 10 * 8000,
            max_us: 8000,
            buckets: BTreeMap::from([(super::super::histogram::bucket_of(8000), 10)]),
        };
        a.ops.insert("get".into(), fast);
        a.hits = 60;
        a.misses = 30;
        b.ops.insert("get".into(), slow);
        b.hits = 10;
        a.hot_keys.insert("k".into(), 40);
        b.hot_keys.insert("k".into(), 8);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(
            (s.total_operations, s.errors, s.hits, s.misses),
            (100, 2, 70, 30)
        );
        assert_eq!(s.hit_rate, Some(70.0));
        assert!((s.avg_latency_ms.unwrap() - 0.89).abs() < 1e-9);
        // p95 falls among the slow calls: 8 ms within a bucket's width.
        let p95 = s.p95_latency_ms.unwrap();
        assert!((8.0..=9.0).contains(&p95), "{p95}");
        assert_eq!(a.hot_keys["k"], 48);
    }
}
