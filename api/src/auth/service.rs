//! The internal plane's authentication: a service token
//! (`X-Service-Token`) allowed on the route's area
//! (`INTERNAL_SERVICE_SCOPES`), acting for `X-Tenant-Id` or the platform.

use axum::http::request::Parts;
use cache_shared::keys::TenantId;
use cache_shared::tokens::Area;

use super::{Caller, Principal};
use crate::error::ApiError;
use crate::headers::{SERVICE_TOKEN_HEADER, TENANT_HEADER};
use crate::state::AppState;

/// The internal plane's caller: a service of `X-Service-Token` allowed on
/// the route's area, acting for `X-Tenant-Id` or, without it, the
/// platform.
pub(super) fn caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
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
        Some(raw) => (named_tenant(raw)?, true),
    };
    Ok(Caller {
        tenant,
        principal: Principal::Service {
            identity,
            named_tenant,
        },
    })
}

/// The tenant `X-Tenant-Id` names.
fn named_tenant(raw: &axum::http::HeaderValue) -> Result<TenantId, ApiError> {
    let raw = raw
        .to_str()
        .map_err(|_| ApiError::bad_request("X-Tenant-Id", "X-Tenant-Id must be ASCII"))?;
    TenantId::parse(raw, "X-Tenant-Id").map_err(ApiError::from)
}
