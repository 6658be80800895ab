//! Prometheus metrics of both binaries, with the service design's names.
//!
//! Handles used on the request path are resolved once ([`OpMetrics`] keeps
//! one per operation), so recording is a few atomic adds with no label
//! lookup. Label values come from closed sets (operations, outcomes, job
//! types, matched routes): never a key or a raw path.
//!
//! Metrics are built at start-up from constant names and labels; a bad one
//! is a programming error, reported as a start-up failure.

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, proto,
};

use crate::live_stats::{LiveStats, Op, OpSnapshot, bucket_upper_us};

/// Upper bounds of `cache_response_time_ms`, in milliseconds (each rounded up
/// to the live histogram's bucket bound).
const RESPONSE_TIME_BUCKETS_MS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
];

/// Upper bounds of HTTP and job durations, in seconds.
const DURATION_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// The content type of the text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds metrics into one registry.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    registry: Registry,
}

/// A metric that could not be defined or registered (a bad name, or a name
/// used twice): a programming error, reported at start-up.
pub type MetricError = prometheus::Error;

impl Metrics {
    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricError> {
        self.add(IntCounter::new(name, help)?)
    }

    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricError> {
        self.add(IntGauge::new(name, help)?)
    }

    pub fn float_gauge(&self, name: &str, help: &str) -> Result<Gauge, MetricError> {
        self.add(Gauge::new(name, help)?)
    }

    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricError> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, MetricError> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<HistogramVec, MetricError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels)?)
    }

    /// Exports a metric built elsewhere.
    pub fn add<C: Collector + Clone + 'static>(&self, metric: C) -> Result<C, MetricError> {
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    /// Everything registered, in the text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|err| format!("# metrics could not be encoded: {err}\n"))
    }
}

/// Mirrors a monotonic count kept elsewhere (an atomic of the Redis client,
/// say) into a Prometheus counter at scrape time.
pub fn mirror(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

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
                (0..crate::live_stats::BUCKETS)
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

/// Job outcomes and durations, recorded by the worker.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    pub outcomes: IntCounterVec,
    pub duration: HistogramVec,
    pub oplog_persisted: IntCounter,
    pub oplog_rejected: IntCounter,
    pub audit_delivered: IntCounter,
}

impl JobMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, MetricError> {
        Ok(Self {
            outcomes: metrics.counter_vec(
                "cache_jobs_total",
                "Finished jobs by type and outcome (succeeded, failed, cancelled).",
                &["type", "outcome"],
            )?,
            duration: metrics.histogram_vec(
                "cache_job_duration_seconds",
                "Time from a job's start to its outcome.",
                &["type"],
                &DURATION_BUCKETS_S,
            )?,
            oplog_persisted: metrics.counter(
                "cache_oplog_persisted_total",
                "Operation log records written to PostgreSQL (duplicates not counted).",
            )?,
            oplog_rejected: metrics.counter(
                "cache_oplog_rejected_total",
                "Operation log records PostgreSQL refused (a field too long or malformed); the rest of their batch is stored.",
            )?,
            audit_delivered: metrics.counter(
                "cache_audit_events_delivered_total",
                "Audit events the audit service accepted.",
            )?,
        })
    }

    pub fn finished(&self, job_type: &str, outcome: &str, took: Duration) {
        self.outcomes.with_label_values(&[job_type, outcome]).inc();
        self.duration
            .with_label_values(&[job_type])
            .observe(took.as_secs_f64());
    }
}

/// Bounds of HTTP request durations, for the api's own histogram.
pub fn duration_buckets() -> &'static [f64] {
    &DURATION_BUCKETS_S
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn mirrored_counters_follow_their_source() {
        let metrics = Metrics::default();
        let c = metrics.counter("x_total", "x").unwrap();
        mirror(&c, 5);
        mirror(&c, 3);
        mirror(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
