//! `GET /api/v1/cache/events` and `GET /internal/cache/events`: a tenant's
//! invalidation events as Server-Sent Events (API.md §10), served by
//! [`crate::events::EventHub`].

use axum::extract::State;
use axum::http::HeaderMap;
use cache_shared::api_keys::Role;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::auth::policy::Rule;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(internal_events))
}

pub fn public_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(public_events))
}

/// The minimum role of each public route above, declared next to its
/// handler; collected into [`crate::routes::policy::ROUTES`].
pub const ROLES: &[Rule] = &[PUBLIC_EVENTS_ROLE];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only events of keys beginning with this.
    #[param(max_length = 512)]
    prefix: Option<String>,
}

/// The `Last-Event-ID` a reconnecting client sends.
fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

use crate::events::EventStream as Events;

async fn open(
    state: &AppState,
    tenant: &cache_shared::keys::TenantId,
    query: EventsQuery,
    headers: &HeaderMap,
) -> Result<Events, ApiError> {
    let max = cache_shared::keys::MAX_KEY_BYTES;
    if query.prefix.as_ref().is_some_and(|p| p.len() > max) {
        return Err(ApiError::bad_request(
            "prefix",
            "prefix must be at most 512 bytes (a key's longest)",
        ));
    }
    state
        .events
        .stream(
            state.cache.redis(),
            tenant,
            query.prefix,
            last_event_id(headers),
        )
        .await
        .map_err(ApiError::op("events"))
}

/// `GET /api/v1/cache/events` needs at least this role.
const PUBLIC_EVENTS_ROLE: Rule = ("GET", "/api/v1/cache/events", Role::Reader);

#[utoipa::path(
    get,
    path = "/api/v1/cache/events",
    tag = "cache",
    description = "text/event-stream of the tenant's set, delete, expire, expired, evicted and flush events (data: {key, op, at}; never values). Send Last-Event-ID to resume; event reset when events were missed.",
    params(EventsQuery, ("tenant" = Option<String>, Query, description = "Operator only: act for this tenant", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-][A-Za-z0-9_-]*$")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("bearer" = []))
)]
async fn public_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Events, ApiError> {
    open(&state, &caller.tenant, query, &headers).await
}

#[utoipa::path(
    get,
    path = "/internal/cache/events",
    tag = "internal",
    description = "As GET /api/v1/cache/events, for the X-Tenant-Id tenant.",
    params(EventsQuery, ("X-Tenant-Id" = Option<String>, Header, description = "Tenant acted for; absent: the platform")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), (status = "default", description = "Error envelope (API.md §3)", body = crate::error::Envelope)),
    security(("serviceToken" = []))
)]
async fn internal_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Events, ApiError> {
    open(&state, &caller.tenant, query, &headers).await
}
