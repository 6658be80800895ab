//! Latency histograms with logarithmic buckets, their percentiles, and the
//! hit rate: the arithmetic every figure shares.

use std::sync::atomic::{AtomicU64, Ordering};

/// Latency buckets: 8 per power of two from 1 µs to about 70 s (a relative
/// error under 9 %, plenty for percentiles of cache calls).
pub(crate) const SUB_BUCKETS: u64 = 8;
pub(crate) const BUCKETS: usize = 27 * SUB_BUCKETS as usize;

/// A latency histogram with logarithmic buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Histogram {
    /// Adds `other`'s counts to this one's.
    pub(crate) fn absorb(&self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter().zip(other.buckets.iter()) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(other.sum_us.load(Ordering::Relaxed), Ordering::Relaxed);
        self.max_us
            .fetch_max(other.max_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

pub(crate) fn bucket_of(us: u64) -> usize {
    if us < SUB_BUCKETS {
        return us as usize;
    }
    let power = 63 - u64::from(us.leading_zeros());
    let shift = power + 1 - SUB_BUCKETS.trailing_zeros() as u64 - 1;
    let sub = (us >> shift) - SUB_BUCKETS;
    ((power - 2) * SUB_BUCKETS + sub) as usize
}

pub(crate) fn bucket_upper_us(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB_BUCKETS {
        return bucket;
    }
    let power = bucket / SUB_BUCKETS + 2;
    let sub = bucket % SUB_BUCKETS;
    let shift = power - 3;
    ((SUB_BUCKETS + sub + 1) << shift) - 1
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Histogram {
    pub fn record(&self, us: u64) {
        let bucket = bucket_of(us).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        // A plain load first: the maximum rarely moves, and a locked
        // read-modify-write on every call would cost more than the rest.
        if us > self.max_us.load(Ordering::Relaxed) {
            self.max_us.fetch_max(us, Ordering::Relaxed);
        }
    }

    /// Cumulative bucket counts, sum and max, for period deltas.
    pub(crate) fn totals(&self) -> (Vec<u64>, u64, u64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.sum_us.load(Ordering::Relaxed),
            self.max_us.load(Ordering::Relaxed),
        )
    }

    pub fn latency(&self) -> Latency {
        let (counts, sum_us, max_us) = self.totals();
        dense_latency(&counts, sum_us, max_us)
    }
}

/// [`latency_of`] a dense histogram (one count per bucket), its calls the
/// counts' sum.
pub(crate) fn dense_latency(counts: &[u64], sum_us: u64, max_us: u64) -> Latency {
    let calls = counts.iter().sum();
    latency_of(counts.iter().copied().enumerate(), calls, sum_us, max_us)
}

/// Count, mean and percentiles of `calls` whose latencies fell into
/// `buckets` ((bucket, count), ascending; this module's bucket layout). A
/// percentile is the upper bound of the bucket holding it, never above the
/// largest call seen.
pub(crate) fn latency_of<B>(buckets: B, calls: u64, sum_us: u64, max_us: u64) -> Latency
where
    B: IntoIterator<Item = (usize, u64)> + Clone,
{
    if calls == 0 {
        return Latency::default();
    }
    let counted: u64 = buckets.clone().into_iter().map(|(_, n)| n).sum();
    let at = |q: f64| {
        let rank = ((q * counted as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, n) in buckets.clone() {
            seen += n;
            if seen >= rank {
                return bucket_upper_us(bucket).min(max_us) as f64 / 1000.0;
            }
        }
        max_us as f64 / 1000.0
    };
    Latency {
        count: calls,
        mean_ms: sum_us as f64 / calls as f64 / 1000.0,
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        max_ms: max_us as f64 / 1000.0,
    }
}

/// Hit rate in percent of `(hits, misses)`, `None` without reads.
pub fn hit_rate((hits, misses): (u64, u64)) -> Option<f64> {
    let total = hits + misses;
    (total > 0).then(|| hits as f64 * 100.0 / total as f64)
}
