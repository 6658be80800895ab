//! Authentication and authorisation, in one place: the internal plane's
//! service tokens ([`InternalCaller`], [`CacheCaller`]), the public plane's
//! API keys and roles, and the metrics scrape token ([`metrics_access`]).
//!
//! [`authorize`] runs after routing on every `/api/v1` route: it resolves the
//! bearer credential — an API key, or a platform token checked by the
//! platform's auth and RBAC services (`platform_auth`) — to its tenant and role (through a short-lived in-process cache,
//! so the hot path does not query PostgreSQL per request and a revocation is
//! seen within `API_KEY_CACHE_SECONDS`), checks the role the route requires
//! in [`policy`], applies an operator's `?tenant=`, and hands the handler a
//! [`Caller`].

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use cache_shared::api_keys::{self, Role};
use cache_shared::keys::TenantId;
use cache_shared::tokens::{Area, ServiceIdentity};

use crate::error::ApiError;
use crate::headers::{SERVICE_TOKEN_HEADER, TENANT_HEADER};
use crate::key_cache::{FAILED_AUTH_BUDGET, FAILED_AUTH_WINDOW, Refusal};
use crate::platform_auth::{PlatformAuth, PlatformError};
use crate::state::AppState;

/// The address a request's connection came from (set per connection by
/// [`crate::serve`]); failed authentications are counted against it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

/// Who is calling the public plane, after authorisation.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub role: Role,
    /// The tenant the key was created for.
    pub key_tenant: TenantId,
    /// The tenant this request acts on (an operator's `?tenant=`, else the key's).
    pub tenant: TenantId,
}

impl Caller {
    /// This caller as the job policy sees it.
    pub fn requester(&self) -> cache_jobs::policy::Requester {
        cache_jobs::policy::Requester {
            plane: cache_jobs::policy::Plane::Public,
            tenant: self.tenant.clone(),
            role: self.role,
            label: self.key_id.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            // Only reachable if a public route misses the authorize layer: a bug.
            .ok_or_else(|| cache_shared::Error::internal("route without authorization").into())
    }
}

/// The middleware of every public route (see the module docs).
///
/// # Errors
///
/// `401` without a usable credential, `403` for a low role or a
/// non-operator's `?tenant=`, `400` for a malformed `?tenant=`, `503
/// AUTH_UNAVAILABLE` when a platform token cannot be checked.
pub async fn authorize(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let required = policy::required_role(req.method(), &route);
    let other_tenant = requested_tenant(req.uri())?;

    let secret = bearer(req.headers()).ok_or(ApiError::Unauthorized {
        message: "missing bearer credential",
        bearer: true,
    })?;
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let principal = match &state.platform_auth {
        Some(platform) if !secret.starts_with(api_keys::KEY_PREFIX) => {
            let needed = if other_tenant.is_some() {
                Role::Operator
            } else {
                required
            };
            platform_principal(&state, platform, secret, client, needed).await?
        }
        _ => key_principal(&state, secret, client).await?,
    };
    cache_shared::oplog::set_actor(&principal.label);
    let role = principal.role;
    if !role.allows(required) {
        return Err(ApiError::Forbidden(format!(
            "this route needs the {required} role; the caller has {role}"
        )));
    }
    let tenant = match other_tenant {
        None => principal.tenant.clone(),
        Some(_) if role != Role::Operator => {
            return Err(ApiError::Forbidden(
                "only an operator may act for another tenant (?tenant=)".into(),
            ));
        }
        Some(tenant) => tenant,
    };
    if policy::is_metered(&route) {
        state.rate.check(&state.limits, &tenant)?;
    }
    req.extensions_mut().insert(Caller {
        key_id: principal.label,
        role,
        key_tenant: principal.tenant,
        tenant,
    });
    Ok(next.run(req).await)
}

/// Who a credential stands for, before the route's checks.
struct Principal {
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
    client: Option<std::net::IpAddr>,
) -> Result<Principal, ApiError> {
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
    Ok(Principal {
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
    client: Option<std::net::IpAddr>,
    needed: Role,
) -> Result<Principal, ApiError> {
    if !platform.knows(secret)
        && let Some(wait) = state.key_cache.budget_wait(client)
    {
        return Err(over_budget(wait));
    }
    let user = match platform.verify(secret).await {
        Ok(user) => user,
        Err(PlatformError::Invalid) => {
            state.key_cache.count_failure(client);
            return Err(ApiError::Unauthorized {
                message: "unknown, revoked or expired platform token",
                bearer: true,
            });
        }
        Err(PlatformError::Unavailable(why)) => return Err(ApiError::AuthUnavailable(why)),
    };
    let role = match platform.role_for(&user, needed).await {
        Ok(Some(role)) => role,
        Ok(None) if platform.uses_rbac() => {
            return Err(ApiError::Forbidden(format!(
                "the platform's RBAC service does not allow the {needed} role here"
            )));
        }
        Ok(None) => {
            return Err(ApiError::Forbidden(
                "the platform token has none of the roles reader, writer, admin, operator".into(),
            ));
        }
        Err(PlatformError::Unavailable(why)) => return Err(ApiError::AuthUnavailable(why)),
        Err(PlatformError::Invalid) => {
            return Err(ApiError::Unauthorized {
                message: "unknown, revoked or expired platform token",
                bearer: true,
            });
        }
    };
    Ok(Principal {
        label: format!("user:{}", user.user_id),
        role,
        tenant: user.tenant.clone(),
    })
}

/// The token of an `Authorization: Bearer …` header (scheme in any case).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    cache_shared::tokens::bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
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

/// The minimum role of every public route. The role-matrix test walks this table.
pub mod policy {
    use super::{Method, Role};

    /// `(method, route as registered, minimum role)`.
    pub const ROUTES: &[(&str, &str, Role)] = &[
        ("GET", "/api/v1/cache/keys/{key}", Role::Reader),
        ("PUT", "/api/v1/cache/keys/{key}", Role::Writer),
        ("DELETE", "/api/v1/cache/keys/{key}", Role::Writer),
        ("POST", "/api/v1/cache/keys/{key}/expire", Role::Writer),
        ("GET", "/api/v1/cache/keys/{key}/ttl", Role::Reader),
        ("POST", "/api/v1/cache/keys/{key}/touch", Role::Writer),
        ("POST", "/api/v1/cache/keys/exists", Role::Reader),
        ("POST", "/api/v1/cache/flush", Role::Admin),
        ("POST", "/api/v1/cache/preload", Role::Admin),
        ("GET", "/api/v1/cache/status", Role::Reader),
        ("GET", "/api/v1/cache/stats", Role::Reader),
        ("GET", "/api/v1/cache/metrics", Role::Reader),
        ("GET", "/api/v1/cache/latency", Role::Reader),
        ("GET", "/api/v1/cache/throughput", Role::Reader),
        ("GET", "/api/v1/cache/hotkeys", Role::Reader),
        ("GET", "/api/v1/cache/info", Role::Reader),
        ("GET", "/api/v1/cache/memory", Role::Reader),
        ("GET", "/api/v1/cache/connections", Role::Reader),
        ("PUT", "/api/v1/cache/connections/config", Role::Operator),
        ("GET", "/api/v1/cache/memory/analyze", Role::Reader),
        ("POST", "/api/v1/cache/memory/analyze", Role::Admin),
        ("POST", "/api/v1/cache/compress/{pattern}", Role::Admin),
        ("POST", "/api/v1/cache/keys/{key}/compress", Role::Writer),
        ("POST", "/api/v1/cache/eviction/policy", Role::Operator),
        ("GET", "/api/v1/cache/performance", Role::Reader),
        ("GET", "/api/v1/cache/namespaces", Role::Reader),
        ("POST", "/api/v1/cache/namespaces", Role::Admin),
        ("GET", "/api/v1/cache/namespaces/{prefix}", Role::Reader),
        ("PUT", "/api/v1/cache/namespaces/{prefix}", Role::Admin),
        ("DELETE", "/api/v1/cache/namespaces/{prefix}", Role::Admin),
        ("GET", "/api/v1/cache/events", Role::Reader),
        (
            "GET",
            "/api/v1/cache/namespaces/{prefix}/stats",
            Role::Reader,
        ),
        ("POST", "/api/v1/jobs", Role::Admin),
        ("GET", "/api/v1/jobs", Role::Reader),
        ("GET", "/api/v1/jobs/{id}", Role::Reader),
        ("DELETE", "/api/v1/jobs/{id}", Role::Admin),
        ("POST", "/api/v1/schedules", Role::Admin),
        ("GET", "/api/v1/schedules", Role::Admin),
        ("GET", "/api/v1/schedules/{id}", Role::Admin),
        ("PUT", "/api/v1/schedules/{id}", Role::Admin),
        ("DELETE", "/api/v1/schedules/{id}", Role::Admin),
        ("GET", "/api/v1/admin/keys", Role::Operator),
        ("POST", "/api/v1/admin/keys", Role::Operator),
        ("DELETE", "/api/v1/admin/keys/{id}", Role::Operator),
        (
            "GET",
            "/api/v1/admin/tenants/{tenant}/limits",
            Role::Operator,
        ),
        (
            "PUT",
            "/api/v1/admin/tenants/{tenant}/limits",
            Role::Operator,
        ),
    ];

    /// Routes whose calls count against the tenant's rate (API.md §9: key
    /// operations and batches, not jobs or management).
    const METERED: &[&str] = &[
        "/api/v1/cache/keys/{key}",
        "/api/v1/cache/keys/{key}/expire",
        "/api/v1/cache/keys/{key}/ttl",
        "/api/v1/cache/keys/{key}/touch",
        "/api/v1/cache/keys/exists",
    ];

    pub fn is_metered(route: &str) -> bool {
        METERED.contains(&route)
    }

    /// The role `method` on `route` needs; an unlisted route needs an
    /// operator, so a forgotten entry fails closed.
    pub fn required_role(method: &Method, route: &str) -> Role {
        ROUTES
            .iter()
            .find(|(m, r, _)| *m == method.as_str() && *r == route)
            .map_or(Role::Operator, |(_, _, role)| *role)
    }
}

/// A caller of the internal plane, authenticated by `X-Service-Token`, acting
/// for the `X-Tenant-Id` tenant or, without that header, for the platform.
#[derive(Debug, Clone)]
pub struct InternalCaller {
    pub tenant: TenantId,
    /// Whether `X-Tenant-Id` was given (the platform sees every tenant's jobs).
    pub named_tenant: bool,
    /// Which service: named in logs, metrics, operation-log records and jobs.
    pub service: ServiceIdentity,
}

impl InternalCaller {
    /// This caller as the job policy sees it.
    pub fn requester(&self) -> cache_jobs::policy::Requester {
        let mut requester = cache_jobs::policy::Requester::internal(self.tenant.clone());
        if let ServiceIdentity::Named(_) = &self.service {
            requester.label = format!("service:{}", self.service.name());
        }
        requester
    }
}

impl FromRequestParts<AppState> for InternalCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(SERVICE_TOKEN_HEADER)
            .ok_or(ApiError::Unauthorized {
                message: "missing X-Service-Token",
                bearer: false,
            })?;
        let service = state
            .services
            .identify(token.as_bytes())
            .ok_or(ApiError::Unauthorized {
                message: "unknown service token",
                bearer: false,
            })?;
        state.services.count(&service);
        let area = Area::of_path(parts.uri.path());
        if !state.services.allows(&service, area) {
            return Err(ApiError::Forbidden(format!(
                "service '{}' may not call the {} routes (INTERNAL_SERVICE_SCOPES)",
                service.name(),
                area.as_str()
            )));
        }
        cache_shared::oplog::set_actor(service.name());
        tracing::Span::current().record("service", service.name());
        match parts.headers.get(TENANT_HEADER) {
            None => Ok(Self {
                tenant: TenantId::platform(),
                named_tenant: false,
                service,
            }),
            Some(raw) => {
                let raw = raw.to_str().map_err(|_| {
                    ApiError::bad_request("X-Tenant-Id", "X-Tenant-Id must be ASCII")
                })?;
                Ok(Self {
                    tenant: TenantId::parse(raw, "X-Tenant-Id")?,
                    named_tenant: true,
                    service,
                })
            }
        }
    }
}

/// An internal caller of a cache operation (get, set, delete, batches,
/// exists, expire): the call counts against its tenant's rate.
#[derive(Debug, Clone)]
pub struct CacheCaller(pub InternalCaller);

impl std::ops::Deref for CacheCaller {
    type Target = InternalCaller;

    fn deref(&self) -> &InternalCaller {
        &self.0
    }
}

impl FromRequestParts<AppState> for CacheCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Authenticated first: an unknown caller cannot spend a tenant's rate.
        let caller = InternalCaller::from_request_parts(parts, state).await?;
        state.rate.check(&state.limits, &caller.tenant)?;
        Ok(Self(caller))
    }
}

/// `GET /metrics` with `METRICS_TOKEN` set: only for `Authorization:
/// Bearer <that token>`.
///
/// # Errors
///
/// [`ApiError::Unauthorized`] for a missing or wrong token.
pub fn metrics_access(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if state.metrics_tokens.is_empty() {
        return Ok(());
    }
    let given = bearer(headers).unwrap_or("");
    if state.metrics_tokens.accepts(given.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized {
            message: "missing or wrong metrics token",
            bearer: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_routes_fail_closed() {
        assert_eq!(
            policy::required_role(&Method::GET, "/api/v1/unknown"),
            Role::Operator
        );
        assert_eq!(
            policy::required_role(&Method::GET, "/api/v1/cache/keys/{key}"),
            Role::Reader
        );
    }
}
