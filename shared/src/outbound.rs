//! Calls to the platform's other services (the monitoring and audit
//! services): JSON posts with `X-Service-Token`, a deadline per call and the
//! service design's retry policy (3 retries, exponential from 1 s, at most
//! 10 s apart). Never called on a request path.

use std::time::Duration;

use crate::config::{OutboundSettings, Secret};
use serde::Serialize;

use crate::retry::{MAX_RUNS, backoff};

/// Why a post did not land.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The service refused the request as such (a 4xx other than 408/429):
    /// sending it again would not help.
    #[error("refused with {0}")]
    Refused(reqwest::StatusCode),
    /// Unreachable, too slow, or answered 5xx/408/429: worth retrying.
    #[error("{0}")]
    Unavailable(String),
}

/// A client for one kind of outbound call.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    token: Secret,
}

impl Client {
    pub fn new(settings: &OutboundSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout())
            .build()
            .unwrap_or_else(|err| {
                tracing::warn!(%err, "outbound client settings refused; using defaults");
                reqwest::Client::new()
            });
        Self {
            http,
            token: settings.outbound_service_token.clone(),
        }
    }

    /// One attempt.
    ///
    /// # Errors
    ///
    /// [`OutboundError`] saying whether a retry could help.
    pub async fn post(&self, url: &str, body: &impl Serialize) -> Result<(), OutboundError> {
        let response = self
            .http
            .post(url)
            .header("X-Service-Token", self.token.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| OutboundError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_client_error()
            && status != reqwest::StatusCode::REQUEST_TIMEOUT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            return Err(OutboundError::Refused(status));
        }
        Err(OutboundError::Unavailable(format!("answered {status}")))
    }

    /// The first attempt and up to 3 retries, 1 s, 2 s and 4 s apart.
    ///
    /// # Errors
    ///
    /// The last attempt's error, or the first refusal.
    pub async fn post_with_retries(
        &self,
        url: &str,
        body: &impl Serialize,
    ) -> Result<(), OutboundError> {
        self.post_with_backoff(url, body, backoff).await
    }

    async fn post_with_backoff(
        &self,
        url: &str,
        body: &impl Serialize,
        delay: impl Fn(u32) -> Duration,
    ) -> Result<(), OutboundError> {
        let mut attempt = 1;
        loop {
            match self.post(url, body).await {
                Ok(()) => return Ok(()),
                Err(err @ OutboundError::Refused(_)) => return Err(err),
                Err(err) if attempt >= MAX_RUNS => return Err(err),
                Err(err) => {
                    tracing::debug!(%err, attempt, url, "outbound call failed; retrying");
                    tokio::time::sleep(delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}
