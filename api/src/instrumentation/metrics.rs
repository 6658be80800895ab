//! The api's Prometheus metrics beyond the cache operations' own, and the
//! instruments the state holds. Nothing here knows the app state: a scrape
//! hands in what it reads.

use std::sync::{Arc, OnceLock};

use cache_jobs::queue::JobQueue;
use cache_shared::cache::Cache;
use cache_shared::config::ObservabilitySettings;
use cache_shared::metrics::{self, MetricError, Metrics};
use cache_shared::oplog::{self, OpLog, OpLogMetrics};
use cache_shared::redis::BYTES_PER_MIB;
use cache_shared::saturating_i64;
use cache_shared::stats::export::OpMetrics;
use cache_shared::stats::histogram::hit_rate;
use cache_shared::stats::live::LiveStats;
use cache_shared::stats::rollup::RecentFigures;
use prometheus::{Gauge, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

/// The api's metrics beyond the cache operations' own (which `LiveStats`
/// records), refreshed from their sources at scrape time where they are
/// figures of Redis or the queue.
#[derive(Debug)]
pub struct ApiMetrics {
    pub registry: Metrics,
    pub(super) http_requests: IntCounterVec,
    pub(super) http_duration: HistogramVec,
    ops_per_second: Gauge,
    hit_rate: Gauge,
    hit_rate_exported: OnceLock<()>,
    error_rate: Gauge,
    memory_mb: Gauge,
    memory_max_mb: Gauge,
    active_connections: IntGauge,
    total_keys: IntGauge,
    timeouts: IntCounter,
    failovers: IntCounter,
    pool_size: IntGauge,
    pool_in_use: IntGauge,
    pool_idle: IntGauge,
    pool_waiting: IntGauge,
    queue_depth: IntGaugeVec,
    queue_dead: IntGaugeVec,
    /// Per Redis Cluster node, labelled by address (cluster mode only).
    node_up: IntGaugeVec,
    node_memory: IntGaugeVec,
    node_keys: IntGaugeVec,
    /// Internal-plane calls by service: the configured names and `service`
    /// (the anonymous tokens), a closed set.
    service_calls: IntCounterVec,
    near_hits: IntCounter,
    near_misses: IntCounter,
    near_invalidations: IntCounter,
    near_bytes: IntGauge,
    /// Scrapes mirror counters; one at a time keeps them monotonic.
    scrape: tokio::sync::Mutex<()>,
}

/// What the instrumentation switch builds.
#[derive(Debug)]
pub struct Instruments {
    pub metrics: ApiMetrics,
    /// Periods shipped and kept for sliding-window figures.
    pub recent: RecentFigures,
    /// `None` when instrumentation is off.
    pub ops: Option<OpMetrics>,
}

impl Instruments {
    /// The instruments and the live figures cache operations record into
    /// (with the operation log, when instrumentation is on).
    ///
    /// # Errors
    ///
    /// A metric that cannot be defined (a programming error).
    pub fn new(settings: &ObservabilitySettings) -> Result<(Self, Arc<LiveStats>), MetricError> {
        let registry = Metrics::default();
        let (stats, ops) = if settings.instrumentation {
            let oplog = Arc::new(OpLog::new(
                settings.log_read_sample_rate,
                usize::try_from(settings.log_batch_size).unwrap_or(1000),
                oplog::DEFAULT_CAPACITY,
                OpLogMetrics::new(&registry)?,
            ));
            let stats = Arc::new(LiveStats::instrumented(Some(Arc::clone(&oplog))));
            let ops = OpMetrics::new(&registry, Arc::clone(&stats))?;
            (stats, Some(ops))
        } else {
            (Arc::new(LiveStats::disabled()), None)
        };
        let instruments = Self {
            metrics: ApiMetrics::new(registry)?,
            recent: RecentFigures::default(),
            ops,
        };
        Ok((instruments, stats))
    }
}

impl ApiMetrics {
    fn new(registry: Metrics) -> Result<Self, MetricError> {
        let m = &registry;
        Ok(Self {
            http_requests: m.counter_vec(
                "http_requests_total",
                "HTTP requests by method, matched route and status.",
                &["method", "route", "status"],
            )?,
            http_duration: m.histogram_vec(
                "http_request_duration_seconds",
                "HTTP request durations by method and matched route.",
                &["method", "route"],
                metrics::duration_buckets(),
            )?,
            ops_per_second: m.float_gauge(
                "cache_operations_per_second",
                "Cache operations per second of this instance over the last minute.",
            )?,
            hit_rate: Gauge::new(
                "cache_hit_rate_percentage",
                "Percent of this instance's reads that found their key, since start.",
            )?,
            hit_rate_exported: OnceLock::new(),
            error_rate: m.float_gauge(
                "cache_error_rate_percentage",
                "Percent of this instance's cache operations that failed, since start.",
            )?,
            memory_mb: m.float_gauge("cache_memory_usage_mb", "Redis used_memory in MiB.")?,
            memory_max_mb: m.float_gauge(
                "cache_memory_max_mb",
                "Redis maxmemory in MiB (0: no limit).",
            )?,
            active_connections: m
                .gauge("cache_active_connections", "Clients connected to Redis.")?,
            total_keys: m.gauge("cache_total_keys", "Keys in Redis, all tenants.")?,
            timeouts: m.counter(
                "cache_timeout_total",
                "Cache calls that gave up on Redis (deadline passed or refused).",
            )?,
            failovers: m.counter(
                "cache_failover_total",
                "Times Redis answered again after failing for a second or more.",
            )?,
            pool_size: m.gauge("cache_pool_size", "Redis connections open.")?,
            pool_in_use: m.gauge("cache_pool_in_use", "Redis connections lent to requests.")?,
            pool_idle: m.gauge("cache_pool_idle", "Redis connections idle.")?,
            pool_waiting: m.gauge(
                "cache_pool_waiting",
                "Requests waiting for a Redis connection.",
            )?,
            queue_depth: m.gauge_vec("cache_queue_depth", "Jobs waiting per queue.", &["type"])?,
            queue_dead: m.gauge_vec(
                "cache_queue_dead",
                "Jobs the queue gave up on, per queue.",
                &["type"],
            )?,
            node_up: m.gauge_vec(
                "cache_redis_node_up",
                "1 when a Redis Cluster node is up (a primary: it answered this scrape).",
                &["node", "role"],
            )?,
            node_memory: m.gauge_vec(
                "cache_redis_node_memory_bytes",
                "used_memory of each Redis Cluster primary.",
                &["node"],
            )?,
            node_keys: m.gauge_vec(
                "cache_redis_node_keys",
                "Keys held by each Redis Cluster primary.",
                &["node"],
            )?,
            service_calls: m.counter_vec(
                "cache_internal_calls_total",
                "Calls of the internal plane by calling service.",
                &["service"],
            )?,
            near_hits: m.counter(
                "cache_near_cache_hits_total",
                "Reads served by this instance's near cache.",
            )?,
            near_misses: m.counter(
                "cache_near_cache_misses_total",
                "Reads of near-cached namespaces that went to Redis.",
            )?,
            near_invalidations: m.counter(
                "cache_near_cache_invalidations_total",
                "Near-cache entries dropped because their key changed.",
            )?,
            near_bytes: m.gauge(
                "cache_near_cache_bytes",
                "Bytes held by this instance's near cache.",
            )?,
            scrape: tokio::sync::Mutex::new(()),
            registry,
        })
    }

    /// Refreshes the figures of Redis, the pool and the queues, then renders
    /// everything. A dependency that does not answer leaves its figures as
    /// they were (the scrape itself never fails).
    pub async fn render(
        &self,
        cache: &Cache,
        jobs: &JobQueue,
        ops: Option<&OpMetrics>,
        services: &cache_shared::tokens::ServiceDirectory,
    ) -> String {
        // Redis and the queues first, outside the lock: a slow Redis never
        // lines scrapes up behind one another.
        let (figures, depth, nodes) = tokio::join!(
            cache.redis().server_figures(),
            jobs.depth(),
            cache.redis().probe_nodes()
        );
        // One at a time from here: mirrored counters add the difference.
        let _one_at_a_time = self.scrape.lock().await;
        let stats = cache.stats();
        let snapshot = stats.snapshot();
        let lookups = stats.lookups();
        if let Some(ops) = ops {
            ops.sync(&snapshot, lookups);
        }
        self.ops_per_second.set(stats.operations_per_second());
        if let Some(rate) = hit_rate(lookups) {
            // Exported from the first read on: before it there is no rate.
            self.hit_rate_exported.get_or_init(|| {
                if let Err(err) = self.registry.add(self.hit_rate.clone()) {
                    tracing::error!(%err, "cache_hit_rate_percentage not exported");
                }
            });
            self.hit_rate.set(rate);
        }
        let (calls, errors) = snapshot
            .iter()
            .fold((0, 0), |(c, e), op| (c + op.calls, e + op.errors));
        if calls > 0 {
            self.error_rate.set(errors as f64 * 100.0 / calls as f64);
        }
        for (service, calls) in services.calls() {
            metrics::mirror(
                &self.service_calls.with_label_values(&[service.as_str()]),
                calls,
            );
        }
        if let Some(near) = cache.near_cache() {
            let figures = near.figures();
            metrics::mirror(&self.near_hits, figures.hits);
            metrics::mirror(&self.near_misses, figures.misses);
            metrics::mirror(&self.near_invalidations, figures.invalidations);
            self.near_bytes.set(saturating_i64(figures.bytes));
        }
        let connections = cache.redis().connection_stats();
        metrics::mirror(&self.timeouts, connections.timeouts);
        metrics::mirror(&self.failovers, connections.failovers);
        self.pool_size.set(saturating_i64(connections.size));
        self.pool_in_use.set(saturating_i64(connections.in_use));
        self.pool_idle.set(saturating_i64(connections.idle));
        self.pool_waiting.set(saturating_i64(connections.waiting));
        if let Ok(f) = figures {
            self.memory_mb
                .set(f.used_memory_bytes as f64 / BYTES_PER_MIB);
            self.memory_max_mb
                .set(f.max_memory_bytes as f64 / BYTES_PER_MIB);
            self.active_connections
                .set(saturating_i64(f.connected_clients));
            self.total_keys.set(saturating_i64(f.total_keys));
        }
        if let Ok(Some(nodes)) = nodes {
            // Nodes that left the cluster leave the metrics too.
            self.node_up.reset();
            self.node_memory.reset();
            self.node_keys.reset();
            for probe in nodes {
                let address = probe.node.address.as_str();
                self.node_up
                    .with_label_values(&[address, probe.node.role])
                    .set(i64::from(probe.is_up()));
                if let Some(bytes) = probe.used_memory_bytes {
                    self.node_memory
                        .with_label_values(&[address])
                        .set(saturating_i64(bytes));
                }
                if let Some(keys) = probe.keys.filter(|_| probe.node.is_primary()) {
                    self.node_keys
                        .with_label_values(&[address])
                        .set(saturating_i64(keys));
                }
            }
        }
        if let Ok(depth) = depth {
            for q in depth.queues {
                self.queue_depth
                    .with_label_values(&[q.job_type.as_str()])
                    .set(saturating_i64(q.waiting));
                self.queue_dead
                    .with_label_values(&[q.job_type.as_str()])
                    .set(saturating_i64(q.dead));
            }
        }
        self.registry.render()
    }
}
