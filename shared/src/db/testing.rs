//! Test support: a fresh, migrated database per test process, so tests never
//! depend on the state a development database was left in. Databases of
//! test processes older than an hour are dropped on the way.

use sqlx::Connection;

/// Prefix of the databases made here; the rest of the name is a ULID.
const PREFIX: &str = "cache_test_";

/// Creates and migrates a new database on the server of `base_url`; returns its URL.
///
/// # Errors
///
/// When the server is unreachable or refuses.
pub async fn fresh_database(
    base_url: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let (server, _) = base_url
        .rsplit_once('/')
        .ok_or("DATABASE_URL has no database name")?;
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    let names: Vec<(String,)> = sqlx::query_as(
        "select datname::text from pg_database where datname like 'cache\\_test\\_%'",
    )
    .fetch_all(&mut admin)
    .await?;
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for (name,) in names {
        let stale = name
            .strip_prefix(PREFIX)
            .and_then(|id| ulid::Ulid::from_string(&id.to_uppercase()).ok())
            .is_some_and(|id| id.datetime() < hour_ago);
        if stale {
            // The name came from the server and matches our prefix and a ULID.
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "drop database if exists {name} with (force)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
    let name = format!("{PREFIX}{}", ulid::Ulid::new().to_string().to_lowercase());
    // A generated name, never input.
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let url = format!("{server}/{name}");
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    super::MIGRATOR.run(&mut conn).await?;
    conn.close().await?;
    Ok(url)
}
