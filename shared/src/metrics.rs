//! Prometheus metrics of both binaries, with the service design's names.
//!
//! The cache operations' own metrics are built from the live figures
//! (`stats::export`). Label values come from closed sets (operations,
//! outcomes, job types, matched routes): never a key or a raw path.
//!
//! Metrics are built at start-up from constant names and labels; a bad one
//! is a programming error, reported as a start-up failure.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Upper bounds of `cache_response_time_ms`, in milliseconds (each rounded up
/// to the live histogram's bucket bound).
pub(crate) const RESPONSE_TIME_BUCKETS_MS: [f64; 13] = [
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

/// The data keys' seal counts as `cache_values_sealed_total{key}`, read at
/// each scrape (the worker seals too: preloads, restores, `reencrypt`).
#[derive(Clone)]
pub struct SealCounts {
    keys: std::sync::Arc<crate::sealing::Keyring>,
    counter: IntCounterVec,
}

impl std::fmt::Debug for SealCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealCounts")
            .field("keys", &self.keys)
            .finish()
    }
}

impl SealCounts {
    /// # Errors
    ///
    /// Never with the fixed name and labels (a [`MetricError`] otherwise).
    pub fn new(keys: std::sync::Arc<crate::sealing::Keyring>) -> Result<Self, MetricError> {
        let counter = IntCounterVec::new(
            Opts::new(
                "cache_values_sealed_total",
                "Values sealed by this process, per data key id (AES-GCM's random nonces allow 2^32 per key: rotate well before).",
            ),
            &["key"],
        )?;
        Ok(Self { keys, counter })
    }
}

impl Collector for SealCounts {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        for (key, seals) in self.keys.seals() {
            mirror(&self.counter.with_label_values(&[key]), seals);
        }
        self.counter.collect()
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
    fn mirrored_counters_follow_their_source() {
        let metrics = Metrics::default();
        let c = metrics.counter("x_total", "x").unwrap();
        mirror(&c, 5);
        mirror(&c, 3);
        mirror(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
