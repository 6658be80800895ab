//! Authentication and authorisation of the public plane, in one place.
//!
//! [`authorize`] runs after routing on every `/api/v1` route: it resolves the
//! bearer key to its tenant and role (through a short-lived in-process cache,
//! so the hot path does not query PostgreSQL per request and a revocation is
//! seen within `API_KEY_CACHE_SECONDS`), checks the role the route requires
//! in [`policy`], applies an operator's `?tenant=`, and hands the handler a
//! [`Caller`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use cache_shared::api_keys::{self, Role};
use cache_shared::db::api_keys::{self as key_rows, ApiKeyRecord};
use cache_shared::keys::TenantId;
use sqlx::PgPool;

use crate::error::ApiError;
use crate::state::AppState;

/// Keys remembered at most; the cache starts over beyond this.
const MAX_CACHED_KEYS: usize = 10_000;
/// `last_used_at` is written at most this often per key.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

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

struct Cached {
    record: Option<ApiKeyRecord>,
    fetched: Instant,
    marked_used: Option<Instant>,
}

/// Resolved keys by digest, each for a few seconds.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Cached>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The usable key presented as `secret`, or `None`.
    async fn resolve(&self, db: &PgPool, secret: &str) -> Result<Option<ApiKeyRecord>, ApiError> {
        let hash = api_keys::digest(secret);
        let now = Instant::now();
        let cached = self.lookup(&hash, now);
        let record = match cached {
            Some(record) => record,
            None => {
                let record = key_rows::find_by_hash(db, &hash).await?;
                self.store(hash, record.clone(), now);
                record
            }
        };
        let usable = record.filter(|r| r.is_usable(chrono::Utc::now()));
        if let Some(r) = &usable {
            self.mark_used(db, &hash, &r.id, now);
        }
        Ok(usable)
    }

    fn lookup(&self, hash: &[u8; 32], now: Instant) -> Option<Option<ApiKeyRecord>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|c| now.duration_since(c.fetched) < self.ttl)
            .map(|c| c.record.clone())
    }

    fn store(&self, hash: [u8; 32], record: Option<ApiKeyRecord>, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_CACHED_KEYS {
            entries.clear();
        }
        let marked_used = entries.get(&hash).and_then(|c| c.marked_used);
        entries.insert(
            hash,
            Cached {
                record,
                fetched: now,
                marked_used,
            },
        );
    }

    /// Writes `last_used_at` in the background, at most once a minute per key.
    fn mark_used(&self, db: &PgPool, hash: &[u8; 32], id: &str, now: Instant) {
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = entries.get_mut(hash) else {
                return;
            };
            if entry
                .marked_used
                .is_some_and(|t| now.duration_since(t) < LAST_USED_EVERY)
            {
                return;
            }
            entry.marked_used = Some(now);
        }
        let db = db.clone();
        let ids = vec![id.to_owned()];
        tokio::spawn(async move {
            if let Err(err) = key_rows::mark_used(&db, &ids).await {
                tracing::debug!(%err, "could not record key use");
            }
        });
    }
}

/// The middleware of every public route (see the module docs).
///
/// # Errors
///
/// `401` without a usable key, `403` for a low role or a non-operator's
/// `?tenant=`, `400` for a malformed `?tenant=`.
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

    let secret = bearer(req.headers()).ok_or(ApiError::Unauthorized {
        message: "missing bearer API key",
        bearer: true,
    })?;
    let record =
        state
            .key_cache
            .resolve(&state.db, secret)
            .await?
            .ok_or(ApiError::Unauthorized {
                message: "unknown, revoked or expired API key",
                bearer: true,
            })?;
    cache_shared::oplog::set_actor(&record.id);
    let role = record.role();
    if !role.allows(required) {
        return Err(ApiError::Forbidden(format!(
            "this route needs the {required} role; the key has {role}"
        )));
    }
    let key_tenant = TenantId::parse(&record.tenant_id, "tenant")?;
    let tenant = match requested_tenant(req.uri())? {
        None => key_tenant.clone(),
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
        key_id: record.id,
        role,
        key_tenant,
        tenant,
    });
    Ok(next.run(req).await)
}

/// The token of an `Authorization: Bearer …` header (scheme in any case).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

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
