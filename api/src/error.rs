//! The only place where errors become HTTP: status, code and the envelope of
//! API.md §3. Server-side failures are logged here with their cause chain and
//! answered with an opaque message.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cache_shared::Error;
use cache_shared::error::Absence;
use serde::Serialize;

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Name of this service in every error envelope.
pub const SERVICE_NAME: &str = "cache-service";

/// Why a request failed.
#[derive(Debug)]
pub enum ApiError {
    /// An operation's own error, with the operation's name for `details`.
    Op {
        error: Error,
        operation: &'static str,
    },
    /// No or an unknown credential; `bearer` asks for `WWW-Authenticate: Bearer`.
    Unauthorized {
        message: &'static str,
        bearer: bool,
    },
    Forbidden(String),
    /// The platform auth or RBAC service gave no usable answer (the text says which).
    AuthUnavailable(String),
    /// Too many requests in flight on this instance: refused at once.
    Overloaded,
    /// The body did not arrive whole within `BODY_READ_TIMEOUT_MS` (the value).
    BodyTimeout(u64),
    /// The request as a whole ran past `REQUEST_TIMEOUT_MS`.
    Deadline,
    RouteNotFound,
    MethodNotAllowed,
    UnsupportedMediaType(String),
}

impl ApiError {
    /// Tags an operation's error with the operation's name.
    pub fn op(operation: &'static str) -> impl Fn(Error) -> Self {
        move |error| Self::Op { error, operation }
    }

    /// A bad request outside any particular operation (headers, body shape).
    pub fn bad_request(
        field: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self::Op {
            error: Error::validation(field, message),
            operation: "request",
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self::Op {
            error,
            operation: "request",
        }
    }
}

/// The error envelope of every non-2xx answer (API.md §3).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ErrorEnvelope)]
pub struct Envelope<'a> {
    /// e.g. `VALIDATION_ERROR`, `KEY_NOT_FOUND`, `CACHE_UNAVAILABLE`.
    code: &'static str,
    message: String,
    /// Always `cache-service`.
    service: &'static str,
    /// RFC 3339, UTC, milliseconds.
    timestamp: String,
    details: Details<'a>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Details<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<&'static str>,
    /// A byte limit (`PAYLOAD_TOO_LARGE`) or the name of a quota (`QUOTA_EXCEEDED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<Limit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<u64>,
    /// A read answered by a negative entry (API.md §10).
    #[serde(skip_serializing_if = "Option::is_none")]
    negative: Option<bool>,
    /// The lease token this caller holds: load the value and set it with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<&'a str>,
    /// Another caller holds the lease and did not set the key in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    leased: Option<bool>,
    retryable: bool,
}

/// `details.limit`: a number of bytes, or which quota.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Limit {
    Bytes(usize),
    Named(&'static str),
}

/// Status, code and message of one failure, before it is rendered.
struct Reply<'a> {
    status: StatusCode,
    code: &'static str,
    message: String,
    key: Option<&'a str>,
    field: Option<&'a str>,
    operation: Option<&'static str>,
    limit: Option<Limit>,
    quota: Option<u64>,
    usage: Option<u64>,
    absence: Option<&'a Absence>,
    /// `Retry-After` in seconds, and the rate behind it for `RateLimit-*`.
    retry_after: Option<(u64, Option<u64>)>,
}

impl Reply<'_> {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            key: None,
            field: None,
            operation: None,
            limit: None,
            quota: None,
            usage: None,
            absence: None,
            retry_after: None,
        }
    }
}

impl ApiError {
    fn reply(&self) -> Reply<'_> {
        match self {
            ApiError::Op { error, operation } => {
                let mut reply = match error {
                    Error::Validation { field, message } => Reply {
                        field: Some(field.as_ref()),
                        ..Reply::new(StatusCode::BAD_REQUEST, error.code(), message.clone())
                    },
                    Error::KeyNotFound { key, absence } => Reply {
                        key: Some(key.as_str()),
                        absence: Some(absence),
                        ..Reply::new(StatusCode::NOT_FOUND, error.code(), error.to_string())
                    },
                    Error::SessionNotFound | Error::NotFound { .. } => {
                        Reply::new(StatusCode::NOT_FOUND, error.code(), error.to_string())
                    }
                    Error::Conflict(message) => {
                        Reply::new(StatusCode::CONFLICT, error.code(), message.clone())
                    }
                    Error::Forbidden(message) => {
                        Reply::new(StatusCode::FORBIDDEN, error.code(), message.clone())
                    }
                    Error::RateLimited {
                        message,
                        limit,
                        retry_after_secs,
                    } => Reply {
                        retry_after: Some(((*retry_after_secs).max(1), Some(*limit))),
                        ..Reply::new(StatusCode::TOO_MANY_REQUESTS, error.code(), message.clone())
                    },
                    Error::QuotaExceeded {
                        limit,
                        quota,
                        usage,
                    } => Reply {
                        limit: Some(Limit::Named(limit)),
                        quota: Some(*quota),
                        usage: Some(*usage),
                        ..Reply::new(
                            StatusCode::INSUFFICIENT_STORAGE,
                            error.code(),
                            error.to_string(),
                        )
                    },
                    Error::PayloadTooLarge { message, limit } => Reply {
                        limit: Some(Limit::Bytes(*limit)),
                        ..Reply::new(StatusCode::PAYLOAD_TOO_LARGE, error.code(), message.clone())
                    },
                    Error::CacheUnavailable(_) => {
                        log_server_error(error, operation);
                        Reply::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            error.code(),
                            "the cache is unavailable; retry shortly",
                        )
                    }
                    Error::StoreUnavailable(_) => {
                        log_server_error(error, operation);
                        Reply::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            error.code(),
                            "the database is unavailable; retry shortly",
                        )
                    }
                    Error::Sealing(message) => {
                        log_server_error(error, operation);
                        Reply::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            error.code(),
                            message.clone(),
                        )
                    }
                    Error::Internal(_) => {
                        log_server_error(error, operation);
                        Reply::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            error.code(),
                            "internal error",
                        )
                    }
                };
                reply.operation = Some(operation);
                reply
            }
            ApiError::Unauthorized { message, .. } => {
                Reply::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", *message)
            }
            ApiError::Forbidden(message) => {
                Reply::new(StatusCode::FORBIDDEN, "FORBIDDEN", message.clone())
            }
            ApiError::AuthUnavailable(message) => Reply {
                retry_after: Some((1, None)),
                ..Reply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "AUTH_UNAVAILABLE",
                    format!("{message}; retry shortly"),
                )
            },
            ApiError::Overloaded => Reply {
                retry_after: Some((1, None)),
                ..Reply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "OVERLOADED",
                    "too many requests in flight; retry shortly",
                )
            },
            ApiError::BodyTimeout(ms) => Reply {
                field: Some("body"),
                ..Reply::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "REQUEST_TIMEOUT",
                    format!("the request body did not arrive within {ms} ms"),
                )
            },
            ApiError::Deadline => Reply {
                retry_after: Some((1, None)),
                ..Reply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "OVERLOADED",
                    "the request did not finish within its deadline; retry shortly",
                )
            },
            ApiError::RouteNotFound => {
                Reply::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
            }
            ApiError::MethodNotAllowed => Reply::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "method not allowed on this route",
            ),
            ApiError::UnsupportedMediaType(message) => Reply::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                message.clone(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let reply = self.reply();
        let retryable = matches!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::TOO_MANY_REQUESTS
        );
        let envelope = Envelope {
            code: reply.code,
            message: reply.message,
            service: SERVICE_NAME,
            timestamp: crate::views::timestamp(chrono::Utc::now()),
            details: Details {
                key: reply.key,
                field: reply.field,
                operation: reply.operation,
                limit: reply.limit,
                quota: reply.quota,
                usage: reply.usage,
                negative: matches!(reply.absence, Some(Absence::Negative)).then_some(true),
                lease: match reply.absence {
                    Some(Absence::LeaseGranted(token)) => Some(token.as_str()),
                    _ => None,
                },
                leased: matches!(reply.absence, Some(Absence::Leased)).then_some(true),
                retryable,
            },
        };
        let mut response = (reply.status, axum::Json(envelope)).into_response();
        if let Some((seconds, rate)) = reply.retry_after {
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            if let Some(rate) = rate {
                headers.insert(RATELIMIT_LIMIT, HeaderValue::from(rate));
                headers.insert(RATELIMIT_REMAINING, HeaderValue::from_static("0"));
                headers.insert(RATELIMIT_RESET, HeaderValue::from(seconds));
            }
        }
        if let ApiError::Unauthorized { bearer: true, .. } = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn log_server_error(error: &Error, operation: &str) {
    let mut chain = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    match error {
        Error::Internal(_) | Error::Sealing(_) => tracing::error!(operation, "{error}{chain}"),
        _ => tracing::warn!(operation, "{error}{chain}"),
    }
}

/// Answers unknown routes with the envelope instead of an empty `404`.
pub async fn route_not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// Answers a known route called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
