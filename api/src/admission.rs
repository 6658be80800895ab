//! What the api admits before it does any work (API.md §9): a bound on
//! requests in flight, a deadline on every request, and each tenant's rate
//! of cache operations. A refusal costs no Redis and no PostgreSQL: the
//! answer is built from memory, so a flood cannot slow anyone else down.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use cache_shared::Error;
use cache_shared::keys::TenantId;
use cache_shared::limits::{LimitBook, TenantLimits};
use cache_shared::tokens::ServiceDirectory;
use tower::{Layer, Service};

use crate::error::ApiError;

/// Paths that are always served: a probe must see an overloaded api as alive.
const NEVER_REFUSED: &[&str] = &[
    "/health",
    "/ready",
    "/metrics",
    "/api/v1/cache/health",
    "/internal/cache/health",
];

/// Internal-plane cache operations, the ones a tenant's rate counts.
const METERED_INTERNAL: &[&str] = &["get/", "set", "delete/", "mget", "mset", "exists", "expire"];

/// The count of requests in flight of one api instance, shared by all its
/// serving threads (each builds its own service stack around it), so
/// `MAX_IN_FLIGHT_REQUESTS` bounds the instance, not each thread.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicU64>);

/// Bounds the requests in flight, gives each a deadline, and refuses at
/// once a cache operation of a tenant whose rate is spent.
#[derive(Debug, Clone)]
pub struct Admission {
    in_flight: Arc<AtomicU64>,
    max_in_flight: u64,
    deadline: Duration,
    rate: Arc<RateLimiter>,
    services: ServiceDirectory,
}

impl Admission {
    pub fn new(
        in_flight: &InFlight,
        max_in_flight: u64,
        deadline: Duration,
        rate: Arc<RateLimiter>,
        services: ServiceDirectory,
    ) -> Self {
        Self {
            in_flight: Arc::clone(&in_flight.0),
            max_in_flight,
            deadline,
            rate,
            services,
        }
    }

    /// The refusal of an authenticated internal cache operation whose
    /// tenant's rate is spent, before routing or any allocation but the
    /// answer's (nothing is taken from the bucket). Anything else goes on
    /// to the full path, which authenticates first.
    fn spent<B>(&self, req: &axum::http::Request<B>) -> Option<Response> {
        let op = req.uri().path().strip_prefix("/internal/cache/")?;
        if !METERED_INTERNAL.iter().any(|m| op.starts_with(m)) {
            return None;
        }
        let headers = req.headers();
        let tenant = headers.get(crate::headers::TENANT_HEADER)?.to_str().ok()?;
        let refusal = self.rate.spent(tenant)?;
        let token = headers.get(crate::headers::SERVICE_TOKEN_HEADER)?;
        self.services.identify(token.as_bytes())?;
        Some(ApiError::from(refusal).into_response())
    }
}

impl<S> Layer<S> for Admission {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitted {
            inner,
            admission: self.clone(),
        }
    }
}

/// The service behind [`Admission`].
#[derive(Debug, Clone)]
pub struct Admitted<S> {
    inner: S,
    admission: Admission,
}

/// One admitted request; gives its place back when dropped.
#[derive(Debug)]
struct Slot(Arc<AtomicU64>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, B> Service<axum::http::Request<B>> for Admitted<S>
where
    S: Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AdmitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        if let Some(refusal) = self.admission.spent(&req) {
            return AdmitFuture::Refused {
                response: Some(refusal),
            };
        }
        let counted = !NEVER_REFUSED.contains(&req.uri().path());
        let slot = if counted {
            let before = self.admission.in_flight.fetch_add(1, Ordering::Relaxed);
            let slot = Slot(Arc::clone(&self.admission.in_flight));
            if before >= self.admission.max_in_flight {
                drop(slot);
                return AdmitFuture::Refused {
                    response: Some(ApiError::Overloaded.into_response()),
                };
            }
            Some(slot)
        } else {
            None
        };
        AdmitFuture::Admitted {
            inner: tokio::time::timeout(self.admission.deadline, self.inner.call(req)),
            _slot: slot,
        }
    }
}

pin_project_lite::pin_project! {
    /// A refused request's answer, or an admitted one under its deadline.
    #[project = AdmitProjection]
    pub enum AdmitFuture<F> {
        Refused { response: Option<Response> },
        Admitted {
            #[pin]
            inner: tokio::time::Timeout<F>,
            _slot: Option<Slot>,
        },
    }
}

impl<F, E> Future for AdmitFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdmitProjection::Refused { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| ApiError::Overloaded.into_response()))),
            AdmitProjection::Admitted { inner, .. } => match ready!(inner.poll(cx)) {
                Ok(answered) => Poll::Ready(answered),
                Err(_elapsed) => Poll::Ready(Ok(ApiError::Deadline.into_response())),
            },
        }
    }
}

/// Each tenant's token bucket, as GCRA (the generic cell rate algorithm:
/// one atomic "theoretical arrival time" per tenant, no refill task). A
/// tenant's rate is shared by the live api instances: each enforces its
/// share, so the tenant's total stays within its limit across them.
#[derive(Debug)]
pub struct RateLimiter {
    epoch: Instant,
    buckets: RwLock<HashMap<String, Bucket>>,
    /// Whether any tenant has a rate at all (else the check is one load).
    enabled: AtomicBool,
    instances: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    /// Nanoseconds since the epoch at which the bucket is full again.
    tat: AtomicU64,
    /// Nanoseconds one operation costs (0: unlimited).
    interval: AtomicU64,
    /// How far ahead of now `tat` may run: the burst.
    tolerance: AtomicU64,
    /// The tenant's whole rate, for `RateLimit-Limit`.
    rate: AtomicU64,
    /// When the tenant was last seen, to forget idle tenants.
    seen: AtomicU64,
}

/// Tenants idle this long are forgotten (their bucket is full again anyway).
const IDLE: Duration = Duration::from_secs(60);

impl Bucket {
    fn new(limits: &TenantLimits, instances: u64, now: u64) -> Self {
        let bucket = Self {
            tat: AtomicU64::new(now),
            interval: AtomicU64::new(0),
            tolerance: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            seen: AtomicU64::new(now),
        };
        bucket.configure(limits, instances);
        bucket
    }

    fn configure(&self, limits: &TenantLimits, instances: u64) {
        let rate = limits.requests_per_second;
        let instances = instances.max(1);
        // Rate 0: unlimited (interval 0).
        let interval = 1_000_000_000u64
            .saturating_mul(instances)
            .checked_div(rate)
            .map_or(0, |i| i.max(1));
        let burst = (limits.burst / instances).max(1);
        let tolerance = interval.saturating_mul(burst - 1);
        self.interval.store(interval, Ordering::Relaxed);
        self.tolerance.store(tolerance, Ordering::Relaxed);
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// The refusal of one more operation now, if the bucket is spent.
    fn refusal(&self, tenant: &str, tat: u64, now: u64) -> Option<Error> {
        let interval = self.interval.load(Ordering::Relaxed);
        let tolerance = self.tolerance.load(Ordering::Relaxed);
        let ahead = tat.max(now) - now;
        if interval == 0 || ahead <= tolerance {
            return None;
        }
        let rate = self.rate.load(Ordering::Relaxed);
        Some(Error::RateLimited {
            message: format!("tenant '{tenant}' is over its rate of {rate} operations per second"),
            limit: rate,
            retry_after_secs: (ahead - tolerance).div_ceil(1_000_000_000).max(1),
        })
    }

    fn take(&self, tenant: &str, now: u64) -> Result<(), Error> {
        self.seen.store(now, Ordering::Relaxed);
        let interval = self.interval.load(Ordering::Relaxed);
        if interval == 0 {
            return Ok(());
        }
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            if let Some(refusal) = self.refusal(tenant, tat, now) {
                return Err(refusal);
            }
            let start = tat.max(now);
            match self.tat.compare_exchange_weak(
                tat,
                start + interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            buckets: RwLock::new(HashMap::new()),
            enabled: AtomicBool::new(false),
            instances: AtomicU64::new(1),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes one operation from `tenant`'s bucket.
    ///
    /// # Errors
    ///
    /// [`Error::RateLimited`] with the wait until the next operation is allowed.
    pub fn check(&self, book: &LimitBook, tenant: &TenantId) -> Result<(), Error> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = self.now();
        {
            let buckets = self.buckets.read().unwrap_or_else(|p| p.into_inner());
            if let Some(bucket) = buckets.get(tenant.as_str()) {
                return bucket.take(tenant.as_str(), now);
            }
        }
        let bucket = Bucket::new(
            &book.of(tenant.as_str()),
            self.instances.load(Ordering::Relaxed),
            now,
        );
        let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(tenant.as_str().to_owned())
            .or_insert(bucket)
            .take(tenant.as_str(), now)
    }

    /// The refusal `tenant` would get now, if its bucket is spent (nothing
    /// is taken from it).
    pub fn spent(&self, tenant: &str) -> Option<Error> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let now = self.now();
        let buckets = self.buckets.read().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.get(tenant)?;
        bucket.refusal(tenant, bucket.tat.load(Ordering::Relaxed), now)
    }

    /// Applies the book's current limits and the number of live api
    /// instances to every bucket, and forgets idle tenants.
    pub fn refresh(&self, book: &LimitBook, instances: u64) {
        self.instances.store(instances.max(1), Ordering::Relaxed);
        self.enabled.store(book.any_rate_limit(), Ordering::Relaxed);
        let now = self.now();
        let idle = u64::try_from(IDLE.as_nanos()).unwrap_or(u64::MAX);
        let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|_, b| now.saturating_sub(b.seen.load(Ordering::Relaxed)) < idle);
        for (tenant, bucket) in buckets.iter() {
            bucket.configure(&book.of(tenant), instances);
        }
    }

    /// The live api instances the last refresh counted.
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Tenants with a bucket now (bounded by the idle sweep).
    pub fn tracked(&self) -> usize {
        self.buckets.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_shared::limits::{LimitOverrides, LimitSettings};

    fn book(rate: u64, burst: u64) -> LimitBook {
        LimitBook::new(LimitSettings {
            tenant_max_keys: 0,
            tenant_max_bytes: 0,
            tenant_rate_limit: rate,
            tenant_rate_burst: Some(burst),
            tenant_max_active_jobs: 0,
        })
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name, "tenant").unwrap()
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_other_tenants_are_untouched() {
        let book = book(10, 5);
        let limiter = RateLimiter::new();
        limiter.refresh(&book, 1);
        let a = tenant("a");
        for _ in 0..5 {
            limiter.check(&book, &a).unwrap();
        }
        let Err(Error::RateLimited {
            retry_after_secs,
            limit,
            ..
        }) = limiter.check(&book, &a)
        else {
            panic!("the sixth operation of a burst of five passed");
        };
        assert_eq!((retry_after_secs, limit), (1, 10));
        for _ in 0..5 {
            limiter.check(&book, &tenant("b")).unwrap();
        }
    }

    #[test]
    fn no_rate_anywhere_checks_nothing_and_an_override_enables_it() {
        let book = book(0, 0);
        let limiter = RateLimiter::new();
        limiter.refresh(&book, 1);
        for _ in 0..10_000 {
            limiter.check(&book, &tenant("a")).unwrap();
        }
        book.set(
            "a",
            LimitOverrides {
                requests_per_second: Some(1),
                burst: Some(1),
                ..LimitOverrides::default()
            },
        );
        limiter.refresh(&book, 1);
        limiter.check(&book, &tenant("a")).unwrap();
        assert!(limiter.check(&book, &tenant("a")).is_err());
        limiter.check(&book, &tenant("b")).unwrap();
        limiter.check(&book, &tenant("b")).unwrap();
    }

    #[test]
    fn a_look_at_a_spent_bucket_takes_nothing() {
        let book = book(1, 2);
        let limiter = RateLimiter::new();
        limiter.refresh(&book, 1);
        let a = tenant("a");
        assert!(limiter.spent("a").is_none(), "no bucket yet");
        limiter.check(&book, &a).unwrap();
        assert!(limiter.spent("a").is_none(), "one of two left");
        limiter.check(&book, &a).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                limiter.spent("a"),
                Some(Error::RateLimited { .. })
            ));
        }
        assert!(limiter.check(&book, &a).is_err());
        assert!(limiter.spent("b").is_none());
    }

    #[test]
    fn instances_share_a_tenants_rate() {
        let book = book(100, 100);
        let limiter = RateLimiter::new();
        limiter.refresh(&book, 4);
        let a = tenant("a");
        let passed = (0..100)
            .filter(|_| limiter.check(&book, &a).is_ok())
            .count();
        assert_eq!(
            passed, 25,
            "one of four instances takes a quarter of the burst"
        );
    }
}
