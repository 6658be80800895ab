//! Telling apart, at start-up, a Redis that cannot be used with the
//! settings as they are (a refused password, TLS on one side only: a
//! configuration error that stops start-up) from one that does not answer
//! yet (waited for).

use std::sync::Arc;

use deadpool_redis::redis::{self, AsyncConnectionConfig};

use crate::config::RedisSettings;

/// Redis cannot be used with `REDIS_URL` as it is — a wrong or missing
/// password, or TLS on one side only: a configuration error, unlike an
/// outage, so start-up stops instead of waiting for it to pass. Names
/// neither URL nor password.
#[derive(Debug, thiserror::Error)]
pub enum StartupRefusal {
    #[error(
        "Redis at {addr} refused the credentials of REDIS_URL ({reason}): give its password as \
         redis://:PASSWORD@host:port (REDIS_PASSWORD of the deployment)"
    )]
    Credentials { addr: String, reason: String },
    #[error(
        "the TLS handshake with Redis at {addr} failed ({reason}): check that it serves TLS on \
         that port and that its certificate is trusted (the system CA store, or SSL_CERT_FILE \
         naming the CA's PEM file)"
    )]
    Tls { addr: String, reason: String },
    #[error(
        "Redis at {addr} closed a plain-text connection without answering: if it serves TLS \
         only, REDIS_URL must start with rediss://"
    )]
    PlainTextRefused { addr: String },
    #[error(
        "the TLS handshake with Redis at {addr} got no answer, and it answers plain text: \
         REDIS_URL must start with redis://, or Redis must serve TLS on that port"
    )]
    PlainTextOnly { addr: String },
}

/// The TLS failure behind `err`, if a TLS handshake or record failed.
fn tls_failure(err: &redis::RedisError) -> Option<String> {
    let mut found = None;
    walk_causes(err, &mut |cause| {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            found = Some(tls.to_string());
        }
    });
    found
}

/// Calls `visit` on every error behind `err`, looking inside what the
/// chain of `source()` hides: redis-rs keeps its cause in an `Arc`, and an
/// I/O error shows the source of the error it wraps, not that error.
fn walk_causes(
    err: &(dyn std::error::Error + 'static),
    visit: &mut dyn FnMut(&(dyn std::error::Error + 'static)),
) {
    let mut source = Some(err);
    while let Some(cause) = source {
        visit(cause);
        if let Some(shared) = cause.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            walk_causes(&**shared, visit);
        }
        if let Some(inner) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            walk_causes(inner, visit);
        }
        source = cause.source();
    }
}

/// Opens one connection and sends `PING`, to tell apart at start-up a
/// Redis that cannot be used with `REDIS_URL` (an error: see
/// [`StartupRefusal`]) from one that does not answer yet (callers start
/// anyway and wait for it). Returns whether Redis answered.
///
/// # Errors
///
/// [`StartupRefusal`] when Redis refuses the password, a TLS handshake
/// fails, or a plain-text connection is closed unanswered (a TLS-only port).
pub async fn check_credentials(settings: &RedisSettings) -> Result<bool, StartupRefusal> {
    let Ok(client) = redis::Client::open(settings.first_url()) else {
        // The settings parser already accepted the URL.
        return Ok(false);
    };
    let addr = client.get_connection_info().addr().to_string();
    let tls = matches!(
        client.get_connection_info().addr(),
        redis::ConnectionAddr::TcpTls { .. }
    );
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout()))
        .set_response_timeout(Some(settings.command_timeout()));
    let answer = match client
        .get_multiplexed_async_connection_with_config(&config)
        .await
    {
        Ok(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await,
        Err(err) => Err(err),
    };
    match answer {
        Ok(_) => Ok(true),
        Err(err) if crate::error::refuses_credentials(&err) => Err(StartupRefusal::Credentials {
            addr,
            reason: match err.code() {
                Some("NOAUTH") => format!("no password given, Redis requires one: {err}"),
                _ => format!("wrong password: {err}"),
            },
        }),
        Err(err) => match tls_failure(&err) {
            Some(reason) => Err(StartupRefusal::Tls { addr, reason }),
            None if !tls && closed_unanswered(&err) && listens(&addr, settings).await => {
                Err(StartupRefusal::PlainTextRefused { addr })
            }
            None if tls && answers_plain_text(&addr, settings).await => {
                Err(StartupRefusal::PlainTextOnly { addr })
            }
            None => Ok(false),
        },
    }
}

/// Whether the connection ended before any answer (rather than being refused or timing out).
fn closed_unanswered(err: &redis::RedisError) -> bool {
    if err.is_connection_refusal() || err.is_timeout() {
        return false;
    }
    let mut closed = err.is_connection_dropped();
    walk_causes(err, &mut |cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            closed |= matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            );
        }
    });
    closed
}

/// Whether a plain-text `PING` to `addr` gets a RESP answer (`+PONG`, or
/// an error such as `-NOAUTH`): Redis serves plain text there.
async fn answers_plain_text(addr: &str, settings: &RedisSettings) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.ok()?;
        Some(matches!(first[0], b'+' | b'-'))
    };
    tokio::time::timeout(settings.connect_timeout(), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether something accepts TCP connections at `addr` (`host:port`).
async fn listens(addr: &str, settings: &RedisSettings) -> bool {
    tokio::time::timeout(
        settings.connect_timeout(),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .is_ok_and(|connected| connected.is_ok())
}
