//! How a job run fails: worth retrying (Redis or PostgreSQL blipped) or
//! permanently (the payload can never succeed). The queue retries only the first.

use cache_shared::Error;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A transient dependency failure; the queue tries again with backoff.
    #[error("retryable: {0}")]
    Retryable(#[source] Error),
    /// The job cannot succeed as asked; it ends `failed` at once.
    #[error("{0}")]
    Permanent(String),
}

impl From<Error> for JobError {
    fn from(err: Error) -> Self {
        match err {
            Error::CacheUnavailable(_) | Error::StoreUnavailable(_) => Self::Retryable(err),
            other => Self::Permanent(other.to_string()),
        }
    }
}
