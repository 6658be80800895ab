//! Per-request HTTP figures and log context: a layer around the whole
//! router that counts each request by method, route template and status.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::response::Response;
use cache_shared::oplog::{self, RequestContext};
use prometheus::{Histogram, IntCounter};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use super::metrics::ApiMetrics;
use crate::state::AppState;

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

    /// The template `path` matches (`unmatched` for none): what logs may
    /// show of a path, whose segments can be session ids or keys.
    pub fn template_of(&self, path: &str) -> &str {
        self.names
            .get(self.route_of(path))
            .map_or(UNMATCHED, String::as_str)
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
    routes: Arc<HttpRoutes>,
}

impl ObserveRequests {
    pub fn new(state: AppState, routes: Arc<HttpRoutes>) -> Self {
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
        assert_eq!(
            routes.template_of("/internal/cache/get/session-secret"),
            "/internal/cache/get/{key}"
        );
        assert_eq!(routes.template_of("/session-secret"), UNMATCHED);
        assert_eq!(name("/internal/cache/get/a/b"), UNMATCHED);
    }
}
