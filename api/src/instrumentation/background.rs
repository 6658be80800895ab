//! The api instance's background tasks: shipping statistics rollups and
//! operation-log batches to the queue, posting the metrics report to the
//! monitoring service, keeping tenant limits current and the near cache
//! coherent.

use std::sync::Arc;
use std::time::Duration;

use cache_jobs::upkeep::{LogPersistJob, StatsRollupJob, TenantFigures};
use cache_shared::oplog::OpLog;
use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::watch;

use crate::state::AppState;

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
        if let Some(near) = state.cache.near_cache() {
            tasks.push(tokio::spawn(Arc::clone(near).track(
                state.redis_settings.clone(),
                state.cache.namespace_book(),
                format!("near-cache-{}", state.instance_id),
                stopped.clone(),
            )));
        }
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

/// Quick retries of what is left to ship at shutdown.
const SHUTDOWN_RETRIES: u32 = 5;
const SHUTDOWN_RETRY_PAUSE: Duration = Duration::from_millis(200);

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
            // The queue's connection may have been driven by a serving
            // thread's runtime, gone now: it reconnects on this one.
            for _ in 0..SHUTDOWN_RETRIES {
                if unconfirmed.is_empty() {
                    break;
                }
                tokio::time::sleep(SHUTDOWN_RETRY_PAUSE).await;
                let mut kept = Vec::new();
                for job in unconfirmed.drain(..) {
                    if state.jobs.push_internal(job.clone()).await.is_err() {
                        kept.push(job);
                    }
                }
                unconfirmed = kept;
            }
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
        // At shutdown there is no next try: a few quick ones instead (see
        // `ship_rollups`).
        let mut tries = if stopping { SHUTDOWN_RETRIES } else { 0 };
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
                    if tries == 0 {
                        break;
                    }
                    tries -= 1;
                    tokio::time::sleep(SHUTDOWN_RETRY_PAUSE).await;
                }
            }
        }
        if stopping {
            if !oplog.is_empty() {
                tracing::error!(
                    records = oplog.len(),
                    "operation-log records lost at shutdown: the queue did not take them"
                );
            }
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
