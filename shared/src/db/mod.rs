//! The PostgreSQL pool and the schema migrations, and one module of query
//! functions per table. Queries are runtime-checked (`query_as` + `FromRow`)
//! so that a fresh clone builds without a database; tests cover the SQL.

pub mod admin_actions;
pub mod api_keys;
pub mod backups;
pub mod hotkeys;
pub mod jobs;
pub mod namespaces;
pub mod oplog;
pub mod reports;
pub mod retention;
pub mod schedules;
pub mod statistics;
pub mod tenant_limits;
#[cfg(feature = "test-support")]
pub mod testing;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseSettings;
use crate::error::Error;

/// The migrations of `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pool that connects on first use, so a binary starts (and reports itself
/// degraded) while PostgreSQL is down.
///
/// # Errors
///
/// When the URL cannot be parsed.
pub fn lazy_pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(settings.timeout())
        .connect_lazy(&settings.database_url)
}

/// Creates the database named in `url` when the server lacks it, so a fresh
/// machine needs no manual `createdb`.
///
/// # Errors
///
/// When the server is unreachable or refuses.
pub async fn create_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::migrate::MigrateDatabase;
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
        tracing::info!("created the database of DATABASE_URL");
    }
    Ok(())
}

/// Round trip time of `select 1`.
///
/// # Errors
///
/// [`Error::StoreUnavailable`] when PostgreSQL does not answer in time.
pub async fn ping(
    pool: &PgPool,
    deadline: std::time::Duration,
) -> Result<std::time::Duration, Error> {
    let started = std::time::Instant::now();
    match tokio::time::timeout(deadline, sqlx::query("select 1").execute(pool)).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(Error::StoreUnavailable(Box::new(e))),
        Err(_) => Err(Error::StoreUnavailable(
            format!("postgres did not answer within {} ms", deadline.as_millis()).into(),
        )),
    }
}
