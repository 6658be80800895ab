//! In-process figures of cache operations: per tenant and operation, calls,
//! errors, hits, misses and a latency histogram; per-second throughput over
//! the last 15 minutes; and a sampled hot-key detector per tenant. All of it
//! is atomics and short critical sections, so the request path pays next to
//! nothing; nothing here talks to Redis or PostgreSQL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::histogram::{BUCKETS, Histogram, Latency, dense_latency, hit_rate};
use super::hot_keys::{FastMap, HOTKEY_SAMPLE_EVERY, HotKey, HotKeys};
use super::op::Op;
use crate::error::Error;
use crate::keys::TenantId;
use crate::oplog::{OpLog, Outcome};

/// Cumulative counters of one tenant at one moment.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub hits: u64,
    pub misses: u64,
    pub ops: Vec<OpTotals>,
}

#[derive(Debug, Clone, Default)]
pub struct OpTotals {
    pub calls: u64,
    pub errors: u64,
    pub sum_us: u64,
    pub max_us: u64,
    pub buckets: Vec<u64>,
}

/// Seconds of per-second throughput kept (the 15-minute rate).
const WINDOW_SECONDS: usize = 900;

#[derive(Debug, Default)]
struct OpCounters {
    calls: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
}

/// Namespaces whose hits and misses a tenant's figures keep (a tenant has
/// at most 100 namespaces; deleted ones linger until the figures are dropped).
const MAX_NAMESPACE_FIGURES: usize = 256;

/// Minutes of per-minute throughput kept per tenant (the 15-minute rate).
const TENANT_MINUTES: usize = 16;

/// Figures of one tenant.
#[derive(Debug)]
pub struct TenantStats {
    tenant: Box<str>,
    ops: [OpCounters; Op::ALL.len()],
    hits: AtomicU64,
    misses: AtomicU64,
    /// Reads answered by a negative entry: neither hits nor misses.
    negatives: AtomicU64,
    /// Hits and misses per namespace prefix (at most [`MAX_NAMESPACE_FIGURES`]).
    namespaces: RwLock<HashMap<Box<str>, [AtomicU64; 2]>>,
    reads_seen: AtomicU64,
    hot: Mutex<HotKeys>,
    minute_stamp: [AtomicU64; TENANT_MINUTES],
    minute_count: [[AtomicU64; Op::ALL.len()]; TENANT_MINUTES],
    created: Instant,
}

impl TenantStats {
    fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.into(),
            ops: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            negatives: AtomicU64::new(0),
            namespaces: RwLock::default(),
            reads_seen: AtomicU64::new(0),
            hot: Mutex::default(),
            minute_stamp: std::array::from_fn(|_| AtomicU64::new(0)),
            minute_count: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            created: Instant::now(),
        }
    }
}

/// Counters of one operation at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpSnapshot {
    #[serde(serialize_with = "op_name")]
    #[schema(value_type = String)]
    pub op: Op,
    pub calls: u64,
    pub errors: u64,
    pub latency: Latency,
}

fn op_name<S: serde::Serializer>(op: &Op, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(op.name())
}

impl TenantStats {
    /// The last minute (Unix minutes) this tenant made a call in; 0 for none.
    fn last_minute(&self) -> u64 {
        self.minute_stamp
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Adds a forgotten tenant's cumulative counts to this one's, so sums
    /// over tenants never go down.
    fn absorb(&self, other: &TenantStats) {
        for (mine, theirs) in self.ops.iter().zip(&other.ops) {
            mine.calls
                .fetch_add(theirs.calls.load(Ordering::Relaxed), Ordering::Relaxed);
            mine.errors
                .fetch_add(theirs.errors.load(Ordering::Relaxed), Ordering::Relaxed);
            mine.latency.absorb(&theirs.latency);
        }
        self.hits
            .fetch_add(other.hits.load(Ordering::Relaxed), Ordering::Relaxed);
        self.misses
            .fetch_add(other.misses.load(Ordering::Relaxed), Ordering::Relaxed);
        self.negatives
            .fetch_add(other.negatives.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn tick(&self, minute: u64, op: Op) {
        let slot = (minute % TENANT_MINUTES as u64) as usize;
        if self.minute_stamp[slot].load(Ordering::Relaxed) != minute
            && self.minute_stamp[slot].swap(minute, Ordering::Relaxed) != minute
        {
            for count in &self.minute_count[slot] {
                count.store(0, Ordering::Relaxed);
            }
        }
        self.minute_count[slot][op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Per-operation rates (ops/s) over the last `minutes` minutes, the
    /// current minute included.
    pub fn rates(&self, minutes: u64) -> Vec<(Op, f64)> {
        self.rates_at(now_seconds() / 60, minutes)
    }

    fn rates_at(&self, now_minute: u64, minutes: u64) -> Vec<(Op, f64)> {
        let minutes = minutes.clamp(1, TENANT_MINUTES as u64 - 1);
        let oldest = now_minute.saturating_sub(minutes - 1);
        let mut totals = vec![0u64; Op::ALL.len()];
        for slot in 0..TENANT_MINUTES {
            let stamp = self.minute_stamp[slot].load(Ordering::Relaxed);
            if stamp >= oldest && stamp <= now_minute {
                for (total, count) in totals.iter_mut().zip(&self.minute_count[slot]) {
                    *total += count.load(Ordering::Relaxed);
                }
            }
        }
        let seconds = self.created.elapsed().as_secs().clamp(1, minutes * 60);
        Op::ALL
            .iter()
            .copied()
            .zip(totals.iter().map(|&t| t as f64 / seconds as f64))
            .collect()
    }

    pub fn lookups(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Reads answered by a negative entry since start.
    pub fn negatives(&self) -> u64 {
        self.negatives.load(Ordering::Relaxed)
    }

    /// Hits and misses of reads in namespace `prefix` since start.
    pub fn namespace_lookups(&self, prefix: &str) -> (u64, u64) {
        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        namespaces.get(prefix).map_or((0, 0), |[hits, misses]| {
            (hits.load(Ordering::Relaxed), misses.load(Ordering::Relaxed))
        })
    }

    fn count_namespace(&self, prefix: &str, hit: bool) {
        let slot = usize::from(!hit);
        {
            let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
            if let Some(counts) = namespaces.get(prefix) {
                counts[slot].fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut namespaces = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        if namespaces.len() >= MAX_NAMESPACE_FIGURES && !namespaces.contains_key(prefix) {
            return;
        }
        namespaces.entry(prefix.into()).or_default()[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<OpSnapshot> {
        snapshot(&self.ops)
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Cumulative per-operation counters and lookups, for period deltas.
    pub(crate) fn totals(&self) -> Totals {
        Totals {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            ops: Op::ALL
                .iter()
                .map(|&op| {
                    let c = &self.ops[op as usize];
                    let (buckets, sum_us, max_us) = c.latency.totals();
                    OpTotals {
                        calls: c.calls.load(Ordering::Relaxed),
                        errors: c.errors.load(Ordering::Relaxed),
                        sum_us,
                        max_us,
                        buckets,
                    }
                })
                .collect(),
        }
    }

    /// The keys read during the period now ending, with estimated reads, and
    /// a fresh detector for the next one.
    pub(crate) fn take_period_hot_keys(&self) -> Vec<(String, u64)> {
        let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut hot.period)
            .counts
            .into_iter()
            .map(|(key, (count, _))| (key, count * HOTKEY_SAMPLE_EVERY))
            .collect()
    }

    /// The hottest keys, most read first.
    pub fn hot_keys(&self, limit: usize) -> Vec<HotKey> {
        let hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<HotKey> = hot
            .since_start
            .counts
            .iter()
            .map(|(key, (count, error))| HotKey {
                key: key.clone(),
                estimated_reads: count * HOTKEY_SAMPLE_EVERY,
                error_bound: error * HOTKEY_SAMPLE_EVERY,
            })
            .collect();
        keys.sort_by(|a, b| {
            b.estimated_reads
                .cmp(&a.estimated_reads)
                .then(a.key.cmp(&b.key))
        });
        keys.truncate(limit);
        keys
    }
}

fn snapshot(ops: &[OpCounters; Op::ALL.len()]) -> Vec<OpSnapshot> {
    Op::ALL
        .iter()
        .map(|&op| {
            let c = &ops[op as usize];
            OpSnapshot {
                op,
                calls: c.calls.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                latency: c.latency.latency(),
            }
        })
        .collect()
}

/// Live figures of one process.
#[derive(Debug)]
pub struct LiveStats {
    /// Off: nothing is counted, exported or logged (the instrumentation switch).
    enabled: bool,
    oplog: Option<Arc<OpLog>>,
    tenants: RwLock<FastMap<String, Arc<TenantStats>>>,
    /// What forgotten (idle) tenants had counted: part of every sum.
    retired: Arc<TenantStats>,
    second_stamp: Box<[AtomicU64]>,
    second_count: Box<[[AtomicU64; Op::ALL.len()]]>,
    started: Instant,
}

impl Default for LiveStats {
    fn default() -> Self {
        Self {
            enabled: true,
            oplog: None,
            tenants: RwLock::new(FastMap::default()),
            retired: Arc::new(TenantStats::new("_retired")),
            second_stamp: (0..WINDOW_SECONDS).map(|_| AtomicU64::new(0)).collect(),
            second_count: (0..WINDOW_SECONDS)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            started: Instant::now(),
        }
    }
}

impl LiveStats {
    /// Figures whose operations are also written to `oplog`.
    pub fn instrumented(oplog: Option<Arc<OpLog>>) -> Self {
        Self {
            oplog,
            ..Self::default()
        }
    }

    /// Counts nothing: the baseline of the instrumentation benchmark.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn oplog(&self) -> Option<&Arc<OpLog>> {
        self.oplog.as_ref()
    }

    /// The figures of `tenant`, created on first use.
    pub fn tenant(&self, tenant: &TenantId) -> Arc<TenantStats> {
        if let Some(stats) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant.as_str())
        {
            return Arc::clone(stats);
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            tenants
                .entry(tenant.as_str().to_owned())
                .or_insert_with(|| Arc::new(TenantStats::new(tenant.as_str()))),
        )
    }

    /// Every tenant seen and not forgotten.
    pub fn tenants(&self) -> Vec<Arc<TenantStats>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// What process-wide sums add up: every tenant, and the forgotten ones.
    fn counted(&self) -> Vec<Arc<TenantStats>> {
        let mut all = self.tenants();
        all.push(Arc::clone(&self.retired));
        all
    }

    /// Forgets tenants without a call in the last `idle_minutes` (their
    /// counts kept in the process-wide sums), so the figures of a process
    /// that has seen many tenants stay bounded; returns the forgotten names.
    /// Call it right after shipping a period, so nothing unshipped is lost.
    pub fn forget_idle(&self, idle_minutes: u64) -> Vec<String> {
        let now = now_seconds() / 60;
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        let idle: Vec<String> = tenants
            .iter()
            // Held elsewhere: a call is counting into it right now.
            .filter(|(_, t)| t.last_minute() + idle_minutes <= now && Arc::strong_count(t) == 1)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &idle {
            if let Some(gone) = tenants.remove(name) {
                self.retired.absorb(&gone);
            }
        }
        idle
    }

    /// Counts one call of `op` on `key` (when it names one) for `tenant`
    /// that began at `started`, passing the result through; a failure is
    /// written to the operation log.
    ///
    /// # Errors
    ///
    /// `result`'s own error, unchanged.
    pub fn observe<T>(
        &self,
        op: Op,
        tenant: &TenantStats,
        started: Instant,
        key: Option<&str>,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        self.observe_writes(op, tenant, started, key, std::iter::empty(), result)
    }

    /// [`LiveStats::observe`] for a write: its success is written to the
    /// operation log too (`key` `None`: a key not to be logged, such as a
    /// session id).
    ///
    /// # Errors
    ///
    /// `result`'s own error, unchanged.
    pub fn observe_write<T>(
        &self,
        op: Op,
        tenant: &TenantStats,
        started: Instant,
        key: Option<&str>,
        value_bytes: Option<usize>,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        let written = std::iter::once((key, value_bytes));
        self.observe_writes(op, tenant, started, key, written, result)
    }

    /// Whether successful writes reach the operation log: callers skip
    /// gathering what only the log would use.
    pub fn logs_writes(&self) -> bool {
        self.enabled && self.oplog.is_some()
    }

    /// One call of `op` that wrote each of `written` (key, value bytes):
    /// counted once, failed as a whole under `key`, succeeded item by item.
    ///
    /// # Errors
    ///
    /// `result`'s own error, unchanged.
    pub fn observe_writes<'k, T>(
        &self,
        op: Op,
        tenant: &TenantStats,
        started: Instant,
        key: Option<&str>,
        written: impl IntoIterator<Item = (Option<&'k str>, Option<usize>)>,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        if !self.enabled {
            return result;
        }
        let elapsed = started.elapsed();
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // Per tenant only: process-wide figures are sums over tenants,
        // computed when read rather than paid for on every call.
        let counters = &tenant.ops[op as usize];
        // Errors before calls (and readers load calls before errors): a
        // reader then never sees a failing call without its error, so
        // calls - errors, mirrored as successes, never counts it as one.
        if result.is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        counters.calls.fetch_add(1, Ordering::Relaxed);
        counters.latency.record(us);
        if let Some(oplog) = &self.oplog {
            match &result {
                Err(err) => oplog.record(
                    &tenant.tenant,
                    op.name(),
                    key,
                    Outcome::Error(err.code()),
                    us,
                    None,
                ),
                Ok(_) => {
                    for (key, value_bytes) in written {
                        oplog.record(&tenant.tenant, op.name(), key, Outcome::Ok, us, value_bytes);
                    }
                }
            }
        }
        let now = now_seconds();
        self.tick(now, op);
        tenant.tick(now / 60, op);
        result
    }

    /// Counts a read in namespace `prefix` that found (`hit`) or missed its key.
    pub fn record_namespace_lookup(&self, tenant: &TenantStats, prefix: &str, hit: bool) {
        if self.enabled {
            tenant.count_namespace(prefix, hit);
        }
    }

    /// Counts a read of `key` that found (`hit`) or missed it; the read feeds
    /// the hot-key detector and, sampled, the operation log.
    pub fn record_lookup(&self, tenant: &TenantStats, op: Op, key: &str, hit: bool) {
        self.count_lookup(tenant, op, Some(key), hit);
    }

    /// Counts a read of `key` answered by a negative entry (API.md §10):
    /// apart from hits and misses, so a hit rate is not flattered by them.
    pub fn record_negative(&self, tenant: &TenantStats, op: Op, key: &str) {
        if !self.enabled {
            return;
        }
        tenant.negatives.fetch_add(1, Ordering::Relaxed);
        if let Some(oplog) = &self.oplog {
            oplog.record_read(&tenant.tenant, op, Some(key), Outcome::Miss);
        }
    }

    /// [`LiveStats::record_lookup`] for a key that must not be kept or logged
    /// (a session id is a credential).
    pub fn record_secret_lookup(&self, tenant: &TenantStats, op: Op, hit: bool) {
        self.count_lookup(tenant, op, None, hit);
    }

    fn count_lookup(&self, tenant: &TenantStats, op: Op, key: Option<&str>, hit: bool) {
        if !self.enabled {
            return;
        }
        let own = if hit { &tenant.hits } else { &tenant.misses };
        own.fetch_add(1, Ordering::Relaxed);
        if let Some(oplog) = &self.oplog {
            let outcome = if hit { Outcome::Hit } else { Outcome::Miss };
            oplog.record_read(&tenant.tenant, op, key, outcome);
        }
        let Some(key) = key else { return };
        if tenant
            .reads_seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(HOTKEY_SAMPLE_EVERY)
        {
            let mut hot = tenant.hot.lock().unwrap_or_else(|p| p.into_inner());
            hot.since_start.offer(key);
            hot.period.offer(key);
        }
    }

    fn tick(&self, second: u64, op: Op) {
        let slot = (second % WINDOW_SECONDS as u64) as usize;
        if self.second_stamp[slot].load(Ordering::Relaxed) != second
            && self.second_stamp[slot].swap(second, Ordering::Relaxed) != second
        {
            // First operation of a new second in this slot resets it; a racing
            // increment may be lost, which a rate estimate tolerates.
            for count in &self.second_count[slot] {
                count.store(0, Ordering::Relaxed);
            }
        }
        self.second_count[slot][op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Hits and misses since start, all tenants.
    pub fn lookups(&self) -> (u64, u64) {
        self.counted()
            .iter()
            .map(|t| t.lookups())
            .fold((0, 0), |(h, m), (th, tm)| (h + th, m + tm))
    }

    /// Hit rate in percent since start, `None` before the first read.
    pub fn hit_rate_percent(&self) -> Option<f64> {
        hit_rate(self.lookups())
    }

    /// Operations per second over the last full minute.
    pub fn operations_per_second(&self) -> f64 {
        self.rates_at(now_seconds(), 60).iter().sum()
    }

    fn rates_at(&self, now: u64, seconds: u64) -> Vec<f64> {
        let seconds = seconds.clamp(1, WINDOW_SECONDS as u64);
        // The current second is still filling up: average the ones before it.
        let oldest = now.saturating_sub(seconds);
        let mut totals = vec![0u64; Op::ALL.len()];
        for slot in 0..WINDOW_SECONDS {
            let stamp = self.second_stamp[slot].load(Ordering::Relaxed);
            if stamp >= oldest && stamp < now {
                for (total, count) in totals.iter_mut().zip(&self.second_count[slot]) {
                    *total += count.load(Ordering::Relaxed);
                }
            }
        }
        // Before the process has lived `seconds`, average over its lifetime.
        let lived = self.started.elapsed().as_secs().clamp(1, seconds);
        totals.iter().map(|&t| t as f64 / lived as f64).collect()
    }

    /// `op`'s latency histogram over all tenants: bucket counts, sum and
    /// largest value, in microseconds.
    pub(crate) fn histogram(&self, op: Op) -> (Vec<u64>, u64, u64) {
        let mut counts = vec![0u64; BUCKETS];
        let (mut sum_us, mut max_us) = (0, 0);
        for tenant in self.counted() {
            let (buckets, sum, max) = tenant.ops[op as usize].latency.totals();
            for (total, n) in counts.iter_mut().zip(buckets) {
                *total += n;
            }
            sum_us += sum;
            max_us = max_us.max(max);
        }
        (counts, sum_us, max_us)
    }

    /// Every operation's figures since start, all tenants together.
    pub fn snapshot(&self) -> Vec<OpSnapshot> {
        let tenants = self.counted();
        Op::ALL
            .iter()
            .map(|&op| {
                let (mut calls, mut errors, mut sum_us, mut max_us) = (0, 0, 0, 0);
                let mut counts = vec![0u64; BUCKETS];
                for tenant in &tenants {
                    let c = &tenant.ops[op as usize];
                    calls += c.calls.load(Ordering::Relaxed);
                    errors += c.errors.load(Ordering::Relaxed);
                    let (buckets, sum, max) = c.latency.totals();
                    for (total, n) in counts.iter_mut().zip(buckets) {
                        *total += n;
                    }
                    sum_us += sum;
                    max_us = max_us.max(max);
                }
                OpSnapshot {
                    op,
                    calls,
                    errors,
                    latency: dense_latency(&counts, sum_us, max_us),
                }
            })
            .collect()
    }
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::histogram::{bucket_of, bucket_upper_us};

    fn tenant() -> TenantId {
        TenantId::parse("acme", "t").unwrap()
    }

    #[test]
    fn calls_errors_and_lookups_are_counted_globally_and_per_tenant() {
        let stats = LiveStats::default();
        let acme = stats.tenant(&tenant());
        let started = Instant::now();
        stats
            .observe(Op::Get, &acme, started, None, Ok::<_, Error>(()))
            .unwrap();
        stats
            .observe(
                Op::Get,
                &acme,
                started,
                None,
                Err::<(), _>(Error::internal("boom")),
            )
            .unwrap_err();
        for hit in [true, true, false, true] {
            stats.record_lookup(&acme, Op::Get, "k", hit);
        }
        let get = stats.snapshot()[Op::Get as usize];
        assert_eq!((get.calls, get.errors, get.latency.count), (2, 1, 2));
        assert_eq!(acme.snapshot()[Op::Get as usize].calls, 2);
        assert_eq!(stats.hit_rate_percent(), Some(75.0));
        assert_eq!(hit_rate(acme.lookups()), Some(75.0));
        let other = stats.tenant(&TenantId::parse("other", "t").unwrap());
        assert_eq!(other.lookups(), (0, 0));
    }

    #[test]
    fn percentiles_follow_a_known_sequence() {
        let h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(us);
        }
        let l = h.latency();
        assert_eq!(l.count, 1000);
        assert_eq!(l.max_ms, 1.0);
        // Buckets are 8 per power of two: within 12.5 % above the true value.
        for (got, exact) in [(l.p50_ms, 0.5), (l.p95_ms, 0.95), (l.p99_ms, 0.99)] {
            assert!(got >= exact && got <= exact * 1.125, "{got} vs {exact}");
        }
        assert!((l.mean_ms - 0.5005).abs() < 1e-9);
    }

    #[test]
    fn every_latency_lands_in_a_bucket_that_contains_it() {
        for us in [0, 1, 7, 8, 9, 15, 16, 100, 1023, 1024, 999_999, 60_000_000] {
            let b = bucket_of(us);
            assert!(b < BUCKETS, "{us}");
            assert!(bucket_upper_us(b) >= us, "{us} above bucket {b}");
            if b > 0 {
                assert!(bucket_upper_us(b - 1) < us, "{us} belongs lower than {b}");
            }
        }
    }

    #[test]
    fn hammered_keys_surface_as_hot() {
        let stats = LiveStats::default();
        let acme = stats.tenant(&tenant());
        for i in 0..20_000u32 {
            let key = if i % 4 == 0 {
                "hot".to_owned()
            } else {
                format!("cold:{i}")
            };
            stats.record_lookup(&acme, Op::Get, &key, true);
        }
        let hot = acme.hot_keys(3);
        assert_eq!(hot[0].key, "hot");
        assert!(hot[0].estimated_reads >= 4_000, "{hot:?}");
    }

    #[test]
    fn rates_count_only_the_window_before_now() {
        let stats = LiveStats::default();
        for _ in 0..120 {
            stats.tick(1_000, Op::Get);
        }
        for _ in 0..60 {
            stats.tick(1_030, Op::Set);
        }
        stats.tick(1_031, Op::Get);
        let rates = stats.rates_at(1_031, 60);
        let lived = stats.started.elapsed().as_secs().clamp(1, 60) as f64;
        assert_eq!(rates[Op::Get as usize], 120.0 / lived);
        assert_eq!(rates[Op::Set as usize], 60.0 / lived);
        assert_eq!(stats.rates_at(1_032, 1)[Op::Get as usize], 1.0);
        assert_eq!(stats.rates_at(1_100, 60)[Op::Get as usize], 0.0);
    }

    #[test]
    fn idle_tenants_are_forgotten_without_the_sums_going_down() {
        let stats = LiveStats::default();
        let idle = TenantId::parse("idle", "t").unwrap();
        let busy = TenantId::parse("busy", "t").unwrap();
        {
            let old = stats.tenant(&idle);
            old.tick(5, Op::Get); // active long ago
            old.ops[Op::Get as usize]
                .calls
                .fetch_add(3, Ordering::Relaxed);
            old.hits.fetch_add(2, Ordering::Relaxed);
        }
        let _ = stats.observe(Op::Get, &stats.tenant(&busy), Instant::now(), None, Ok(()));
        let calls = |s: &LiveStats| {
            s.snapshot()
                .iter()
                .find(|o| o.op == Op::Get)
                .map(|o| o.calls)
                .unwrap()
        };
        assert_eq!(calls(&stats), 4);
        assert_eq!(stats.forget_idle(30), vec!["idle".to_owned()]);
        assert_eq!(stats.tenants().len(), 1, "only the busy tenant is kept");
        assert_eq!(calls(&stats), 4, "the forgotten tenant's calls still count");
        assert_eq!(stats.lookups().0, 2);
        // Held by a caller: kept until released.
        let held = stats.tenant(&idle);
        held.tick(5, Op::Get);
        assert!(stats.forget_idle(30).is_empty());
        drop(held);
        assert_eq!(stats.forget_idle(30), vec!["idle".to_owned()]);
    }
}
