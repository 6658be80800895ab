//! Test harness: an api on a free port against the real Redis and Postgres,
//! a unique tenant per test, a raw Redis connection for asserting stored
//! bytes, and private redis-server processes for fault tests.

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use cache_api::cli::{Cli, ServeArgs};
use clap::Parser;
use deadpool_redis::redis::{self, aio::MultiplexedConnection};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A test's own connection to the app's Redis: one server, or a cluster
/// client routing each command by its key.
#[derive(Clone)]
pub enum RawRedis {
    One(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RawRedis {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::One(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::One(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::One(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis every test uses unless it starts its own (`REDIS_URL`'s default).
pub const STANDARD_REDIS: &str = "redis://127.0.0.1:6379";

/// Both accepted internal tokens (rotation).
pub const TOKEN_A: &str = "test-token-a";
pub const TOKEN_B: &str = "test-token-b";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// A tenant id unique to this test.
    pub tenant: String,
    pub redis_url: String,
    /// The Redis of the job queues (`redis_url` unless they have their own).
    pub queue_redis_url: String,
    redis_settings: cache_shared::config::RedisSettings,
    /// The queue prefix of this test's jobs (also given to its workers).
    pub queue_prefix: String,
    pub database_url: String,
    pub state: cache_api::state::AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// A unique id for tenants, users, sessions of one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber_init();
    }
}

fn tracing_subscriber_init() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    cache_shared::telemetry::init(&cache_shared::config::TelemetrySettings {
        log_format: cache_shared::config::LogFormat::Human,
        rust_log: "debug".into(),
    })
}

/// Settings as `cache-api` would read them, plus `extra` command-line flags.
pub fn settings(extra: &[&str]) -> ServeArgs {
    let tokens = format!("{TOKEN_A},{TOKEN_B}");
    let queue_prefix = unique("test-queue");
    let mut argv = vec!["cache-api", "--queue-prefix", &queue_prefix];
    if !extra.contains(&"--internal-service-token") {
        argv.extend(["--internal-service-token", &tokens]);
    }
    // TEST_REDIS_CLUSTER=<seed URLs> runs the tests that take the default
    // Redis on that cluster instead (its queues on the standalone Redis).
    let cluster = std::env::var("TEST_REDIS_CLUSTER").unwrap_or_default();
    if !cluster.is_empty() && !extra.contains(&"--redis-url") {
        argv.extend(["--redis-mode", "cluster", "--redis-url", &cluster]);
        if !extra.contains(&"--queue-redis-url") {
            argv.extend(["--queue-redis-url", STANDARD_REDIS]);
        }
    }
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv)
        .expect("test settings parse")
        .serve
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(settings(&[])).await
}

/// The database of this test process: created fresh and migrated once, so
/// tests never depend on what a development database holds. Tests share it
/// and keep apart by tenant.
async fn test_database(base_url: &str) -> String {
    static URL: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    URL.get_or_init(|| async {
        cache_shared::db::testing::fresh_database(base_url)
            .await
            .expect("create the test database")
    })
    .await
    .clone()
}

pub async fn spawn_app_with(mut args: ServeArgs) -> TestApp {
    init_logs();
    if args.database.database_url == settings(&[]).database.database_url {
        args.database.database_url = test_database(&args.database.database_url).await;
    }
    let redis_url = args.redis.redis_url.clone();
    let queue_prefix = args.queue.queue_prefix.clone();
    let database_url = args.database.database_url.clone();
    let state = cache_api::build_state(&args).expect("state builds");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    // Served as the binary serves: threads of their own, each with its
    // runtime and pinned Redis connection.
    let threads = args.http.serving_threads().max(2);
    let server = tokio::spawn(cache_api::serve_threads(
        listener,
        state.clone(),
        threads,
        async {
            let _ = rx.await;
        },
    ));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        tenant: unique("t"),
        queue_redis_url: args
            .queue
            .queue_redis_url
            .clone()
            .unwrap_or_else(|| redis_url.clone()),
        redis_url,
        redis_settings: args.redis.clone(),
        queue_prefix,
        database_url,
        state,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request on the internal plane with token A and this test's tenant.
    pub fn internal(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-Service-Token", TOKEN_A)
            .header("X-Tenant-Id", &self.tenant)
    }

    pub async fn set(&self, key: &str, value: Value) -> reqwest::Response {
        self.internal(reqwest::Method::POST, "/internal/cache/set")
            .json(&serde_json::json!({"key": key, "value": value}))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, key: &str) -> reqwest::Response {
        self.internal(
            reqwest::Method::GET,
            &format!("/internal/cache/get/{}", encode(key)),
        )
        .send()
        .await
        .expect("request sent")
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.internal(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// A plain connection to the Redis the app uses (on a cluster, routing
    /// each command by its key), for asserting what is stored.
    pub async fn raw_redis(&self) -> RawRedis {
        if self.redis_settings.is_cluster() {
            let client =
                redis::cluster::ClusterClient::new(self.redis_settings.urls()).expect("seed urls");
            return RawRedis::Cluster(client.get_async_connection().await.expect("connect"));
        }
        RawRedis::One(
            redis::Client::open(self.redis_url.as_str())
                .expect("redis url")
                .get_multiplexed_async_connection()
                .await
                .expect("connect to redis"),
        )
    }

    /// Every data-plane key matching `pattern`: a full `SCAN` of the Redis,
    /// or of each primary of a cluster.
    pub async fn scan_keys(&self, pattern: &str) -> Vec<String> {
        let urls = match self.state.cache.redis().cluster_nodes().await.unwrap() {
            Some(nodes) => nodes
                .iter()
                .filter(|n| n.serves_slots())
                .map(|n| format!("redis://{}", n.address))
                .collect(),
            None => vec![self.redis_url.clone()],
        };
        let mut found = Vec::new();
        for url in urls {
            found.extend(scan_url(&url, pattern).await);
        }
        found
    }

    /// The environment that puts a `cache-api` or `cache-worker` process on
    /// this app's Redis (and its queues').
    pub fn redis_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("REDIS_URL", self.redis_url.clone())];
        if self.redis_settings.is_cluster() {
            env.push(("REDIS_MODE", "cluster".to_owned()));
            env.push(("QUEUE_REDIS_URL", self.queue_redis_url.clone()));
        }
        env
    }

    /// A connection to the job queues' Redis.
    pub async fn queue_redis(&self) -> MultiplexedConnection {
        redis::Client::open(self.queue_redis_url.as_str())
            .expect("queue redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the queues' redis")
    }

    /// Stops the server the way SIGTERM does and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server ended cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// Creates an API key of `role` for `tenant` straight in the database.
    pub async fn key_for(&self, tenant: &str, role: cache_shared::api_keys::Role) -> String {
        let key = cache_shared::api_keys::generate().expect("random key");
        cache_shared::db::api_keys::insert(&self.state.db, &key, tenant, role, Some("test"), None)
            .await
            .expect("store the key");
        key.secret
    }

    /// An API key of `role` for this test's tenant.
    pub async fn key(&self, role: cache_shared::api_keys::Role) -> String {
        self.key_for(&self.tenant, role).await
    }

    /// Stores session `sid` of `user` in `tenant` through the internal plane.
    pub async fn new_session(&self, sid: &str, user: &str, tenant: &str) {
        let response = self
            .post_json(
                "/internal/cache/session/set",
                serde_json::json!({"sessionId": sid, "userId": user, "tenantId": tenant}),
            )
            .await;
        assert_eq!(response.status(), 200);
    }

    pub async fn session_exists(&self, sid: &str) -> bool {
        self.internal(
            reqwest::Method::GET,
            &format!("/internal/cache/session/{sid}"),
        )
        .send()
        .await
        .expect("session read")
        .status()
            == 200
    }

    /// A request on the public plane with `key`.
    pub fn public(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
    ) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }
}

/// A worker of this test's queues, stopped (gracefully) on drop or `stop`.
pub struct TestWorker {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts an in-process worker draining this app's queues.
    pub fn spawn_worker(&self) -> TestWorker {
        self.spawn_worker_with(&[])
    }

    /// Starts an in-process worker with extra command-line settings.
    pub fn spawn_worker_with(&self, extra: &[&str]) -> TestWorker {
        let mut argv = vec![
            "cache-worker",
            "--queue-prefix",
            &self.queue_prefix,
            "--redis-url",
            &self.redis_url,
            "--worker-name",
            "test",
        ];
        // The app's Redis mode and queues, unless the test names its own.
        if self.redis_settings.is_cluster() {
            argv.extend(["--redis-mode", "cluster"]);
        }
        if self.queue_redis_url != self.redis_url && !extra.contains(&"--queue-redis-url") {
            argv.extend(["--queue-redis-url", &self.queue_redis_url]);
        }
        if !extra.contains(&"--database-url") {
            argv.extend(["--database-url", &self.database_url]);
        }
        if !extra.contains(&"--worker-metrics-port") {
            // Tests run many workers at once: none takes the fixed port.
            argv.extend(["--worker-metrics-port", "0"]);
        }
        argv.extend_from_slice(extra);
        let settings = cache_worker::Cli::try_parse_from(argv)
            .expect("worker settings parse")
            .settings();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cache_worker::run(settings, async {
            let _ = rx.await;
        }));
        TestWorker {
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Polls a job's status URL until it is finished; returns the job.
    pub async fn wait_for_job(&self, status_url: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let job: Value = self
                .internal(reqwest::Method::GET, status_url)
                .send()
                .await
                .expect("request sent")
                .json()
                .await
                .expect("job JSON");
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job never finished: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl TestApp {
    /// Polls a job on the public plane until it is finished; returns it.
    pub async fn wait_public_job(&self, key: &str, status_url: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let job: Value = self
                .public(reqwest::Method::GET, status_url, key)
                .send()
                .await
                .expect("request sent")
                .json()
                .await
                .expect("job JSON");
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job never finished: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a job-starting request, checks the `202` and waits for the job.
    pub async fn run_public_job(&self, key: &str, request: reqwest::RequestBuilder) -> Value {
        let accepted = request.send().await.expect("request sent");
        assert_eq!(accepted.status().as_u16(), 202, "job not accepted");
        let accepted: Value = accepted.json().await.expect("202 JSON");
        let url = accepted["statusUrl"]
            .as_str()
            .expect("statusUrl")
            .to_owned();
        self.wait_public_job(key, &url).await
    }
}

impl TestWorker {
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("worker task")
                .expect("worker ended cleanly");
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Percent-encodes a key as one path segment.
pub fn encode(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Asserts the error envelope of API.md §3 and returns its body.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["code"], code, "code in {body}");
    assert_eq!(body["service"], "cache-service");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    let ts = body["timestamp"].as_str().expect("timestamp");
    assert!(
        chrono_like_millis_utc(ts),
        "timestamp {ts} is not RFC 3339 UTC with milliseconds"
    );
    let retryable = matches!(status, 500 | 503 | 429);
    assert_eq!(
        body["details"]["retryable"], retryable,
        "retryable in {body}"
    );
    body
}

fn chrono_like_millis_utc(ts: &str) -> bool {
    // 2026-11-26T10:00:00.000Z
    ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.' && ts.as_bytes()[10] == b'T'
}

/// A redis-server of this test's own on a free port, killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    options: RedisOptions,
    child: Option<tokio::process::Child>,
}

/// How a [`PrivateRedis`] runs: by default without password or persistence.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    config: Option<std::path::PathBuf>,
    password: Option<String>,
    dir: Option<std::path::PathBuf>,
}

impl RedisOptions {
    /// Reads this configuration file first (e.g. compose/redis.conf); the
    /// port, address, password and directory given here override it.
    pub fn config(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// Requires this password (`requirepass`); [`PrivateRedis::url`] carries it.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Keeps data (AOF, RDB) in `dir`, as the configuration says; without
    /// a directory nothing is persisted.
    pub fn dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }
}

impl PrivateRedis {
    pub async fn start() -> Self {
        Self::start_with(RedisOptions::default()).await
    }

    /// Starts one with `options`, on a free port.
    pub async fn start_with(options: RedisOptions) -> Self {
        let port = free_port();
        let mut redis = Self {
            port,
            options,
            child: None,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        match &self.options.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Starts (again) on the same port, with the same options and data
    /// directory, and waits until it answers (after loading its data).
    pub async fn restart(&mut self) {
        let mut command = tokio::process::Command::new("redis-server");
        if let Some(config) = &self.options.config {
            command.arg(config);
        }
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--daemonize", "no", "--enable-debug-command", "yes"]);
        match &self.options.dir {
            Some(dir) => command.arg("--dir").arg(dir),
            None => command.args(["--save", "", "--appendonly", "no"]),
        };
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("url");
        wait_until(Duration::from_secs(10), || async {
            match client.get_multiplexed_async_connection().await {
                Ok(mut conn) => redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
    }

    /// Kills the server and waits for the process to be gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }
}

/// Every key matching `pattern` on the one Redis at `url`, by `SCAN`.
pub async fn scan_url(url: &str, pattern: &str) -> Vec<String> {
    let mut conn = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let (mut cursor, mut found) = (0u64, Vec::new());
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        found.extend(keys);
        cursor = next;
        if cursor == 0 {
            return found;
        }
    }
}

/// A port nothing listens on (for processes that need one given).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Sends `request` and reads its answer's JSON body, whatever its status.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("a JSON answer")
}

/// Polls `condition` until it holds, failing the test after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < deadline,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP relay to PostgreSQL that the test can cut, as if it went down.
pub struct CuttablePostgres {
    pub port: u16,
    relay: JoinHandle<()>,
}

impl CuttablePostgres {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, relay }
    }

    /// Closes the listener and every relayed connection (they live in the task).
    pub fn cut(&self) {
        self.relay.abort();
    }

    /// `database_url` through this relay.
    pub fn url_for(&self, database_url: &str) -> String {
        assert!(database_url.contains(":5432/"), "{database_url}");
        database_url.replace(":5432/", &format!(":{}/", self.port))
    }
}

/// The app's `/metrics` text (checked to be Prometheus text).
pub async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    response.text().await.unwrap()
}

/// The value of the first sample line that starts with `prefix`.
pub fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

/// A Redis Cluster of this test's own on 127.0.0.1: `primaries` primaries
/// with `replicas` replicas each, on consecutive free ports, the nodes
/// children of the test (killed on drop), joined by `scripts/redis-cluster
/// join` as developers' clusters are.
pub struct TestCluster {
    pub base: u16,
    pub primaries: u16,
    dir: std::path::PathBuf,
    nodes: Vec<(u16, Option<tokio::process::Child>)>,
}

impl TestCluster {
    pub async fn start(primaries: u16, replicas: u16) -> Self {
        let total = primaries * (1 + replicas);
        let base = free_port_run(total);
        let dir = std::env::temp_dir().join(unique("redis-cluster"));
        let mut cluster = Self {
            base,
            primaries,
            dir,
            nodes: (0..total).map(|i| (base + i, None)).collect(),
        };
        for i in 0..usize::from(total) {
            cluster.spawn(i);
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis-cluster");
        let joined = tokio::process::Command::new(script)
            .args(["join", &base.to_string()])
            .args([primaries.to_string(), replicas.to_string()])
            .stderr(Stdio::null())
            .output()
            .await
            .expect("scripts/redis-cluster runs");
        assert!(joined.status.success(), "the cluster formed");
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let port = self.nodes[i].0;
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node directory");
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // Long enough that a loaded test machine raises no false failover.
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "3000"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        self.nodes[i].1 = Some(child);
    }

    /// The seed nodes, as `REDIS_URL` takes them in cluster mode.
    pub fn seeds(&self) -> String {
        (0..self.primaries)
            .map(|i| format!("redis://127.0.0.1:{}", self.base + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ports of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(port, _)| *port).collect()
    }

    /// A connection to one node (commands to keys of other nodes get MOVED).
    pub async fn node(&self, port: u16) -> MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the node")
    }

    /// The port of the primary serving `key`'s slot.
    pub async fn owner_of(&self, key: &str) -> u16 {
        let slot = cache_shared::redis::cluster::key_slot(key.as_bytes());
        let mut conn = self.node(self.base).await;
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .unwrap();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields[2].contains("master") {
                continue;
            }
            for range in &fields[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                    && (a..=b).contains(&slot)
                {
                    let address = fields[1].split('@').next().unwrap();
                    return address.rsplit_once(':').unwrap().1.parse().unwrap();
                }
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// Every key on every primary matching `pattern` (a full `SCAN` of each).
    pub async fn scan(&self, pattern: &str) -> Vec<String> {
        let mut all = Vec::new();
        for i in 0..self.primaries {
            let url = format!("redis://127.0.0.1:{}", self.base + i);
            all.extend(scan_url(&url, pattern).await);
        }
        all.sort();
        all
    }

    /// Kills the node on `port` at once (no shutdown: as if its machine died).
    pub async fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|(p, _)| *p == port).unwrap();
        if let Some(mut child) = node.1.take() {
            child.kill().await.expect("kill redis-server");
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `count` consecutive free ports whose cluster bus ports (+10 000) are free too.
fn free_port_run(count: u16) -> u16 {
    loop {
        let base = 20_000 + (free_port() % 20_000);
        let free = (0..count).all(|i| {
            [base + i, base + i + 10_000]
                .iter()
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        });
        if free {
            return base;
        }
    }
}

/// Settings of an api on `cluster`, its queues on the standard Redis.
pub fn cluster_settings(cluster: &TestCluster, extra: &[&str]) -> ServeArgs {
    let seeds = cluster.seeds();
    let mut argv = vec![
        "--redis-mode",
        "cluster",
        "--redis-url",
        &seeds,
        "--queue-redis-url",
        STANDARD_REDIS,
    ];
    argv.extend_from_slice(extra);
    settings(&argv)
}
