//! The command line of `cache-api` (API.md §8). Every setting also comes from
//! its environment variable; `--help` lists them all with their defaults.

use std::net::IpAddr;
use std::time::Duration;

use cache_shared::api_keys::Role;
use cache_shared::config::{
    CacheSettings, DatabaseSettings, MetricsTokenArgs, ObservabilitySettings, PreloadArgs,
    QueueArgs, RedisSettings, Secret, TelemetrySettings,
};
use cache_shared::keys::TenantId;
use cache_shared::limits::LimitSettings;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cache-api",
    version,
    about = "The cache-service HTTP api (port 3011)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Settings of `serve`, the default command.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations to DATABASE_URL and exit.
    Migrate(MigrateArgs),
    /// Create, list and revoke API keys of the public plane.
    Keys(KeysArgs),
}

#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key alone is the last line of output (shown only once).
    Create {
        /// Tenant the key acts for (not a reserved id beginning with '_').
        #[arg(long, value_parser = parse_tenant)]
        tenant: String,
        /// reader, writer, admin or operator.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A label to recognise the key by.
        #[arg(long)]
        name: Option<String>,
        /// Days until the key stops working (default: never).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        expires_in_days: Option<u32>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never the keys themselves), newest first.
    List {
        /// Only this tenant's keys.
        #[arg(long, value_parser = parse_tenant)]
        tenant: Option<String>,
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; it stops working within API_KEY_CACHE_SECONDS.
    Revoke {
        /// The key's id, as `keys list` shows it.
        id: String,
    },
}

fn parse_tenant(value: &str) -> Result<String, String> {
    TenantId::parse(value, "tenant")
        .map(|t| t.as_str().to_owned())
        .map_err(|e| e.to_string())
}

fn parse_role(value: &str) -> Result<Role, String> {
    Role::parse(value, "role").map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub http: HttpSettings,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub preload: PreloadArgs,
    #[command(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub platform_auth: PlatformAuthArgs,
    #[command(flatten)]
    pub observability: ObservabilitySettings,
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

/// The platform's auth and RBAC services, for platform tokens on the public plane.
#[derive(Debug, Clone, Args)]
pub struct PlatformAuthArgs {
    /// Auth service verifying platform tokens (`{url}/internal/auth/verify-token`);
    /// unset: only API keys are accepted on the public plane.
    #[arg(long, env = "AUTH_SERVICE_URL", value_parser = parse_http_url)]
    pub auth_service_url: Option<String>,

    /// RBAC service asked for each route's role (`{url}/internal/permissions/check`);
    /// unset: a platform token's own roles decide.
    #[arg(long, env = "RBAC_SERVICE_URL", value_parser = parse_http_url)]
    pub rbac_service_url: Option<String>,

    /// Seconds an auth or RBAC answer (valid or not) is remembered; a revoked
    /// platform token stops working within this time.
    #[arg(long, env = "AUTH_CACHE_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub auth_cache_seconds: u64,

    /// Deadline of one verification or role check, retries included, in milliseconds.
    #[arg(long, env = "AUTH_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=30_000))]
    pub auth_timeout_ms: u64,
}

fn parse_http_url(value: &str) -> Result<String, String> {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(value.to_owned())
        }
        _ => Err("expected an http:// or https:// URL".into()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Args)]
pub struct HttpSettings {
    /// TCP port of the HTTP server.
    #[arg(long, env = "SERVICE_PORT", default_value_t = 3011)]
    pub service_port: u16,

    /// Address to listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Serving threads, each a single-threaded runtime with its own accept
    /// loop and Redis connection; 0: one per CPU.
    #[arg(long, env = "API_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    pub api_threads: u16,

    /// Largest request body in bytes, chunked or not.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Time a client has to send its request headers, in milliseconds.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub header_read_timeout_ms: u64,

    /// Time in-flight requests get to finish after SIGTERM, in milliseconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// Comma-separated tokens accepted in X-Service-Token (several allow rotation).
    #[arg(
        long,
        env = "INTERNAL_SERVICE_TOKEN",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub internal_service_token: Secret,

    /// Named services' tokens, `name:token,…` (a name may appear twice, for rotation).
    #[arg(
        long,
        env = "INTERNAL_SERVICE_TOKENS",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true,
        value_parser = cache_shared::config::Redacted(parse_named_tokens)
    )]
    pub internal_service_tokens: Secret,

    /// A file of more `name:token` entries (one per line or comma-separated), re-read on SIGHUP.
    #[arg(long, env = "INTERNAL_SERVICE_TOKENS_FILE")]
    pub internal_service_tokens_file: Option<std::path::PathBuf>,

    /// Areas each named service may call, `name:area|area,…` (cache, session, permission,
    /// jobs, metrics); a name without an entry may call every area.
    #[arg(long, env = "INTERNAL_SERVICE_SCOPES", default_value = "",
          value_parser = parse_scopes)]
    pub internal_service_scopes: String,

    /// Seconds an API key lookup is remembered; a revocation takes effect within this time.
    #[arg(long, env = "API_KEY_CACHE_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub api_key_cache_seconds: u64,

    /// Seconds past API_KEY_CACHE_SECONDS a key seen before keeps working while PostgreSQL is down.
    #[arg(long, env = "API_KEY_STALE_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub api_key_stale_seconds: u64,

    #[command(flatten)]
    pub metrics: MetricsTokenArgs,

    /// Requests served at once; beyond it the api answers 503 OVERLOADED at once (health routes aside).
    #[arg(long, env = "MAX_IN_FLIGHT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight_requests: u64,

    /// Time a request body has to arrive whole, in milliseconds.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub body_read_timeout_ms: u64,

    /// Certificate chain (PEM, leaf first) to serve HTTPS with; needs TLS_KEY_FILE.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// Private key (PEM) of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// Time a whole request may take before it is answered 503, in milliseconds.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,
}

impl HttpSettings {
    /// `API_THREADS`, with 0 meaning one per CPU this process may use.
    pub fn serving_threads(&self) -> usize {
        match self.api_threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => usize::from(n),
        }
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn api_key_cache(&self) -> Duration {
        Duration::from_secs(self.api_key_cache_seconds)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

fn parse_named_tokens(text: &str) -> Result<Secret, String> {
    cache_shared::tokens::parse_named_tokens(text)?;
    Ok(text
        .parse()
        .unwrap_or_else(|never: std::convert::Infallible| match never {}))
}

fn parse_scopes(text: &str) -> Result<String, String> {
    cache_shared::tokens::parse_scopes(text)?;
    Ok(text.to_owned())
}
