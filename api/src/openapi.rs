//! The OpenAPI document, generated from the route annotations, served at
//! `/openapi.json` with a browsable page at `/docs` (Swagger UI, its assets
//! served from the binary: the page works where the service runs, with no
//! internet).

use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

/// Document-wide parts: title, credentials, tags. The paths come from the routers.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "cache-service",
        description = "Tenant-isolated cache on Redis: an internal plane for platform services \
                       (X-Service-Token), a public plane for tenants (bearer API keys or platform tokens) and \
                       asynchronous jobs. Every non-2xx answer is the ErrorEnvelope.",
    ),
    modifiers(&Credentials),
    components(schemas(crate::error::Envelope)),
    tags(
        (name = "internal", description = "Cache operations for platform services"),
        (name = "sessions", description = "User sessions (platform namespace)"),
        (name = "permissions", description = "Cached permission results (platform namespace)"),
        (name = "cache", description = "A tenant's keys"),
        (name = "management", description = "Server and tenant management"),
        (name = "namespaces", description = "A tenant's key prefixes and their caching strategies"),
        (name = "performance", description = "Compression, eviction, hot keys, recommendations"),
        (name = "monitoring", description = "Live figures and history"),
        (name = "jobs", description = "Asynchronous jobs"),
        (name = "admin", description = "API keys and tenant limits (operators)"),
        (name = "health", description = "Health, readiness and status"),
    )
)]
pub struct ApiDoc;

struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "serviceToken",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Service-Token",
                "One of the INTERNAL_SERVICE_TOKEN tokens",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (cache-api keys create), or a platform token when AUTH_SERVICE_URL is set"))
                    .build(),
            ),
        );
    }
}

/// The paths [`serve`] adds.
pub const PATHS: [&str; 4] = ["/openapi.json", "/docs", "/docs/", "/docs/{*rest}"];

/// `/openapi.json` and the `/docs` page for `doc`.
pub fn serve<S: Clone + Send + Sync + 'static>(doc: utoipa::openapi::OpenApi) -> Router<S> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
}
