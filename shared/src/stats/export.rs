//! The cache operations' Prometheus metrics, built from the live figures:
//! `cache_response_time_ms` assembled at scrape time from the per-tenant
//! histograms (each call is recorded once, in [`LiveStats`]), and outcome
//! and lookup counters mirrored from the same figures. Handles used on the
//! request path are resolved once (one per operation), so recording is a
//! few atomic adds with no label lookup.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::{IntCounter, proto};

use super::histogram::bucket_upper_us;
use super::live::{LiveStats, OpSnapshot};
use super::op::Op;
use crate::metrics::{MetricError, Metrics, RESPONSE_TIME_BUCKETS_MS, mirror};

/// Cache operations: `cache_response_time_ms` built when scraped from the
/// live per-tenant histograms (each call is recorded once, in
/// [`LiveStats`]), and outcome and lookup counters mirrored from the same
/// figures.
#[derive(Debug, Clone)]
pub struct OpMetrics {
    ok: Vec<IntCounter>,
    errors: Vec<IntCounter>,
    hits: IntCounter,
    misses: IntCounter,
}

impl OpMetrics {
    pub fn new(metrics: &Metrics, stats: Arc<LiveStats>) -> Result<Self, MetricError> {
        metrics.add(ResponseTimes::new(stats)?)?;
        let outcomes = metrics.counter_vec(
            "cache_operations_total",
            "Cache operations by outcome; rate() of it is the operations per second.",
            &["operation", "outcome"],
        )?;
        Ok(Self {
            ok: Op::ALL
                .iter()
                .map(|op| outcomes.with_label_values(&[op.name(), "ok"]))
                .collect(),
            errors: Op::ALL
                .iter()
                .map(|op| outcomes.with_label_values(&[op.name(), "error"]))
                .collect(),
            hits: metrics.counter("cache_hits_total", "Reads that found their key.")?,
            misses: metrics.counter("cache_misses_total", "Reads that did not find their key.")?,
        })
    }

    /// Brings the counters up to the live figures (call before rendering).
    /// `snapshot` and `(hits, misses)` are [`LiveStats::snapshot`] and
    /// [`LiveStats::lookups`], taken once per scrape by the caller.
    pub fn sync(&self, snapshot: &[OpSnapshot], (hits, misses): (u64, u64)) {
        for snapshot in snapshot {
            let i = snapshot.op as usize;
            if let (Some(ok), Some(errors)) = (self.ok.get(i), self.errors.get(i)) {
                mirror(ok, snapshot.calls - snapshot.errors.min(snapshot.calls));
                mirror(errors, snapshot.errors);
            }
        }
        mirror(&self.hits, hits);
        mirror(&self.misses, misses);
    }
}

/// `cache_response_time_ms` by operation, from the live histograms. Its
/// bucket bounds are bounds of the live histogram's own buckets (the first
/// at or above each of [`RESPONSE_TIME_BUCKETS_MS`]), so every count is exact.
#[derive(Debug, Clone)]
struct ResponseTimes {
    stats: Arc<LiveStats>,
    desc: Desc,
    /// Live bucket index and its bound in ms, ascending.
    bounds: Vec<(usize, f64)>,
}

impl ResponseTimes {
    fn new(stats: Arc<LiveStats>) -> Result<Self, MetricError> {
        let desc = Desc::new(
            "cache_response_time_ms".into(),
            "Cache operation latency in milliseconds, Redis round trip included.".into(),
            vec!["operation".into()],
            std::collections::HashMap::new(),
        )?;
        let mut bounds: Vec<(usize, f64)> = RESPONSE_TIME_BUCKETS_MS
            .iter()
            .filter_map(|&ms| {
                let us = (ms * 1000.0) as u64;
                (0..super::histogram::BUCKETS)
                    .find(|&b| bucket_upper_us(b) >= us)
                    .map(|b| (b, bucket_upper_us(b) as f64 / 1000.0))
            })
            .collect();
        bounds.dedup_by_key(|(b, _)| *b);
        Ok(Self {
            stats,
            desc,
            bounds,
        })
    }
}

impl Collector for ResponseTimes {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let mut family = proto::MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        for op in Op::ALL {
            let (counts, sum_us, _) = self.stats.histogram(op);
            let mut buckets = Vec::with_capacity(self.bounds.len());
            let mut cumulative = 0;
            let mut next = 0;
            for &(bucket, bound_ms) in &self.bounds {
                cumulative += counts[next..=bucket].iter().sum::<u64>();
                next = bucket + 1;
                let mut b = proto::Bucket::default();
                b.set_cumulative_count(cumulative);
                b.set_upper_bound(bound_ms);
                buckets.push(b);
            }
            let mut histogram = proto::Histogram::default();
            histogram.set_sample_count(counts.iter().sum());
            histogram.set_sample_sum(sum_us as f64 / 1000.0);
            histogram.set_bucket(buckets);
            let mut label = proto::LabelPair::default();
            label.set_name("operation".into());
            label.set_value(op.name().into());
            let mut metric = proto::Metric::default();
            metric.set_label(vec![label]);
            metric.set_histogram(histogram);
            family.mut_metric().push(metric);
        }
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn operations_are_exported_under_the_design_names() {
        let metrics = Metrics::default();
        let stats = Arc::new(LiveStats::instrumented(None));
        let ops = OpMetrics::new(&metrics, Arc::clone(&stats)).unwrap();
        let tenant = stats.tenant(&crate::keys::TenantId::parse("acme", "t").unwrap());
        let ago = |d| std::time::Instant::now() - d;
        let fast = ago(Duration::from_micros(300));
        let _ = stats.observe(Op::Get, &tenant, fast, None, Ok::<_, crate::Error>(()));
        let slow = ago(Duration::from_millis(20));
        let failed = Err::<(), _>(crate::Error::internal("x"));
        let _ = stats.observe(Op::Get, &tenant, slow, None, failed);
        stats.record_lookup(&tenant, Op::Get, "k", true);
        ops.sync(&stats.snapshot(), stats.lookups());
        let text = metrics.render();
        let get =
            |le: &str| format!("cache_response_time_ms_bucket{{operation=\"get\",le=\"{le}\"}}");
        // Bounds round up to the live buckets' (0.5 -> 0.511, 25 -> 26.623).
        assert!(text.contains(&format!("{} 0", get("0.255"))), "{text}");
        assert!(text.contains(&format!("{} 1", get("0.511"))), "{text}");
        assert!(text.contains(&format!("{} 1", get("10.239"))), "{text}");
        assert!(text.contains(&format!("{} 2", get("26.623"))), "{text}");
        assert!(text.contains(&format!("{} 2", get("+Inf"))), "{text}");
        assert!(text.contains("cache_response_time_ms_count{operation=\"get\"} 2"));
        assert!(text.contains("cache_operations_total{operation=\"get\",outcome=\"error\"} 1"));
        assert!(text.contains("cache_operations_total{operation=\"get\",outcome=\"ok\"} 1"));
        assert!(text.contains("cache_hits_total 1"));
    }
}
