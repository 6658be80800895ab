//! What the api tells about itself: Prometheus `/metrics`, per-request HTTP
//! figures and log context, and the background tasks that ship statistics
//! rollups and operation-log batches to the queue and post the metrics
//! report to the monitoring service. Nothing here runs on the request path
//! beyond counting in memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cache_jobs::upkeep::{LogPersistJob, StatsRollupJob, TenantFigures};
use cache_shared::config::ObservabilitySettings;
use cache_shared::live_stats::{LiveStats, hit_rate};
use cache_shared::metrics::{self, MetricError, Metrics, OpMetrics};
use cache_shared::oplog::{self, OpLog, OpLogMetrics, RequestContext};
use cache_shared::redis::BYTES_PER_MIB;
use cache_shared::rollup::RecentFigures;
use cache_shared::saturating_i64;
use chrono::{DateTime, TimeZone, Utc};
use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use tokio::sync::watch;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::state::AppState;

/// The api's metrics beyond the cache operations' own (which `LiveStats`
/// records), refreshed from their sources at scrape time where they are
/// figures of Redis or the queue.
#[derive(Debug)]
pub struct ApiMetrics {
    pub registry: Metrics,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
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
            scrape: tokio::sync::Mutex::new(()),
            registry,
        })
    }

    /// Refreshes the figures of Redis, the pool and the queues, then renders
    /// everything. A dependency that does not answer leaves its figures as
    /// they were (the scrape itself never fails).
    pub async fn render(&self, state: &AppState) -> String {
        // Redis and the queues first, outside the lock: a slow Redis never
        // lines scrapes up behind one another.
        let (figures, depth) =
            tokio::join!(state.cache.redis().server_figures(), state.jobs.depth());
        // One at a time from here: mirrored counters add the difference.
        let _one_at_a_time = self.scrape.lock().await;
        let stats = state.cache.stats();
        let snapshot = stats.snapshot();
        let lookups = stats.lookups();
        if let Some(ops) = &state.instruments.ops {
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
        let connections = state.cache.redis().connection_stats();
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

/// `GET /metrics`: the Prometheus text format; with `METRICS_TOKEN` set, only
/// for `Authorization: Bearer <that token>`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)
    )
)]
pub async fn scrape(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !state.metrics_tokens.is_empty() {
        let given = crate::auth::bearer(&headers).unwrap_or("");
        if !state.metrics_tokens.accepts(given.as_bytes()) {
            return Err(ApiError::Unauthorized {
                message: "missing or wrong metrics token",
                bearer: true,
            });
        }
    }
    let body = state.instruments.metrics.render(&state).await;
    Ok(([(header::CONTENT_TYPE, metrics::TEXT_FORMAT)], body).into_response())
}

/// Methods with their own metric slots; any other counts as `OTHER`.
const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];
/// Statuses with their own counter slots; others are looked up by label.
const STATUSES: [u16; 15] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 503,
];

/// HTTP figures by route template: the templates are matched here (the same
/// syntax as the router's), and each route's metric handles are resolved
/// once, so counting a request takes no hashing, locking or allocation.
#[derive(Debug)]
pub struct HttpRoutes {
    templates: matchit::Router<usize>,
    names: Vec<String>,
    slots: Vec<RouteSlots>,
}

#[derive(Debug, Default)]
struct RouteSlots {
    duration: [OnceLock<Histogram>; METHODS.len() + 1],
    status: [[OnceLock<IntCounter>; STATUSES.len()]; METHODS.len() + 1],
}

/// The label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

impl HttpRoutes {
    /// The table for `templates` (e.g. `/internal/cache/get/{key}`).
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a str>) -> Self {
        let mut router = matchit::Router::new();
        let mut names = Vec::new();
        for template in templates {
            if router.insert(template, names.len()).is_ok() {
                names.push(template.to_owned());
            } else {
                tracing::warn!(template, "route template not counted separately");
            }
        }
        names.push(UNMATCHED.to_owned());
        let slots = names.iter().map(|_| RouteSlots::default()).collect();
        Self {
            templates: router,
            names,
            slots,
        }
    }

    fn route_of(&self, path: &str) -> usize {
        self.templates
            .at(path)
            .map_or(self.names.len() - 1, |m| *m.value)
    }

    fn observe(
        &self,
        metrics: &ApiMetrics,
        route: usize,
        method: &Method,
        status: StatusCode,
        took: Duration,
    ) {
        let (Some(name), Some(slots)) = (self.names.get(route), self.slots.get(route)) else {
            return;
        };
        let m = METHODS
            .iter()
            .position(|known| known == method)
            .unwrap_or(METHODS.len());
        // Methods outside the few with slots share one label: a client's
        // invented method never becomes a series of its own.
        let method = METHODS.get(m).map_or("OTHER", Method::as_str);
        let duration = slots.duration[m].get_or_init(|| {
            metrics
                .http_duration
                .with_label_values(&[method, name.as_str()])
        });
        duration.observe(took.as_secs_f64());
        match STATUSES.iter().position(|&s| s == status.as_u16()) {
            Some(i) => slots.status[m][i]
                .get_or_init(|| {
                    metrics.http_requests.with_label_values(&[
                        method,
                        name.as_str(),
                        status.as_str(),
                    ])
                })
                .inc(),
            None => metrics
                .http_requests
                .with_label_values(&[method, name.as_str(), status.as_str()])
                .inc(),
        }
    }
}

/// Gives each request its log context and counts it by method, route
/// template and status. It wraps the router as a whole: no per-route boxing.
#[derive(Debug, Clone)]
pub struct ObserveRequests {
    observer: Arc<Observer>,
}

/// What counting a request needs: the metrics (in the state) and the
/// route templates requests are counted under.
#[derive(Debug)]
struct Observer {
    state: AppState,
    routes: HttpRoutes,
}

impl ObserveRequests {
    pub fn new(state: AppState, routes: HttpRoutes) -> Self {
        Self {
            observer: Arc::new(Observer { state, routes }),
        }
    }
}

impl<S> Layer<S> for ObserveRequests {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            observer: Arc::clone(&self.observer),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ObserveService<S> {
    inner: S,
    observer: Arc<Observer>,
}

impl<S, B> Service<axum::http::Request<B>> for ObserveService<S>
where
    S: Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ObserveFuture<TaskLocalFuture<RequestContext, S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let context = RequestContext::new(
            req.headers()
                .get(&crate::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
        let method = req.method().clone();
        let route = self.observer.routes.route_of(req.uri().path());
        ObserveFuture {
            started: Instant::now(),
            inner: oplog::scope(context, self.inner.call(req)),
            method,
            route,
            observer: Arc::clone(&self.observer),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future inside its log context; counts it when done.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        method: Method,
        route: usize,
        observer: Arc<Observer>,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        this.observer.routes.observe(
            &this.observer.state.instruments.metrics,
            *this.route,
            this.method,
            response.status(),
            this.started.elapsed(),
        );
        Poll::Ready(Ok(response))
    }
}

/// The background tasks of one api instance.
#[derive(Debug)]
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Starts shipping rollups and log batches (and the monitoring report
    /// when a URL is set).
    pub fn start(state: &AppState) -> Self {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(crate::limits_refresh::keep_current(
            state.clone(),
            stopped.clone(),
        ))];
        if state.cache.stats().is_enabled() {
            tasks.push(tokio::spawn(ship_rollups(state.clone(), stopped.clone())));
        }
        if let Some(oplog) = state.cache.stats().oplog().cloned() {
            tasks.push(tokio::spawn(ship_logs(
                state.clone(),
                oplog,
                stopped.clone(),
            )));
        }
        if state.observability.monitoring_service_url.is_some() {
            tasks.push(tokio::spawn(report_metrics(state.clone(), stopped)));
        }
        Self { stop, tasks }
    }

    /// Ships what is left (the current period, buffered records) and stops.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(err) = task.await {
                tracing::warn!(%err, "a background task ended abnormally");
            }
        }
    }
}

/// Minutes without a call after which a tenant's live figures are dropped
/// (beyond the longest window they feed: 15 minutes).
const IDLE_TENANT_MINUTES: u64 = 30;

/// Start of the period of `period` length that contains `at`.
pub fn period_start(at: DateTime<Utc>, period: Duration) -> DateTime<Utc> {
    let len = i64::try_from(period.as_secs()).unwrap_or(60).max(1);
    let start = at.timestamp().div_euclid(len) * len;
    Utc.timestamp_opt(start, 0).single().unwrap_or(at)
}

async fn ship_rollups(state: AppState, mut stop: watch::Receiver<bool>) {
    let period = state.observability.rollup_period();
    let step = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::seconds(60));
    // Jobs the queue did not confirm, pushed again unchanged: one that did
    // land after all is then a re-delivery, which the worker ignores.
    let mut unconfirmed: Vec<StatsRollupJob> = Vec::new();
    loop {
        let now = Utc::now();
        let start = period_start(now, period);
        let wait = (start + step - now).to_std().unwrap_or(Duration::ZERO);
        let stopping = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            _ = stop.changed() => true,
        };
        // At a boundary this is the period that just ended; at shutdown, the
        // one still running (no later ship of this instance will cover it).
        let ended = state.instruments.recent.next_period(state.cache.stats());
        // Just shipped: tenants idle for a while can go without losing a count.
        let forgotten = state.cache.stats().forget_idle(IDLE_TENANT_MINUTES);
        state.instruments.recent.forget(&forgotten);
        if !ended.is_empty() {
            unconfirmed.push(StatsRollupJob {
                id: ulid::Ulid::new().to_string(),
                instance_id: state.instance_id.clone(),
                period_start: start,
                period_minutes: i32::try_from(period.as_secs() / 60).unwrap_or(1),
                tenants: ended
                    .into_iter()
                    .map(|(tenant_id, figures)| TenantFigures { tenant_id, figures })
                    .collect(),
            });
        }
        let mut kept = Vec::new();
        for job in unconfirmed.drain(..) {
            if let Err(err) = state.jobs.push_internal(job.clone()).await {
                tracing::warn!(%err, period = %job.period_start, "statistics rollup not confirmed by the queue; pushing it again later");
                kept.push(job);
            }
        }
        unconfirmed = kept;
        if stopping {
            if !unconfirmed.is_empty() {
                tracing::error!(
                    periods = unconfirmed.len(),
                    "statistics rollups lost at shutdown: the queue did not take them"
                );
            }
            return;
        }
    }
}

async fn ship_logs(state: AppState, oplog: Arc<OpLog>, mut stop: watch::Receiver<bool>) {
    let interval = state.observability.log_flush_interval();
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            () = oplog.batch_ready() => false,
            _ = stop.changed() => true,
        };
        loop {
            let batch = oplog.take_batch();
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let job = LogPersistJob {
                id: ulid::Ulid::new().to_string(),
                records: batch,
            };
            match state.jobs.push_internal(job.clone()).await {
                Ok(()) => oplog.metrics.shipped.inc_by(n),
                Err(err) => {
                    tracing::warn!(%err, records = n, "operation log batch not queued; kept for the next try");
                    oplog.put_back(job.records);
                    break;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Posts the metrics report every `MONITORING_INTERVAL_S`; a report that
/// still fails after the retries is dropped (the next one supersedes it).
async fn report_metrics(state: AppState, mut stop: watch::Receiver<bool>) {
    let Some(base) = state.observability.monitoring_service_url.clone() else {
        return;
    };
    let url = format!("{}/internal/metrics/cache", base.trim_end_matches('/'));
    let client = cache_shared::outbound::Client::new(&state.observability.outbound);
    let mut ticker = tokio::time::interval(Duration::from_secs(
        state.observability.monitoring_interval_s,
    ));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let report = match crate::routes::health::metrics_report(&state).await {
            Ok(report) => report,
            Err(err) => {
                tracing::warn!(%err, "metrics report not built; skipping this interval");
                continue;
            }
        };
        let body = serde_json::json!({
            "service": crate::error::SERVICE_NAME,
            "instanceId": state.instance_id,
            "timestamp": crate::views::timestamp(Utc::now()),
            "metrics": report,
        });
        let sent = tokio::select! {
            sent = client.post_with_retries(&url, &body) => sent,
            _ = stop.changed() => return,
        };
        if let Err(err) = sent {
            tracing::warn!(%err, "metrics report not delivered; the next interval sends a fresh one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_route_template_and_strays_to_unmatched() {
        let routes = HttpRoutes::new([
            "/internal/cache/get/{key}",
            "/api/v1/cache/keys/{key}/ttl",
            "/api/v1/cache/keys/exists",
            "/metrics",
        ]);
        let name = |path: &str| routes.names[routes.route_of(path)].clone();
        assert_eq!(
            name("/internal/cache/get/user:1"),
            "/internal/cache/get/{key}"
        );
        assert_eq!(
            name("/api/v1/cache/keys/a%2Fb/ttl"),
            "/api/v1/cache/keys/{key}/ttl"
        );
        assert_eq!(
            name("/api/v1/cache/keys/exists"),
            "/api/v1/cache/keys/exists"
        );
        assert_eq!(name("/metrics"), "/metrics");
        assert_eq!(name("/no/such/path"), UNMATCHED);
        assert_eq!(name("/internal/cache/get/a/b"), UNMATCHED);
    }
}
