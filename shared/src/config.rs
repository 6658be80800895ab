//! Typed configuration. Every setting is a clap argument with an `env` name, so
//! `--help` lists each environment variable with its default, and a bad value
//! stops start-up with exit code 2 and a message naming the variable. Binaries
//! flatten the groups they need; nothing below `main` reads the environment.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// How requests share Redis connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisClientMode {
    /// A few connections shared by all requests, concurrent commands pipelined
    /// on each socket (fastest under load; reconnects by itself).
    Multiplexed,
    /// A deadpool pool handing one connection to one request at a time.
    Pool,
}

/// Whether the data plane is one Redis or a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisMode {
    /// One Redis server (with replicas behind it, if any).
    Standalone,
    /// A Redis Cluster: `REDIS_URL` lists seed nodes, the client follows
    /// the slot map (MOVED/ASK) and walks each primary or slot.
    Cluster,
}

#[derive(Debug, Clone, Args)]
pub struct RedisSettings {
    /// Redis server URL (`redis://` or `rediss://` for TLS; `:password@` before the host);
    /// with `REDIS_MODE=cluster`, seed nodes as comma-separated URLs.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379",
          value_parser = Redacted(parse_redis_urls), hide_env_values = true)]
    pub redis_url: String,

    /// `standalone` (one Redis) or `cluster` (Redis Cluster; needs `QUEUE_REDIS_URL`).
    #[arg(long, env = "REDIS_MODE", value_enum, default_value = "standalone")]
    pub redis_mode: RedisMode,

    /// How requests share connections: `multiplexed` or `pool`.
    #[arg(long, env = "REDIS_CLIENT", value_enum, default_value = "multiplexed")]
    pub redis_client: RedisClientMode,

    /// Shared connections in `multiplexed` mode (one pipelines best on two cores).
    #[arg(long, env = "REDIS_MULTIPLEXED_CONNECTIONS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub redis_multiplexed_connections: u16,

    /// Largest number of pooled connections in `pool` mode.
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub redis_pool_size: u16,

    /// Time allowed to open a connection, in milliseconds.
    #[arg(long, env = "REDIS_CONNECT_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_connect_timeout_ms: u64,

    /// Time a request waits for a free pooled connection, in milliseconds.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_wait_timeout_ms: u64,

    /// Time allowed for one request's Redis work before it answers 503, in milliseconds.
    #[arg(long, env = "REDIS_COMMAND_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_command_timeout_ms: u64,
}

impl RedisSettings {
    /// The URLs of `REDIS_URL`: one in standalone mode, the seed nodes in cluster mode.
    pub fn urls(&self) -> Vec<&str> {
        self.redis_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The URL connections of their own use (subscriptions, tracking, start-up
    /// checks): `REDIS_URL`, or its first seed node in cluster mode.
    pub fn first_url(&self) -> &str {
        self.urls()
            .first()
            .copied()
            .unwrap_or(self.redis_url.as_str())
    }

    pub fn is_cluster(&self) -> bool {
        self.redis_mode == RedisMode::Cluster
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_connect_timeout_ms)
    }

    pub fn wait_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_wait_timeout_ms)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_command_timeout_ms)
    }
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseSettings {
    /// PostgreSQL URL for job history, statistics, API keys and schedules.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/cache_service",
        value_parser = Redacted(parse_database_url),
        hide_env_values = true
    )]
    pub database_url: String,

    /// Largest number of PostgreSQL connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Time allowed to get a PostgreSQL connection, in milliseconds.
    #[arg(long, env = "DATABASE_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub database_timeout_ms: u64,
}

impl DatabaseSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.database_timeout_ms)
    }
}

#[derive(Debug, Clone, Args)]
pub struct CacheSettings {
    /// TTL in seconds of values stored without one (0: no expiry).
    #[arg(long, env = "CACHE_DEFAULT_TTL", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(0..=31_536_000))]
    pub cache_default_ttl: u32,

    /// Values longer than this many bytes are LZ4-compressed when that saves space.
    #[arg(long, env = "COMPRESSION_MIN_BYTES", default_value_t = 1024)]
    pub compression_min_bytes: usize,

    /// Largest accepted value, in bytes of compact JSON or raw bytes.
    #[arg(long, env = "MAX_VALUE_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=512 * 1024 * 1024))]
    pub max_value_bytes: u64,

    /// Bytes of the api's near cache for namespaces with `nearCache` (0: none).
    #[arg(long, env = "NEAR_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub near_cache_bytes: u64,

    /// How long a lease handed out by a `?lease=true` read lasts, in milliseconds.
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub lease_ttl_ms: u64,

    /// Data keys sealing encrypted values, `id:base64-of-32-bytes,…`; the first seals new values.
    #[arg(
        long,
        env = "DATA_ENCRYPTION_KEYS",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true,
        value_parser = Redacted(parse_data_keys)
    )]
    pub data_encryption_keys: Secret,

    /// Also seal sessions and permission results (needs DATA_ENCRYPTION_KEYS).
    #[arg(long, env = "ENCRYPT_PLATFORM_DATA", default_value_t = false, action = clap::ArgAction::Set)]
    pub encrypt_platform_data: bool,

    /// Largest total of stored value bytes one mget may answer; beyond it, 413.
    #[arg(long, env = "MGET_MAX_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=1024 * 1024 * 1024))]
    pub mget_max_bytes: u64,
}

/// Who may scrape a binary's `/metrics`.
#[derive(Debug, Clone, Args)]
pub struct MetricsTokenArgs {
    /// Bearer tokens `GET /metrics` accepts, comma-separated for rotation (empty: open, for a private network).
    #[arg(
        long,
        env = "METRICS_TOKEN",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub metrics_token: Secret,
}

#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Prefix of the job queues' Redis keys (`{prefix}:jobs:{type}`).
    #[arg(long, env = "QUEUE_PREFIX", default_value = "cache-service")]
    pub queue_prefix: String,

    /// Seconds between a worker's heartbeats on the queues.
    #[arg(long, env = "QUEUE_HEARTBEAT_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub queue_heartbeat_seconds: u64,

    /// Missed heartbeats after which a dead worker's jobs go to another worker.
    #[arg(long, env = "QUEUE_MISSED_HEARTBEATS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=100))]
    pub queue_missed_heartbeats: u64,

    /// Redis of the job queues, when not the data plane's (`REDIS_URL`).
    #[arg(long, env = "QUEUE_REDIS_URL", value_parser = Redacted(parse_redis_url),
          hide_env_values = true)]
    pub queue_redis_url: Option<String>,
}

impl QueueArgs {
    /// The settings of the queues' Redis: `redis` with `QUEUE_REDIS_URL`
    /// when one is given (timeouts and client mode are the data plane's).
    /// The queues always use one standalone Redis: apalis-redis's scripts
    /// touch several keys of a queue, which a cluster allows in one slot only.
    ///
    /// # Errors
    ///
    /// In cluster mode without `QUEUE_REDIS_URL`, naming the setting.
    pub fn redis(&self, redis: &RedisSettings) -> Result<RedisSettings, String> {
        match &self.queue_redis_url {
            Some(url) => Ok(RedisSettings {
                redis_url: url.clone(),
                redis_mode: RedisMode::Standalone,
                ..redis.clone()
            }),
            None if redis.is_cluster() => Err(
                "REDIS_MODE=cluster needs QUEUE_REDIS_URL: the job queues run on a standalone \
                 Redis of their own"
                    .into(),
            ),
            None => Ok(redis.clone()),
        }
    }

    /// Whether the queues have a Redis of their own.
    pub fn has_own_redis(&self) -> bool {
        self.queue_redis_url.is_some()
    }
}

#[derive(Debug, Clone, Args)]
pub struct PreloadArgs {
    /// Comma-separated `host` or `host:port` entries preloads may fetch from
    /// (empty: preloading from URLs is off).
    #[arg(long, env = "PRELOAD_ALLOWED_HOSTS", default_value = "")]
    pub preload_allowed_hosts: String,

    /// Largest preload download in bytes.
    #[arg(long, env = "PRELOAD_MAX_BYTES", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=1024 * 1024 * 1024))]
    pub preload_max_bytes: u64,

    /// Longest a preload download may take, in seconds.
    #[arg(long, env = "PRELOAD_TIMEOUT_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub preload_timeout_seconds: u64,
}

/// The api's instrumentation: live figures, metrics, operation log, rollups
/// and the outbound monitoring report.
#[derive(Debug, Clone, Args)]
pub struct ObservabilitySettings {
    /// `false` turns off every per-operation figure, metric and log record
    /// (the baseline of the instrumentation benchmark).
    #[arg(long, env = "INSTRUMENTATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub instrumentation: bool,

    /// Fraction of reads written to the operation log (writes, deletes,
    /// expiries, flushes and errors are always logged).
    #[arg(long, env = "LOG_READ_SAMPLE_RATE", default_value_t = 0.01, value_parser = parse_fraction)]
    pub log_read_sample_rate: f64,

    /// Operation-log records per shipped batch.
    #[arg(long, env = "LOG_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub log_batch_size: u64,

    /// Longest a record waits in memory before its batch is shipped, in milliseconds.
    #[arg(long, env = "LOG_FLUSH_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub log_flush_interval_ms: u64,

    /// Length of a statistics rollup period in seconds (whole minutes).
    #[arg(long, env = "STATS_ROLLUP_SECONDS", default_value_t = 60, value_parser = parse_whole_minutes)]
    pub stats_rollup_seconds: u64,

    /// Where the metrics report is posted (`{url}/internal/metrics/cache`); unset: not sent.
    #[arg(long, env = "MONITORING_SERVICE_URL")]
    pub monitoring_service_url: Option<String>,

    /// Seconds between two metrics reports.
    #[arg(long, env = "MONITORING_INTERVAL_S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub monitoring_interval_s: u64,

    #[command(flatten)]
    pub outbound: OutboundSettings,
}

impl ObservabilitySettings {
    pub fn log_flush_interval(&self) -> Duration {
        Duration::from_millis(self.log_flush_interval_ms)
    }

    pub fn rollup_period(&self) -> Duration {
        Duration::from_secs(self.stats_rollup_seconds)
    }
}

/// Calls to the platform's other services (monitoring, audit).
#[derive(Debug, Clone, Args)]
pub struct OutboundSettings {
    /// `X-Service-Token` this service presents to the platform's services.
    #[arg(
        long,
        env = "OUTBOUND_SERVICE_TOKEN",
        default_value = "",
        hide_default_value = true
    )]
    pub outbound_service_token: Secret,

    /// Deadline of one outbound call, in milliseconds.
    #[arg(long, env = "OUTBOUND_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub outbound_timeout_ms: u64,
}

impl OutboundSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.outbound_timeout_ms)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct TelemetrySettings {
    /// Log format: `human` or `json` (one object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Log filter in `tracing` syntax, e.g. `info,cache_api=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub rust_log: String,
}

/// A text setting whose value never appears in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The value parser of a setting that holds a secret (a URL with a
/// password, tokens, keys): a bad value is refused with the setting's name
/// and the reason, never with the value itself (clap's own message repeats
/// it on the terminal and in whatever collects start-up output).
#[derive(Clone, Copy)]
pub struct Redacted<T>(pub fn(&str) -> Result<T, String>);

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redacted")
    }
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Redacted<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg.map_or_else(
            || "a setting".to_owned(),
            |a| {
                let flag = a
                    .get_long()
                    .map_or_else(|| a.get_id().to_string(), |l| format!("--{l}"));
                match a.get_env().and_then(|e| e.to_str()) {
                    Some(env) => format!("{env} ({flag})"),
                    None => flag,
                }
            },
        );
        let refuse = |why: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {name} (not shown: it may hold a secret): {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refuse("not UTF-8"))?;
        (self.0)(text).map_err(|why| refuse(&why))
    }
}

fn parse_data_keys(value: &str) -> Result<Secret, String> {
    crate::sealing::Keyring::parse(value).map(|_| Secret(value.to_owned()))
}

impl CacheSettings {
    /// The data keys, checked when the settings were parsed.
    ///
    /// # Errors
    ///
    /// When `ENCRYPT_PLATFORM_DATA` is on without a key, or (settings built
    /// by hand) the keys do not parse.
    pub fn keyring(&self) -> Result<crate::sealing::Keyring, String> {
        let ring = crate::sealing::Keyring::parse(self.data_encryption_keys.expose())?;
        if self.encrypt_platform_data && ring.is_empty() {
            return Err("ENCRYPT_PLATFORM_DATA=true needs DATA_ENCRYPTION_KEYS".into());
        }
        Ok(ring)
    }
}

fn parse_redis_url(value: &str) -> Result<String, String> {
    deadpool_redis::redis::Client::open(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a Redis URL: {e}"))
}

/// One URL, or the comma-separated seed nodes of a cluster.
fn parse_redis_urls(value: &str) -> Result<String, String> {
    for url in value.split(',').map(str::trim) {
        parse_redis_url(url)?;
    }
    Ok(value.to_owned())
}

fn parse_database_url(value: &str) -> Result<String, String> {
    let postgres = value.starts_with("postgres://") || value.starts_with("postgresql://");
    match value.parse::<sqlx::postgres::PgConnectOptions>() {
        Ok(_) if postgres => Ok(value.to_owned()),
        _ => Err("not a PostgreSQL URL (postgres://user:password@host:port/database)".into()),
    }
}

fn parse_fraction(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("expected a number from 0 to 1".into()),
    }
}

fn parse_whole_minutes(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(s) if (60..=86_400).contains(&s) && s % 60 == 0 => Ok(s),
        _ => Err("expected whole minutes in seconds, from 60 to 86400".into()),
    }
}

fn parse_log_filter(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a log filter: {e}"))
}
