//! The operation log, api side: every write, delete, expire and failure (and
//! a sample of reads) becomes a [`LogRecord`] in an in-memory buffer that a
//! background task ships to the queue in batches; the worker persists them
//! (`db::oplog`). The request path only pushes onto a vector.
//!
//! Which request a record belongs to comes from a task-local
//! [`RequestContext`] that the api's middleware sets around each request.

use std::cell::{Cell, OnceCell};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntGauge};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::stats::op::Op;

/// One logged operation. `(request_id, operation, item, occurred_at)` is
/// unique: a batch persisted twice lands once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    pub request_id: String,
    /// Position of the record within its request (a batch write logs each key).
    pub item: i32,
    pub tenant_id: String,
    pub operation: String,
    pub cache_key: Option<String>,
    /// `hit`, `miss`, `ok` or `error`.
    pub outcome: String,
    pub latency_us: i64,
    pub value_bytes: Option<i64>,
    pub error_code: Option<String>,
    pub actor: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// How a logged operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Ok,
    /// Failed, with the error's code.
    Error(&'static str),
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Ok => "ok",
            Outcome::Error(_) => "error",
        }
    }
}

/// The request a record belongs to: its id, who made it, and how many
/// records it has produced so far.
#[derive(Debug)]
pub struct RequestContext {
    /// Inline, as every request carries one: no allocation per request.
    request_id: RequestId,
    actor: OnceCell<Box<str>>,
    items: Cell<i32>,
}

impl RequestContext {
    /// A caller's `X-Request-Id` is kept to the log column's 64 bytes.
    pub fn new(request_id: &str) -> Self {
        let mut end = request_id.len().min(MAX_REQUEST_ID_BYTES);
        while !request_id.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; MAX_REQUEST_ID_BYTES];
        bytes[..end].copy_from_slice(&request_id.as_bytes()[..end]);
        Self {
            request_id: RequestId { bytes, len: end },
            actor: OnceCell::new(),
            items: Cell::new(0),
        }
    }
}

/// A request id of at most [`MAX_REQUEST_ID_BYTES`], cut at a character
/// boundary, so always UTF-8.
#[derive(Debug)]
struct RequestId {
    bytes: [u8; MAX_REQUEST_ID_BYTES],
    len: usize,
}

impl RequestId {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

/// Width of the log's `request_id` column.
const MAX_REQUEST_ID_BYTES: usize = 64;

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// `fut` (one request) with `context` as its log context.
pub fn scope<F: Future>(
    context: RequestContext,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<RequestContext, F> {
    REQUEST.scope(context, fut)
}

/// Names the caller of the current request (an API key id, a service).
pub fn set_actor(actor: &str) {
    let _ = REQUEST.try_with(|c| c.actor.set(actor.into()));
}

/// Records kept in memory at most while the queue cannot take them; beyond
/// it new records are dropped and counted rather than exhausting memory.
pub const DEFAULT_CAPACITY: usize = 200_000;

/// Counters of the log's own health.
#[derive(Debug, Clone)]
pub struct OpLogMetrics {
    pub buffered: IntGauge,
    pub shipped: IntCounter,
    pub dropped: IntCounter,
}

impl OpLogMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, crate::metrics::MetricError> {
        Ok(Self {
            buffered: metrics.gauge(
                "cache_oplog_buffered",
                "Operation log records waiting in memory to be shipped.",
            )?,
            shipped: metrics.counter(
                "cache_oplog_shipped_total",
                "Operation log records handed to the queue.",
            )?,
            dropped: metrics.counter(
                "cache_oplog_dropped_total",
                "Operation log records dropped because the buffer was full.",
            )?,
        })
    }
}

/// The in-memory buffer of records not yet shipped.
#[derive(Debug)]
pub struct OpLog {
    buffer: Mutex<Vec<LogRecord>>,
    capacity: usize,
    /// Reads are logged when a uniform draw falls under this (0 to 1).
    read_sample_rate: f64,
    pub metrics: OpLogMetrics,
    full: tokio::sync::Notify,
    batch: usize,
}

impl OpLog {
    pub fn new(
        read_sample_rate: f64,
        batch: usize,
        capacity: usize,
        metrics: OpLogMetrics,
    ) -> Self {
        Self {
            buffer: Mutex::new(Vec::with_capacity(batch)),
            capacity,
            read_sample_rate: read_sample_rate.clamp(0.0, 1.0),
            metrics,
            full: tokio::sync::Notify::new(),
            batch: batch.max(1),
        }
    }

    /// Records a read, or not, at the sample rate.
    pub fn record_read(&self, tenant: &str, op: Op, key: Option<&str>, outcome: Outcome) {
        if self.read_sample_rate > 0.0 && crate::random::fraction() < self.read_sample_rate {
            self.record(tenant, op.name(), key, outcome, 0, None);
        }
    }

    /// Records one operation (`flush`, or an [`Op`]'s name) of the current request.
    pub fn record(
        &self,
        tenant: &str,
        operation: &str,
        key: Option<&str>,
        outcome: Outcome,
        latency_us: u64,
        value_bytes: Option<usize>,
    ) {
        let (request_id, item, actor) = REQUEST
            .try_with(|c| {
                let item = c.items.get();
                c.items.set(item.saturating_add(1));
                (
                    c.request_id.as_str().to_owned(),
                    item,
                    c.actor.get().map(ToString::to_string),
                )
            })
            .unwrap_or_else(|_| (ulid::Ulid::new().to_string(), 0, None));
        let record = LogRecord {
            request_id,
            item,
            tenant_id: tenant.to_owned(),
            operation: operation.to_owned(),
            cache_key: key.map(ToOwned::to_owned),
            outcome: outcome.name().to_owned(),
            latency_us: crate::saturating_i64(latency_us),
            value_bytes: value_bytes.and_then(|b| i64::try_from(b).ok()),
            error_code: match outcome {
                Outcome::Error(code) => Some(code.to_owned()),
                _ => None,
            },
            actor,
            occurred_at: Utc::now(),
        };
        self.push(record);
    }

    /// Adds a record made elsewhere (an admin action).
    pub fn push(&self, record: LogRecord) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if buffer.len() >= self.capacity {
            drop(buffer);
            self.metrics.dropped.inc();
            return;
        }
        buffer.push(record);
        let len = buffer.len();
        drop(buffer);
        self.metrics.buffered.inc();
        if len == self.batch {
            self.full.notify_one();
        }
    }

    /// Resolves when a full batch is waiting.
    pub async fn batch_ready(&self) {
        self.full.notified().await;
    }

    /// Takes up to one batch of the oldest records.
    pub fn take_batch(&self) -> Vec<LogRecord> {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let batch: Vec<LogRecord> = if buffer.len() <= self.batch {
            std::mem::take(&mut *buffer)
        } else {
            buffer.drain(..self.batch).collect()
        };
        drop(buffer);
        self.metrics
            .buffered
            .sub(crate::saturating_i64(batch.len()));
        batch
    }

    /// Puts back a batch that could not be shipped, ahead of newer records.
    pub fn put_back(&self, batch: Vec<LogRecord>) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let n = batch.len();
        buffer.splice(0..0, batch);
        drop(buffer);
        self.metrics.buffered.add(crate::saturating_i64(n));
    }

    pub fn len(&self) -> usize {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(rate: f64, batch: usize, capacity: usize) -> OpLog {
        OpLog::new(
            rate,
            batch,
            capacity,
            OpLogMetrics::new(&Metrics::default()).unwrap(),
        )
    }

    #[tokio::test]
    async fn records_carry_their_request_and_number_items_within_it() {
        let oplog = log(0.0, 10, 100);
        scope(RequestContext::new("req-1"), async {
            set_actor("key-7");
            oplog.record("acme", "mset", Some("a"), Outcome::Ok, 5, Some(3));
            oplog.record("acme", "mset", Some("b"), Outcome::Ok, 5, Some(4));
        })
        .await;
        let batch = oplog.take_batch();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1].request_id, "req-1");
        assert_eq!((batch[0].item, batch[1].item), (0, 1));
        assert_eq!(batch[1].actor.as_deref(), Some("key-7"));
        assert_eq!(batch[1].value_bytes, Some(4));
        assert!(oplog.is_empty());
    }

    #[test]
    fn reads_are_sampled_near_the_configured_rate() {
        let oplog = log(0.1, 100_000, 100_000);
        for _ in 0..20_000 {
            oplog.record_read("acme", Op::Get, Some("k"), Outcome::Hit);
        }
        let n = oplog.len();
        assert!((1_600..=2_400).contains(&n), "{n} of 20000 at 10%");
        let none = log(0.0, 10, 10);
        none.record_read("acme", Op::Get, Some("k"), Outcome::Hit);
        assert!(none.is_empty());
    }

    #[test]
    fn a_full_buffer_drops_and_counts_and_put_back_keeps_order() {
        let oplog = log(0.0, 2, 3);
        for key in ["a", "b", "c", "d"] {
            oplog.record("acme", "set", Some(key), Outcome::Ok, 1, None);
        }
        assert_eq!(oplog.metrics.dropped.get(), 1);
        let first = oplog.take_batch();
        assert_eq!(first.len(), 2);
        oplog.put_back(first);
        let keys: Vec<_> = oplog
            .take_batch()
            .into_iter()
            .map(|r| r.cache_key.unwrap_or_default())
            .collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(oplog.metrics.buffered.get(), 1);
    }
}
