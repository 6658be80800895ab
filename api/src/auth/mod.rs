//! Authentication and authorisation, in one place: who is calling, on
//! either plane, ends in one [`Caller`] whose tenant a handler cannot
//! change.
//!
//! - `service`: the internal plane's service tokens (`X-Service-Token`,
//!   `X-Tenant-Id`), checked when a handler extracts its [`Caller`];
//! - `public`: [`authorize`], the middleware of every `/api/v1` route: the
//!   bearer credential (an API key through [`crate::key_cache`], or a
//!   platform token through [`crate::platform_auth`]), the role the route
//!   declares ([`policy`]) and an operator's `?tenant=`;
//! - [`metrics_access`]: the scrape token of `GET /metrics`.

mod public;
mod service;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, header};
use cache_shared::api_keys::Role;
use cache_shared::keys::TenantId;
use cache_shared::tokens::ServiceIdentity;

use crate::error::ApiError;
use crate::state::AppState;

pub use public::{PublicPlane, authorize};

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
/// The label prefix of a platform user (`user:<id>`); API key ids never have it.
pub const PLATFORM_USER_PREFIX: &str = "user:";

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
    /// Whether the caller came with a platform token (not an API key of
    /// ours): what it may do is known only while its token is presented.
    pub fn is_platform_user(&self) -> bool {
        matches!(&self.principal, Principal::Member { label, .. } if label.starts_with(PLATFORM_USER_PREFIX))
    }

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
            return service::caller(parts, state);
        }
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            // Only reachable if a public route misses the authorize layer: a bug.
            .ok_or_else(|| cache_shared::Error::internal("route without authorization").into())
    }
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

/// The token of an `Authorization: Bearer …` header (scheme in any case).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    cache_shared::tokens::bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
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
