//! Authentication and authorisation, in one place: the internal plane's
//! service tokens ([`InternalCaller`], [`CacheCaller`]), the public plane's
//! API keys and roles, and the metrics scrape token ([`metrics_access`]).
//!
//! [`authorize`] runs after routing on every `/api/v1` route: it resolves the
//! bearer credential — an API key, or a platform token checked by the
//! platform's auth and RBAC services (`platform_auth`) — to its tenant and role (through a short-lived in-process cache,
//! so the hot path does not query PostgreSQL per request and a revocation is
//! seen within `API_KEY_CACHE_SECONDS`), checks the role the route requires
//! as the route declares it ([`policy`]), applies an operator's `?tenant=`, and hands the handler a
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

/// Who is calling, on either plane: the one type every handler gets.
/// Its tenant is fixed by the plane's authentication, so a handler cannot
/// act for another tenant than the one authorised.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant this request acts on: on the public plane an operator's
    /// `?tenant=`, else the credential's; on the internal plane
    /// `X-Tenant-Id`, else the platform.
    pub tenant: TenantId,
    /// The credential behind the request.
    pub principal: Principal,
}

/// The credential behind a request, which also says its plane.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The public plane: an API key, or a platform user, with its role.
    Member {
        /// The API key's id, or `user:<id>` for a platform token.
        label: String,
        role: Role,
        /// The tenant the credential belongs to.
        home: TenantId,
    },
    /// The internal plane: a service of `X-Service-Token`.
    Service {
        identity: ServiceIdentity,
        /// Whether `X-Tenant-Id` was given (the platform sees every tenant's jobs).
        named_tenant: bool,
    },
}

/// Which plane a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// `/api/v1`: bearer credentials and roles.
    Public,
    /// `/internal`: service tokens, trusted with every tenant.
    Internal,
}

impl Caller {
    /// The plane the request came in on.
    pub fn plane(&self) -> Plane {
        match self.principal {
            Principal::Member { .. } => Plane::Public,
            Principal::Service { .. } => Plane::Internal,
        }
    }

    /// The credential's role; a service of the internal plane is trusted
    /// like an operator (API.md §4).
    pub fn role(&self) -> Role {
        match &self.principal {
            Principal::Member { role, .. } => *role,
            Principal::Service { .. } => Role::Operator,
        }
    }

    /// What records name as the actor: a key id, `user:<id>` or `service:<name>`.
    pub fn label(&self) -> String {
        match &self.principal {
            Principal::Member { label, .. } => label.clone(),
            Principal::Service { identity, .. } => format!("service:{}", identity.name()),
        }
    }

    /// The tenant whose jobs the caller may see: its own, or every tenant
    /// for a service without `X-Tenant-Id`.
    pub fn job_scope(&self) -> Option<&str> {
        match &self.principal {
            Principal::Service {
                named_tenant: false,
                ..
            } => None,
            _ => Some(self.tenant.as_str()),
        }
    }

    /// Where the caller reads a job's status on its own plane; an operator
    /// acting for another tenant gets the `?tenant=` that reaches it.
    pub fn job_url(&self, id: &str) -> String {
        match &self.principal {
            Principal::Service { .. } => format!("/internal/cache/jobs/{id}"),
            Principal::Member { home, .. } if *home == self.tenant => format!("/api/v1/jobs/{id}"),
            Principal::Member { .. } => format!("/api/v1/jobs/{id}?tenant={}", self.tenant),
        }
    }

    /// This caller as the job policy sees it.
    pub fn requester(&self) -> cache_jobs::policy::Requester {
        match &self.principal {
            Principal::Member { label, role, .. } => cache_jobs::policy::Requester {
                plane: cache_jobs::policy::Plane::Public,
                tenant: self.tenant.clone(),
                role: *role,
                label: label.clone(),
            },
            Principal::Service { identity, .. } => {
                let mut requester = cache_jobs::policy::Requester::internal(self.tenant.clone());
                if let ServiceIdentity::Named(_) = identity {
                    requester.label = format!("service:{}", identity.name());
                }
                requester
            }
        }
    }
}

/// The one extractor of both planes: a service token under `/internal`,
/// else what [`authorize`] left for the route.
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if parts.uri.path().starts_with("/internal/") {
            return service_caller(parts, state);
        }
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
    State(PublicPlane { state, roles }): State<PublicPlane>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let required = policy::required_role(roles, req.method(), &route);
    let other_tenant = requested_tenant(req.uri())?;

    let secret = bearer(req.headers()).ok_or(ApiError::Unauthorized {
        message: "missing bearer credential",
        bearer: true,
    })?;
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let principal: Credential = match &state.platform_auth {
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
    req.extensions_mut().insert(Caller {
        tenant,
        principal: Principal::Member {
            label: principal.label,
            role,
            home: principal.tenant,
        },
    });
    Ok(next.run(req).await)
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
    client: Option<std::net::IpAddr>,
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
    client: Option<std::net::IpAddr>,
    needed: Role,
) -> Result<Credential, ApiError> {
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
    Ok(Credential {
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

/// How a public route's minimum role is declared and looked up. The
/// declarations sit next to each handler (`routes/*.rs`, a `Rule` const);
/// `routes::policy::ROUTES` collects them for [`authorize`] and the
/// role-matrix test.
pub mod policy {
    use super::{Method, Role};

    /// `(method, route as registered, minimum role)`.
    pub type Rule = (&'static str, &'static str, Role);

    /// The role `method` on `route` needs in `table`; an unlisted route
    /// needs an operator, so a forgotten declaration fails closed.
    pub fn required_role(table: &[Rule], method: &Method, route: &str) -> Role {
        table
            .iter()
            .find(|(m, r, _)| *m == method.as_str() && *r == route)
            .map_or(Role::Operator, |(_, _, role)| *role)
    }
}

/// What the public plane's middleware needs: the app and the declared roles.
#[derive(Clone, Debug)]
pub struct PublicPlane {
    pub state: AppState,
    /// Every public route's minimum role (`routes::policy::ROUTES`).
    pub roles: &'static [policy::Rule],
}

/// The internal plane's caller: a service of `X-Service-Token` allowed on
/// the route's area, acting for `X-Tenant-Id` or, without it, the
/// platform. A key operation (`policy::is_metered`) counts against the
/// tenant's rate once the service is known, so an unknown caller cannot
/// spend it.
fn service_caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let token = parts
        .headers
        .get(SERVICE_TOKEN_HEADER)
        .ok_or(ApiError::Unauthorized {
            message: "missing X-Service-Token",
            bearer: false,
        })?;
    let identity = state
        .services
        .identify(token.as_bytes())
        .ok_or(ApiError::Unauthorized {
            message: "unknown service token",
            bearer: false,
        })?;
    state.services.count(&identity);
    let area = Area::of_path(parts.uri.path());
    if !state.services.allows(&identity, area) {
        return Err(ApiError::Forbidden(format!(
            "service '{}' may not call the {} routes (INTERNAL_SERVICE_SCOPES)",
            identity.name(),
            area.as_str()
        )));
    }
    cache_shared::oplog::set_actor(identity.name());
    tracing::Span::current().record("service", identity.name());
    let (tenant, named_tenant) = match parts.headers.get(TENANT_HEADER) {
        None => (TenantId::platform(), false),
        Some(raw) => {
            let raw = raw
                .to_str()
                .map_err(|_| ApiError::bad_request("X-Tenant-Id", "X-Tenant-Id must be ASCII"))?;
            (TenantId::parse(raw, "X-Tenant-Id")?, true)
        }
    };
    Ok(Caller {
        tenant,
        principal: Principal::Service {
            identity,
            named_tenant,
        },
    })
}

/// A caller of a key operation or batch, on either plane: the call counts
/// against its tenant's rate (API.md §9), once the caller is known, so an
/// unknown caller cannot spend a tenant's rate. Routes that take it are
/// the metered ones; jobs and management are not.
#[derive(Debug, Clone)]
pub struct Metered(pub Caller);

impl FromRequestParts<AppState> for Metered {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
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
