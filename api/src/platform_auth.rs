//! Platform tokens on the public plane (API.md §11): a bearer token that is
//! not one of our API keys is verified by the platform's auth service and,
//! when an RBAC service is configured, each route's role is asked of it.
//!
//! Both answers are remembered for at most `AUTH_CACHE_SECONDS`, valid or
//! not, in bounded caches keyed by the token's digest (the token itself is
//! never kept or logged); concurrent requests with one new token share one
//! call. Every failure to get a usable answer — unreachable, too slow, 5xx,
//! a body we cannot read — is [`PlatformError::Unavailable`]: the request is
//! refused with `503`, never let through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_shared::api_keys::Role;
use cache_shared::config::Secret;
use cache_shared::keys::TenantId;
use serde::Deserialize;

/// Answers remembered at most, per cache.
const MAX_REMEMBERED: u64 = 10_000;
/// Longest user id accepted from the auth service.
const MAX_USER_ID_BYTES: usize = 200;
/// Verifications of tokens not remembered, at once: a flood of made-up
/// tokens cannot turn into as many calls to the auth service.
const CONCURRENT_VERIFICATIONS: usize = 16;
/// Pause before the second, third and fourth attempt: the design's retry
/// count, with pauses short enough to fit a request.
const RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

/// Where the platform's auth and RBAC services are, and how long to trust them.
#[derive(Debug, Clone)]
pub struct PlatformAuthSettings {
    /// `{url}/internal/auth/verify-token`.
    pub auth_url: String,
    /// `{url}/internal/permissions/check`; without it the token's roles decide.
    pub rbac_url: Option<String>,
    /// `X-Service-Token` presented to both.
    pub service_token: Secret,
    /// How long an answer is remembered (zero: not at all).
    pub cache_for: Duration,
    /// Deadline of all attempts of one check together.
    pub timeout: Duration,
}

/// Who a valid platform token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformUser {
    pub user_id: String,
    pub tenant: TenantId,
    /// The highest of the token's roles that is one of ours.
    pub best_role: Option<Role>,
}

/// Why a platform token does not give access.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlatformError {
    /// The auth service says the token is not valid.
    #[error("the platform token is not valid")]
    Invalid,
    /// The auth or RBAC service gave no usable answer (the text says which and why).
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug, Clone)]
enum Verdict {
    Valid(Arc<PlatformUser>),
    Invalid,
}

/// See the module docs.
pub struct PlatformAuth {
    http: reqwest::Client,
    verify_url: String,
    check_url: Option<String>,
    token: Secret,
    timeout: Duration,
    tokens: Option<moka::future::Cache<[u8; 32], Verdict>>,
    grants: Option<moka::future::Cache<(String, TenantId, Role), bool>>,
    calls: AtomicU64,
    verifications: tokio::sync::Semaphore,
}

impl std::fmt::Debug for PlatformAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformAuth")
            .field("verify_url", &self.verify_url)
            .field("check_url", &self.check_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyAnswer {
    valid: bool,
    user_id: Option<String>,
    tenant_id: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct CheckAnswer {
    allowed: bool,
}

/// What one call to a platform service came back with.
enum Answer {
    Body(bytes::Bytes),
    Unauthorized,
}

fn cache<K, V>(ttl: Duration) -> Option<moka::future::Cache<K, V>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    (!ttl.is_zero()).then(|| {
        moka::future::Cache::builder()
            .max_capacity(MAX_REMEMBERED)
            .time_to_live(ttl)
            .build()
    })
}

impl PlatformAuth {
    /// # Errors
    ///
    /// When the HTTP client cannot be built (its TLS set-up failed).
    pub fn new(settings: PlatformAuthSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let base = |url: &str| url.trim_end_matches('/').to_owned();
        Ok(Self {
            http,
            verify_url: format!("{}/internal/auth/verify-token", base(&settings.auth_url)),
            check_url: settings
                .rbac_url
                .as_deref()
                .map(|url| format!("{}/internal/permissions/check", base(url))),
            token: settings.service_token,
            timeout: settings.timeout,
            tokens: cache(settings.cache_for),
            grants: cache(settings.cache_for),
            calls: AtomicU64::new(0),
            verifications: tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS),
        })
    }

    /// Calls made to the auth and RBAC services so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Whether the answer for the token of `digest` (`api_keys::digest`, taken
    /// once per request) is already remembered (a known token is not held
    /// to the failed-authentication budget).
    pub fn knows(&self, digest: &[u8; 32]) -> bool {
        self.tokens.as_ref().is_some_and(|c| c.contains_key(digest))
    }

    /// The user behind `token`, whose `digest` keys the remembered answers.
    ///
    /// # Errors
    ///
    /// [`PlatformError::Invalid`] for a token the auth service refuses,
    /// [`PlatformError::Unavailable`] when it gives no usable answer.
    pub async fn verify(
        &self,
        digest: [u8; 32],
        token: &str,
    ) -> Result<Arc<PlatformUser>, PlatformError> {
        let verdict = match &self.tokens {
            Some(cache) => cache
                .try_get_with(digest, self.ask_auth(token))
                .await
                .map_err(|err| (*err).clone())?,
            None => self.ask_auth(token).await?,
        };
        match verdict {
            Verdict::Valid(user) => Ok(user),
            Verdict::Invalid => Err(PlatformError::Invalid),
        }
    }

    /// The role this user acts with when it needs `needed`: with RBAC, the
    /// highest role RBAC allows from `needed` up (`None` when it refuses
    /// `needed`), so handlers that offer more to higher roles see the user's
    /// real role; without RBAC, the highest of the token's roles that is one
    /// of ours (`None` when there is none).
    ///
    /// # Errors
    ///
    /// [`PlatformError::Unavailable`] when RBAC gives no usable answer.
    pub async fn role_for(
        &self,
        user: &PlatformUser,
        needed: Role,
    ) -> Result<Option<Role>, PlatformError> {
        let Some(check_url) = &self.check_url else {
            return Ok(user.best_role);
        };
        let mut granted = None;
        for role in Role::ALL.into_iter().filter(|r| r.allows(needed)) {
            if !self.allowed(check_url, user, role).await? {
                break;
            }
            granted = Some(role);
        }
        Ok(granted)
    }

    /// RBAC's answer for `user` acting as `role`, remembered.
    async fn allowed(
        &self,
        check_url: &str,
        user: &PlatformUser,
        role: Role,
    ) -> Result<bool, PlatformError> {
        let key = (user.user_id.clone(), user.tenant.clone(), role);
        match &self.grants {
            Some(cache) => cache
                .try_get_with(key, self.ask_rbac(check_url, user, role))
                .await
                .map_err(|err| (*err).clone()),
            None => self.ask_rbac(check_url, user, role).await,
        }
    }

    /// Whether roles are asked of an RBAC service.
    pub fn uses_rbac(&self) -> bool {
        self.check_url.is_some()
    }

    async fn ask_auth(&self, token: &str) -> Result<Verdict, PlatformError> {
        let _permit =
            self.verifications.acquire().await.map_err(|_| {
                PlatformError::Unavailable("the verification gate is closed".into())
            })?;
        let body = serde_json::json!({ "token": token });
        let answer = self.call("auth", &self.verify_url, &body).await?;
        let Answer::Body(bytes) = answer else {
            return Ok(Verdict::Invalid);
        };
        let malformed =
            || PlatformError::Unavailable("the auth service answered something unreadable".into());
        let parsed: VerifyAnswer = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        if !parsed.valid {
            return Ok(Verdict::Invalid);
        }
        // The id goes into records (`user:<id>`, 255 characters) and logs.
        let user_id = parsed
            .user_id
            .filter(|u| {
                !u.is_empty() && u.len() <= MAX_USER_ID_BYTES && !u.chars().any(char::is_control)
            })
            .ok_or_else(malformed)?;
        let tenant = parsed
            .tenant_id
            .and_then(|t| TenantId::parse(&t, "tenantId").ok())
            .ok_or_else(malformed)?;
        let best_role = parsed
            .roles
            .iter()
            .filter_map(|r| Role::parse(r, "roles").ok())
            .max();
        Ok(Verdict::Valid(Arc::new(PlatformUser {
            user_id,
            tenant,
            best_role,
        })))
    }

    async fn ask_rbac(
        &self,
        url: &str,
        user: &PlatformUser,
        action: Role,
    ) -> Result<bool, PlatformError> {
        let body = serde_json::json!({
            "userId": user.user_id,
            "tenantId": user.tenant.as_str(),
            "resource": "cache",
            "action": action.as_str(),
        });
        match self.call("rbac", url, &body).await? {
            Answer::Body(bytes) => serde_json::from_slice::<CheckAnswer>(&bytes)
                .map(|a| a.allowed)
                .map_err(|_| {
                    PlatformError::Unavailable(
                        "the RBAC service answered something unreadable".into(),
                    )
                }),
            Answer::Unauthorized => Err(PlatformError::Unavailable(
                "the RBAC service refused this service's token".into(),
            )),
        }
    }

    /// Posts `body`, retrying what may pass on a second try (no connection,
    /// a timeout, 5xx, 408, 429) while the check's deadline allows.
    async fn call(
        &self,
        service: &'static str,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<Answer, PlatformError> {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let failure = match self.attempt(url, body, deadline).await {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Final(why) => return Err(unavailable(service, &why)),
                Attempt::Again(why) => why,
            };
            let pause = RETRY_PAUSES.get(attempt).copied();
            match pause {
                Some(pause) if Instant::now() + pause < deadline => {
                    tracing::debug!(service, attempt, %failure, "platform service call failed; retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                _ => return Err(unavailable(service, &failure)),
            }
        }
    }

    async fn attempt(&self, url: &str, body: &serde_json::Value, deadline: Instant) -> Attempt {
        let left = deadline.saturating_duration_since(Instant::now());
        let sent = self
            .http
            .post(url)
            .header("X-Service-Token", self.token.expose())
            .json(body)
            .timeout(left)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) if err.is_timeout() => return Attempt::Again("timed out".into()),
            // Without the URL: it is ours, but the error text need not carry it twice.
            Err(err) => return Attempt::Again(err.without_url().to_string()),
        };
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Attempt::Done(Answer::Unauthorized);
        }
        let retry = status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        if !status.is_success() {
            let why = format!("answered {status}");
            return if retry {
                Attempt::Again(why)
            } else {
                Attempt::Final(why)
            };
        }
        match response.bytes().await {
            Ok(bytes) => Attempt::Done(Answer::Body(bytes)),
            Err(err) => Attempt::Again(err.without_url().to_string()),
        }
    }
}

enum Attempt {
    Done(Answer),
    /// Worth another try.
    Again(String),
    /// Another try would get the same answer.
    Final(String),
}

fn unavailable(service: &str, why: &str) -> PlatformError {
    tracing::warn!(service, why, "platform {service} service unavailable");
    PlatformError::Unavailable(format!("the platform {service} service is unavailable"))
}
