//! Prometheus metrics of both binaries, with the service design's names.
//!
//! Handles used on the request path are resolved once ([`OpMetrics`] keeps
//! one per operation), so recording is a few atomic adds with no label
//! lookup. Label values come from closed sets (operations, outcomes, job
//! types, matched routes): never a key or a raw path.
//!
//! Metrics are built at start-up from constant names and labels; a bad one is
//! a programming error that every test run would hit, hence the `expect`s.

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::live_stats::{LiveStats, Op};

/// Upper bounds of `cache_response_time_ms`, in milliseconds.
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

#[allow(clippy::expect_used)]
impl Metrics {
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid counter"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid gauge"))
    }

    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help).expect("valid gauge"))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid histogram"))
    }

    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, metric: C) -> C {
        self.registry
            .register(Box::new(metric.clone()))
            .expect("metric names are unique");
        metric
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

/// Cache operations: a latency histogram handle per operation (recorded on
/// each call), and outcome and lookup counters mirrored from the live
/// figures when scraped.
#[derive(Debug, Clone)]
pub struct OpMetrics {
    latency: Vec<Histogram>,
    ok: Vec<IntCounter>,
    errors: Vec<IntCounter>,
    hits: IntCounter,
    misses: IntCounter,
}

impl OpMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let latency = metrics.histogram_vec(
            "cache_response_time_ms",
            "Cache operation latency in milliseconds, Redis round trip included.",
            &["operation"],
            &RESPONSE_TIME_BUCKETS_MS,
        );
        let outcomes = metrics.counter_vec(
            "cache_operations_total",
            "Cache operations by outcome; rate() of it is the operations per second.",
            &["operation", "outcome"],
        );
        Self {
            latency: Op::ALL
                .iter()
                .map(|op| latency.with_label_values(&[op.name()]))
                .collect(),
            ok: Op::ALL
                .iter()
                .map(|op| outcomes.with_label_values(&[op.name(), "ok"]))
                .collect(),
            errors: Op::ALL
                .iter()
                .map(|op| outcomes.with_label_values(&[op.name(), "error"]))
                .collect(),
            hits: metrics.counter("cache_hits_total", "Reads that found their key."),
            misses: metrics.counter("cache_misses_total", "Reads that did not find their key."),
        }
    }

    pub fn record(&self, op: Op, elapsed: Duration) {
        if let Some(h) = self.latency.get(op as usize) {
            h.observe(elapsed.as_secs_f64() * 1000.0);
        }
    }

    /// Brings the counters up to the live figures (call before rendering).
    pub fn sync(&self, stats: &LiveStats) {
        for snapshot in stats.snapshot() {
            let i = snapshot.op as usize;
            if let (Some(ok), Some(errors)) = (self.ok.get(i), self.errors.get(i)) {
                mirror(ok, snapshot.calls - snapshot.errors.min(snapshot.calls));
                mirror(errors, snapshot.errors);
            }
        }
        let (hits, misses) = stats.lookups();
        mirror(&self.hits, hits);
        mirror(&self.misses, misses);
    }
}

/// Job outcomes and durations, recorded by the worker.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    pub outcomes: IntCounterVec,
    pub duration: HistogramVec,
    pub oplog_persisted: IntCounter,
    pub audit_delivered: IntCounter,
}

impl JobMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            outcomes: metrics.counter_vec(
                "cache_jobs_total",
                "Finished jobs by type and outcome (succeeded, failed, cancelled).",
                &["type", "outcome"],
            ),
            duration: metrics.histogram_vec(
                "cache_job_duration_seconds",
                "Time from a job's start to its outcome.",
                &["type"],
                &DURATION_BUCKETS_S,
            ),
            oplog_persisted: metrics.counter(
                "cache_oplog_persisted_total",
                "Operation log records written to PostgreSQL (duplicates not counted).",
            ),
            audit_delivered: metrics.counter(
                "cache_audit_events_delivered_total",
                "Audit events the audit service accepted.",
            ),
        }
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
        let ops = OpMetrics::new(&metrics);
        let stats = LiveStats::instrumented(ops.clone(), None);
        let tenant = stats.tenant(&crate::keys::TenantId::parse("acme", "t").unwrap());
        let ago = |d| std::time::Instant::now() - d;
        let _ = stats.observe(
            Op::Get,
            &tenant,
            ago(Duration::from_micros(300)),
            None,
            Ok::<_, crate::Error>(()),
        );
        let _ = stats.observe(
            Op::Get,
            &tenant,
            ago(Duration::from_millis(20)),
            None,
            Err::<(), _>(crate::Error::internal("x")),
        );
        stats.record_lookup(&tenant, Op::Get, "k", true);
        ops.sync(&stats);
        let text = metrics.render();
        assert!(
            text.contains("cache_response_time_ms_bucket{operation=\"get\",le=\"0.5\"} 1"),
            "{text}"
        );
        assert!(text.contains("cache_response_time_ms_bucket{operation=\"get\",le=\"25\"} 2"));
        assert!(text.contains("cache_operations_total{operation=\"get\",outcome=\"error\"} 1"));
        assert!(text.contains("cache_operations_total{operation=\"get\",outcome=\"ok\"} 1"));
        assert!(text.contains("cache_hits_total 1"));
    }

    #[test]
    fn mirrored_counters_follow_their_source() {
        let metrics = Metrics::default();
        let c = metrics.counter("x_total", "x");
        mirror(&c, 5);
        mirror(&c, 3);
        mirror(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
