//! The one error type of cache operations. Each variant is a class of outcome
//! the HTTP layer (`api/src/error.rs`) maps to a status and a code of API.md §3;
//! this module knows nothing of HTTP.

use std::borrow::Cow;

/// Why a cache, session, permission or store operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something the contract does not accept.
    #[error("{message}")]
    Validation {
        field: Cow<'static, str>,
        message: String,
    },
    /// A cache key (or session/permission entry) that is absent; `absence`
    /// says more when the caller should act on it (API.md §10).
    #[error("key '{key}' not found{}", absence.explained())]
    KeyNotFound { key: String, absence: Absence },
    /// A session that is absent: apart from [`Error::KeyNotFound`] because a
    /// session id is a credential, which no message may carry.
    #[error("session not found")]
    SessionNotFound,
    /// Anything else that does not exist (or belongs to another tenant).
    #[error("{what} not found")]
    NotFound { what: String },
    /// A request that contradicts the current state.
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (a role or tenant rule); says which rule.
    #[error("{0}")]
    Forbidden(String),
    /// The tenant is over a rate (operations per second, active jobs): try
    /// again after `retry_after_secs`.
    #[error("{message}")]
    RateLimited {
        message: String,
        /// The rate or count that was reached.
        limit: u64,
        retry_after_secs: u64,
    },
    /// A write would take the tenant (or a namespace) over a quota; nothing
    /// was stored. `usage` is before the refused write.
    #[error("{limit} quota exceeded: {usage} used of {quota}")]
    QuotaExceeded {
        limit: &'static str,
        quota: u64,
        usage: u64,
    },
    /// A value or body over its configured limit.
    #[error("{message}")]
    PayloadTooLarge { message: String, limit: usize },
    /// Redis did not answer in time or refused the connection.
    #[error("cache unavailable")]
    CacheUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// PostgreSQL was needed and did not answer.
    #[error("store unavailable")]
    StoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An encrypted value that cannot be sealed or opened here (its data key
    /// is not configured, or it is damaged): a server-side failure whose
    /// message says so, so an operator can act on it.
    #[error("{0}")]
    Sealing(String),
    /// A bug or corrupt data: logged with its cause, answered opaquely.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a read found no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Absence {
    /// Nothing is stored.
    Missing,
    /// A negative entry says the id does not exist: the caller need not look
    /// in its own database.
    Negative,
    /// The caller holds the key's lease: it should load the value and set it
    /// with this token.
    LeaseGranted(String),
    /// Another caller holds the lease and did not set the key in time.
    Leased,
}

impl Absence {
    fn explained(&self) -> &'static str {
        match self {
            Self::Missing => "",
            Self::Negative => " (a negative entry: it is known not to exist)",
            Self::LeaseGranted(_) => "; you hold its lease: load it and set it with the token",
            Self::Leased => "; another caller is loading it and did not set it in time",
        }
    }
}

impl Error {
    /// A plain miss of `key`.
    pub fn missing(key: impl Into<String>) -> Self {
        Self::KeyNotFound {
            key: key.into(),
            absence: Absence::Missing,
        }
    }

    pub fn validation(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into().into())
    }

    /// The code of API.md §3 for this class of failure (also the operation
    /// log's `error_code`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Validation { .. } => "VALIDATION_ERROR",
            Error::KeyNotFound { .. } | Error::SessionNotFound => "KEY_NOT_FOUND",
            Error::NotFound { .. } => "NOT_FOUND",
            Error::Conflict(_) => "CONFLICT",
            Error::Forbidden(_) => "FORBIDDEN",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            Error::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Error::CacheUnavailable(_) => "CACHE_UNAVAILABLE",
            Error::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            Error::Sealing(_) | Error::Internal(_) => "INTERNAL_ERROR",
        }
    }
}

/// Whether `err` says Redis refused this client's credentials: `WRONGPASS`
/// on `AUTH`, or `NOAUTH` on a command sent without a password.
pub fn refuses_credentials(err: &deadpool_redis::redis::RedisError) -> bool {
    err.kind() == deadpool_redis::redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
}

impl From<deadpool_redis::redis::RedisError> for Error {
    fn from(err: deadpool_redis::redis::RedisError) -> Self {
        // Connection-level failures, timeouts and a server that is loading,
        // busy or out of memory are transient; any other error reply (wrong
        // type, script error) is a bug of ours.
        // A transaction refused as a whole carries its commands' errors inside.
        let transient_reply = err.code().is_some_and(is_transient_code)
            || err
                .clone()
                .into_server_errors()
                .is_some_and(|errors| errors.iter().any(|(_, e)| is_transient_code(e.code())));
        if err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
            // A password refused (changed under a running service) makes
            // the cache unavailable, like an outage; it is no bug of ours.
            || refuses_credentials(&err)
            // A cluster changing hands (MOVED/ASK past the client's
            // retries, TRYAGAIN, CLUSTERDOWN, a node it cannot reach).
            || err.is_cluster_error()
            || err.kind() == deadpool_redis::redis::ErrorKind::ClusterConnectionNotFound
            || transient_reply
        {
            Self::CacheUnavailable(Box::new(err))
        } else {
            Self::Internal(Box::new(err))
        }
    }
}

/// SQLSTATEs that say "not now": connection exceptions (08), transaction
/// rollbacks such as serialization failures (40), insufficient resources
/// (53), operator intervention such as a shutdown or a cancelled statement
/// (57), and a read-only standby (25006).
fn is_transient_sqlstate(code: &str) -> bool {
    code == "25006"
        || ["08", "40", "53", "57"]
            .iter()
            .any(|class| code.starts_with(class))
}

/// Server replies that say "not now" rather than "never".
fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "OOM" | "READONLY" | "CLUSTERDOWN"
    )
}

impl From<deadpool_redis::redis::ParsingError> for Error {
    fn from(err: deadpool_redis::redis::ParsingError) -> Self {
        Self::Internal(Box::new(err))
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::RowNotFound => Self::NotFound {
                what: "record".into(),
            },
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::StoreUnavailable(Box::new(err)),
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| is_transient_sqlstate(&c)) =>
            {
                Self::StoreUnavailable(Box::new(err))
            }
            other => Self::Internal(Box::new(other)),
        }
    }
}
