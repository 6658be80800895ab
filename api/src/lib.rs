//! `cache-api`: the HTTP face of cache-service. It answers cache reads and
//! writes synchronously and never runs heavy work on a request.
//!
//! [`router`] builds the routes; [`serve`] runs them on a listener until a
//! shutdown future resolves, so tests bind port 0 and stop the server at will.

pub mod admission;
pub mod auth;
pub mod cli;
pub mod error;
pub mod events;
pub mod extract;
pub mod headers;
pub mod instrumentation;
pub mod key_cache;
pub mod keys_cli;
pub mod limits_refresh;
pub mod openapi;
pub mod platform_auth;
pub mod routes;
pub mod state;
pub mod tls;
pub mod views;
pub mod writes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Request};
use cache_jobs::allow_list::AllowList;
use cache_jobs::queue::{JobQueue, QueueSettings};
use cache_shared::cache::{Cache, CacheLimits};
use cache_shared::limits::LimitBook;
use cache_shared::redis::RedisStore;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::cli::{Cli, Command, MigrateArgs, ServeArgs};
use crate::instrumentation::metrics::Instruments;
use crate::state::{AppState, Shared};
use cache_shared::tokens::{ServiceDirectory, ServiceTokens};

/// Runs the command the command line chose.
///
/// # Errors
///
/// Start-up failures (bad configuration, port in use, migration errors).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    cache_shared::tls::install_crypto_provider();
    match cli.command {
        None => run_server(cli.serve).await,
        Some(Command::Serve(args)) => run_server(*args).await,
        Some(Command::Migrate(args)) => migrate(args).await,
        Some(Command::Keys(args)) => {
            init_telemetry(&args.telemetry)?;
            keys_cli::run(args).await
        }
    }
}

async fn run_server(args: ServeArgs) -> anyhow::Result<()> {
    init_telemetry(&args.telemetry)?;
    let state = build_state(&args)?;
    // A Redis that is down is waited for (503 until it answers); one that
    // refuses the password never comes right by waiting.
    if !cache_shared::redis::check_credentials(&args.redis).await? {
        tracing::warn!("Redis does not answer yet: cache requests answer 503 until it does");
    }
    if args.queue.has_own_redis()
        && !cache_shared::redis::check_credentials(
            &args.queue.redis(&args.redis).map_err(anyhow::Error::msg)?,
        )
        .await?
    {
        tracing::warn!(
            "the queues' Redis does not answer yet: starting jobs answers 503 until it does"
        );
    }
    if state.services.is_empty() {
        tracing::warn!(
            "INTERNAL_SERVICE_TOKEN and INTERNAL_SERVICE_TOKENS are empty: the internal plane \
             refuses every caller"
        );
    }
    tokio::spawn(reload_on_hangup(state.services.clone()));
    let addr = SocketAddr::new(args.http.bind_address, args.http.service_port);
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding SERVICE_PORT {addr}"))?;
    let threads = args.http.serving_threads();
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, threads, redis_client = state.cache.redis().mode(), "cache-api listening");
    serve_threads(listener, state, threads, cache_shared::shutdown::signal()).await?;
    tracing::info!("cache-api stopped");
    Ok(())
}

/// Re-reads `INTERNAL_SERVICE_TOKENS_FILE` on every SIGHUP (tokens rotate
/// without a restart); a file that cannot be read keeps the tokens as they were.
async fn reload_on_hangup(services: ServiceDirectory) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGHUP: service tokens reload on restart only");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match services.reload() {
                Ok(()) => tracing::info!(services = ?services.names(), "service tokens reloaded"),
                Err(err) => {
                    tracing::warn!(%err, "service tokens not reloaded; keeping the last ones")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = services;
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    init_telemetry(&args.telemetry)?;
    cache_shared::db::create_database_if_missing(&args.database.database_url)
        .await
        .context("creating the database of DATABASE_URL")?;
    let pool = cache_shared::db::lazy_pool(&args.database).context("parsing DATABASE_URL")?;
    cache_shared::db::MIGRATOR
        .run(&pool)
        .await
        .context("applying migrations to DATABASE_URL")?;
    tracing::info!("migrations applied");
    Ok(())
}

fn init_telemetry(settings: &cache_shared::config::TelemetrySettings) -> anyhow::Result<()> {
    cache_shared::telemetry::init(settings)
        .map_err(|e| anyhow::anyhow!("setting up logging (RUST_LOG): {e}"))
}

/// Builds the shared state from settings without touching the network: the
/// api starts while Redis or Postgres is down and answers `503` until they are up.
///
/// # Errors
///
/// When `REDIS_URL` or `DATABASE_URL` cannot be parsed.
pub fn build_state(args: &ServeArgs) -> anyhow::Result<AppState> {
    cache_shared::tls::install_crypto_provider();
    let redis = RedisStore::with_pinned(&args.redis, args.http.serving_threads())
        .context("parsing REDIS_URL")?;
    let db = cache_shared::db::lazy_pool(&args.database).context("parsing DATABASE_URL")?;
    let limits = CacheLimits::from_settings(&args.cache);
    let (instruments, stats) =
        Instruments::new(&args.observability).context("defining the Prometheus metrics")?;
    let queue_redis = args.queue.redis(&args.redis).map_err(anyhow::Error::msg)?;
    let queue_conn =
        cache_shared::redis::dedicated_connection(&queue_redis, args.redis.command_timeout())
            .context("parsing QUEUE_REDIS_URL")?;
    let jobs = JobQueue::new(
        queue_conn,
        QueueSettings::from_args(&args.queue),
        db.clone(),
        limits.max_value_bytes,
        args.redis.command_timeout(),
    )
    .with_preload_hosts(AllowList::parse(&args.preload.preload_allowed_hosts))
    .with_max_active_jobs(args.limits.tenant_max_active_jobs)
    .with_oplog(stats.oplog().cloned());
    let tenant_limits = Arc::new(LimitBook::new(args.limits.clone()));
    let cache = Cache::new(redis, limits, stats, Arc::clone(&tenant_limits))
        .with_near_cache(args.cache.near_cache_bytes)
        .with_encryption(
            args.cache.keyring().map_err(anyhow::Error::msg)?,
            args.cache.encrypt_platform_data,
        );
    instruments
        .metrics
        .registry
        .add(cache_shared::metrics::SealCounts::new(cache.shared_keys())?)
        .context("defining the Prometheus metrics")?;
    Ok(AppState::new(Shared {
        cache,
        db,
        jobs,
        queue_has_own_redis: args.queue.has_own_redis(),
        key_cache: key_cache::KeyCache::new(key_cache::KeyCacheSettings {
            ttl: args.http.api_key_cache(),
            stale: Duration::from_secs(args.http.api_key_stale_seconds),
            concurrent_lookups: usize::try_from(args.database.database_max_connections / 2)
                .unwrap_or(1),
        }),
        platform_auth: platform_auth(args)?,
        limits: tenant_limits,
        events: Arc::new(events::EventHub::new(args.redis.clone())),
        redis_settings: args.redis.clone(),
        rate: Arc::new(admission::RateLimiter::new()),
        in_flight: admission::InFlight::default(),
        services: ServiceDirectory::load(
            args.http.internal_service_token.expose(),
            args.http.internal_service_tokens.expose(),
            args.http.internal_service_tokens_file.clone(),
            &args.http.internal_service_scopes,
        )
        .map_err(anyhow::Error::msg)?,
        metrics_tokens: ServiceTokens::from_list(args.http.metrics.metrics_token.expose()),
        settings: args.http.clone(),
        tls: match (&args.http.tls_cert_file, &args.http.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        },
        observability: args.observability.clone(),
        instruments,
        instance_id: format!("api-{}-{}", std::process::id(), ulid::Ulid::new()),
        started_at: Instant::now(),
    }))
}

/// The platform-token verifier when `AUTH_SERVICE_URL` is set.
fn platform_auth(args: &ServeArgs) -> anyhow::Result<Option<platform_auth::PlatformAuth>> {
    let settings = &args.platform_auth;
    let Some(auth_url) = settings.auth_service_url.clone() else {
        if settings.rbac_service_url.is_some() {
            tracing::warn!(
                "RBAC_SERVICE_URL is set without AUTH_SERVICE_URL: platform tokens stay off"
            );
        }
        return Ok(None);
    };
    platform_auth::PlatformAuth::new(platform_auth::PlatformAuthSettings {
        auth_url,
        rbac_url: settings.rbac_service_url.clone(),
        service_token: args.observability.outbound.outbound_service_token.clone(),
        cache_for: Duration::from_secs(settings.auth_cache_seconds),
        timeout: Duration::from_millis(settings.auth_timeout_ms),
    })
    .map(Some)
    .context("building the platform auth client")
}

/// The request id header: taken from the caller or set (a ULID), echoed in
/// the answer, carried by logs and operation-log records.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// All routes. Routing comes before authentication: unknown paths are `404`
/// and wrong methods `405` with or without credentials.
pub fn router(state: AppState) -> Router {
    routed(state).0
}

/// The router and its route templates (what the HTTP figures count under).
fn routed(state: AppState) -> (Router, instrumentation::requests::HttpRoutes) {
    let (routes, doc) = documented_routes(&state).split_for_parts();
    let templates = doc
        .paths
        .paths
        .keys()
        .map(String::as_str)
        .chain(openapi::PATHS);
    let templates = instrumentation::requests::HttpRoutes::new(templates);
    let router = routes
        .merge(openapi::serve(doc))
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state);
    (router, templates)
}

/// The router inside the middleware every request crosses: request ids,
/// the debug span, the HTTP figures and log context (when instrumentation is
/// on) and the body limit. They wrap the router as a whole (not route by
/// route), which costs no allocation per request.
pub fn app(
    state: AppState,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let max_body_bytes = state.settings.max_body_bytes;
    let admission = admission::Admission::new(
        &state.in_flight,
        state.settings.max_in_flight_requests,
        state.settings.request_timeout(),
        Arc::clone(&state.rate),
        state.services.clone(),
    );
    let (router, templates) = routed(state.clone());
    let templates = Arc::new(templates);
    let observe = state.cache.stats().is_enabled().then(|| {
        instrumentation::requests::ObserveRequests::new(state.clone(), Arc::clone(&templates))
    });
    tower::ServiceBuilder::new()
        .map_response(axum::response::IntoResponse::into_response)
        .layer(SetRequestIdLayer::new(REQUEST_ID, UlidRequestId))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(move |req: &Request<_>| {
                let id = req
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                // Debug level: a span per request costs measurable throughput,
                // so it exists only when debug logging is on (and only then is
                // the template looked up). The route template, never the path
                // or query: they carry session ids, keys and permission keys.
                tracing::debug_span!(
                    "request",
                    method = %req.method(),
                    route = templates.template_of(req.uri().path()),
                    request_id = id,
                    service = tracing::field::Empty
                )
            }),
        )
        .option_layer(observe)
        .layer(admission)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .service(router)
}

/// Every documented route: each comes with its OpenAPI entry, so the
/// document cannot miss a route.
pub fn documented_routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(routes::health::router())
        .routes(utoipa_axum::routes!(routes::health::scrape))
        .merge(routes::keys::router())
        .merge(routes::events::router())
        .merge(routes::sessions::router())
        .merge(routes::permissions::router())
        .merge(routes::jobs::router())
        .merge(
            // The public plane: authorised after routing, so unknown paths are
            // 404 and wrong methods 405 with or without credentials.
            OpenApiRouter::new()
                .merge(routes::keys::public_router())
                .merge(routes::health::public_router())
                .merge(routes::monitoring::router())
                .merge(routes::management::router())
                .merge(routes::namespaces::router())
                .merge(routes::events::public_router())
                .merge(routes::jobs::public_router())
                .merge(routes::schedules::router())
                .merge(routes::admin_keys::router())
                .merge(routes::tenant_limits::router())
                .route_layer(axum::middleware::from_fn_with_state(
                    auth::PublicPlane {
                        state: state.clone(),
                        roles: routes::policy::ROUTES,
                    },
                    auth::authorize,
                )),
        )
}

/// Gives a request without `X-Request-Id` a fresh ULID.
#[derive(Debug, Clone, Copy)]
struct UlidRequestId;

impl MakeRequestId for UlidRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let mut buf = [0u8; ulid::ULID_LEN];
        let text = ulid::Ulid::new().array_to_str(&mut buf);
        HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}

/// Serves `state`'s router on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish (up to `SHUTDOWN_TIMEOUT_MS`), on the caller's
/// runtime.
///
/// # Errors
///
/// When the listener fails for good.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let background = instrumentation::background::Background::start(&state);
    let events = Arc::clone(&state.events);
    accept_loop(listener, state, async move {
        shutdown.await;
        events.close();
    })
    .await;
    // After the last request: its figures and log records go out too.
    background.finish().await;
    Ok(())
}

/// Serves on `threads` threads, each running a single-threaded runtime with
/// its own accept loop on `listener` and its own Redis connection: a request
/// and the connection it waits on share a thread, so no wake-up crosses
/// threads (one work-stealing runtime spent a third of the api's CPU waking
/// its threads; this serves 16–36 % more GETs, bench/README.md). Background
/// work stays on the caller's runtime. Returns once every thread has drained
/// its connections after `shutdown`.
///
/// # Errors
///
/// When a thread or its runtime cannot start.
pub async fn serve_threads(
    listener: std::net::TcpListener,
    state: AppState,
    threads: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let background = instrumentation::background::Background::start(&state);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut serving = Vec::with_capacity(threads);
    for slot in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let state = state.clone();
        let mut stopped = stopped.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        serving.push(
            std::thread::Builder::new()
                .name(format!("cache-api-{slot}"))
                .spawn(move || {
                    cache_shared::redis::pin_thread_to_connection(slot);
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        let stop = async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        };
                        accept_loop(listener, state, stop).await;
                        Ok::<(), std::io::Error>(())
                    })
                })?,
        );
    }
    drop(listener);
    shutdown.await;
    // Open event streams would hold the drain up to its timeout.
    state.events.close();
    let _ = stop.send(true);
    for thread in serving {
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(Err(err))) => tracing::warn!(%err, "a serving thread stopped with an error"),
            Ok(Err(_)) | Err(_) => tracing::error!("a serving thread panicked"),
            Ok(Ok(Ok(()))) => {}
        }
    }
    background.finish().await;
    Ok(())
}

/// Accepts and serves connections until `shutdown`, then lets in-flight
/// requests finish (up to `SHUTDOWN_TIMEOUT_MS`).
///
/// Connections are served by hyper directly so that a client must send its
/// headers within `HEADER_READ_TIMEOUT_MS`: a slow client cannot pin a connection.
async fn accept_loop(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) {
    let header_timeout = state.settings.header_read_timeout();
    let grace = state.settings.shutdown_timeout();
    let tls = state.tls.clone();
    let app = app(state);
    let mut builder = http1::Builder::new();
    // Half-closed connections keep their answer coming. This also spares
    // hyper a fresh 8 KiB read buffer per request: without it, hyper reads
    // while a handler waits on Redis (to notice a client leaving), and the
    // request's headers still hold the previous buffer. A vanished client's
    // request ends at its deadline anyway. Vectored writes let a large
    // value go out in the buffer it was read from Redis into (views.rs).
    builder
        .writev(true)
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);

    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        let client = auth::ClientAddr(peer.ip());
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(client);
                req
            },
        ));
        let Some(tls) = tls.clone() else {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let watched = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = watched.await {
                    tracing::debug!(err = %err, "connection ended with an error");
                }
            });
            continue;
        };
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(header_timeout, tls.0.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(err = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown timeout reached; closing remaining connections"),
    }
}
