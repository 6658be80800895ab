//! The `admin_actions` table: who changed platform-wide settings, and how.

use serde_json::Value as Json;
use sqlx::PgExecutor;

use crate::error::Error;

/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn record(
    exec: impl PgExecutor<'_>,
    actor: &str,
    tenant: &str,
    action: &str,
    details: &Json,
) -> Result<(), Error> {
    sqlx::query(
        "insert into admin_actions (actor, tenant_id, action, details) values ($1, $2, $3, $4)",
    )
    .bind(actor)
    .bind(tenant)
    .bind(action)
    .bind(details)
    .execute(exec)
    .await?;
    Ok(())
}
