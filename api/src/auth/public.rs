//! The public plane's authorisation: the middleware of every `/api/v1`
//! route resolves the bearer credential — an API key (through a
//! short-lived in-process cache, so the hot path does not query PostgreSQL
//! per request and a revocation is seen within `API_KEY_CACHE_SECONDS`),
//! or a platform token checked by the platform's auth and RBAC services —
//! to its tenant and role, checks the role the route declares, applies an
//! operator's `?tenant=`, and leaves the handler a [`Caller`].

use std::net::IpAddr;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use cache_shared::api_keys::{self, Role};
use cache_shared::keys::TenantId;

use super::{Caller, ClientAddr, Principal, bearer, policy};
use crate::error::ApiError;
use crate::key_cache::{FAILED_AUTH_BUDGET, FAILED_AUTH_WINDOW, Refusal};
use crate::platform_auth::{PlatformAuth, PlatformError};
use crate::state::AppState;

/// What the public plane's middleware needs: the app and the declared roles.
#[derive(Clone, Debug)]
pub struct PublicPlane {
    pub state: AppState,
    /// Every public route's minimum role (`routes::policy::ROUTES`).
    pub roles: &'static [policy::Rule],
}

/// The middleware of every public route (see the module docs).
///
/// # Errors
///
/// `401` without a usable credential, `403` for a low role or a
/// non-operator's `?tenant=`, `400` for a malformed `?tenant=`, `503
/// AUTH_UNAVAILABLE` when a platform token cannot be checked.
pub async fn authorize(
    State(PublicPlane { state, roles }): State<PublicPlane>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let required = policy::required_role(roles, req.method(), route);
    // A platform token's role is asked for what the request needs; the
    // query itself is read once the caller is known (401 before 400).
    let needed = if names_tenant(req.uri()) {
        Role::Operator
    } else {
        required
    };
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let credential = credential(&state, req.headers(), client, needed).await?;
    let other_tenant = requested_tenant(req.uri())?;
    cache_shared::oplog::set_actor(&credential.label);
    let role = credential.role;
    if !role.allows(required) {
        return Err(ApiError::Forbidden(format!(
            "this route needs the {required} role; the caller has {role}"
        )));
    }
    let caller = Caller {
        tenant: acting_tenant(other_tenant, &credential)?,
        principal: Principal::Member {
            label: credential.label,
            role,
            home: credential.tenant,
        },
    };
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// The bearer credential of a request: a platform token when the
/// platform's auth is configured and the secret is not one of our keys,
/// else an API key.
async fn credential(
    state: &AppState,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    needed: Role,
) -> Result<Credential, ApiError> {
    let secret = bearer(headers).ok_or(ApiError::Unauthorized {
        message: "missing bearer credential",
        bearer: true,
    })?;
    match &state.platform_auth {
        Some(platform) if !secret.starts_with(api_keys::KEY_PREFIX) => {
            platform_principal(state, platform, secret, client, needed).await
        }
        _ => key_principal(state, secret, client).await,
    }
}

/// Whether the query string has a `tenant` parameter (not yet checked).
fn names_tenant(uri: &axum::http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("tenant"))
    })
}

/// The tenant the request acts on: an operator's `?tenant=`, else the
/// credential's own.
fn acting_tenant(other: Option<TenantId>, credential: &Credential) -> Result<TenantId, ApiError> {
    match other {
        None => Ok(credential.tenant.clone()),
        Some(_) if credential.role != Role::Operator => Err(ApiError::Forbidden(
            "only an operator may act for another tenant (?tenant=)".into(),
        )),
        Some(tenant) => Ok(tenant),
    }
}

/// Who a credential stands for, before the route's checks.
struct Credential {
    /// The API key's id, or `user:<id>` for a platform token.
    label: String,
    role: Role,
    tenant: TenantId,
}

fn over_budget(retry_after_secs: u64) -> ApiError {
    cache_shared::Error::RateLimited {
        message: format!(
            "too many failed authentications from this address; at most {FAILED_AUTH_BUDGET} per {} s",
            FAILED_AUTH_WINDOW.as_secs()
        ),
        limit: u64::from(FAILED_AUTH_BUDGET),
        retry_after_secs,
    }
    .into()
}

/// An API key of ours.
async fn key_principal(
    state: &AppState,
    secret: &str,
    client: Option<IpAddr>,
) -> Result<Credential, ApiError> {
    let record = match state.key_cache.resolve(&state.db, secret, client).await {
        Ok(record) => record,
        Err(Refusal::Unknown) => {
            return Err(ApiError::Unauthorized {
                message: "unknown, revoked or expired API key",
                bearer: true,
            });
        }
        Err(Refusal::Budget { retry_after_secs }) => return Err(over_budget(retry_after_secs)),
        Err(Refusal::Store(err)) => return Err(ApiError::op("auth")(err)),
    };
    Ok(Credential {
        role: record.role(),
        tenant: TenantId::parse(&record.tenant_id, "tenant")?,
        label: record.id,
    })
}

/// A platform token, verified by the auth service; its role for `needed`
/// from the RBAC service when there is one, else from the token's roles.
async fn platform_principal(
    state: &AppState,
    platform: &PlatformAuth,
    secret: &str,
    client: Option<IpAddr>,
    needed: Role,
) -> Result<Credential, ApiError> {
    let digest = api_keys::digest(secret);
    if !platform.knows(&digest)
        && let Some(wait) = state.key_cache.budget_wait(client)
    {
        return Err(over_budget(wait));
    }
    let user = platform.verify(digest, secret).await.map_err(|err| {
        if let PlatformError::Invalid = err {
            state.key_cache.count_failure(client);
        }
        platform_refusal(err)
    })?;
    let role = platform
        .role_for(&user, needed)
        .await
        .map_err(platform_refusal)?
        .ok_or_else(|| {
            ApiError::Forbidden(if platform.uses_rbac() {
                format!("the platform's RBAC service does not allow the {needed} role here")
            } else {
                "the platform token has none of the roles reader, writer, admin, operator".into()
            })
        })?;
    Ok(Credential {
        label: format!("{}{}", super::PLATFORM_USER_PREFIX, user.user_id),
        role,
        tenant: user.tenant.clone(),
    })
}

/// The answer when the platform's services refuse a token or cannot check it.
fn platform_refusal(err: PlatformError) -> ApiError {
    match err {
        PlatformError::Invalid => ApiError::Unauthorized {
            message: "unknown, revoked or expired platform token",
            bearer: true,
        },
        PlatformError::Unavailable(why) => ApiError::AuthUnavailable(why),
    }
}

#[derive(serde::Deserialize)]
struct TenantParam {
    tenant: Option<String>,
}

fn requested_tenant(uri: &axum::http::Uri) -> Result<Option<TenantId>, ApiError> {
    let axum::extract::Query(param) = axum::extract::Query::<TenantParam>::try_from_uri(uri)
        .map_err(|_| ApiError::bad_request("query", "the query string is malformed"))?;
    param
        .tenant
        .map(|t| TenantId::parse(&t, "tenant"))
        .transpose()
        .map_err(ApiError::from)
}
