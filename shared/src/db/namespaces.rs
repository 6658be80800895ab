//! The `cache_configs` table (a tenant's namespaces) and `namespace_tenants`
//! (the tenants whose rows are all they have; see [`crate::namespaces`]).

use std::collections::HashMap;

use sqlx::{FromRow, PgExecutor};

use crate::error::Error;
use crate::namespaces::{
    Access, MAX_NAMESPACES, Namespace, NamespaceBook, NamespaceSet, OverLimit,
};

#[derive(Debug, Clone, FromRow)]
struct Row {
    tenant_id: String,
    namespace: String,
    default_ttl_seconds: i32,
    ttl_jitter: f64,
    compression: bool,
    compression_min_bytes: i64,
    max_keys: i64,
    over_limit: String,
    access: String,
    near_cache: bool,
    encrypted: bool,
}

impl Row {
    fn namespace(self) -> Result<(String, Namespace), Error> {
        let bad = |what: &str| {
            Error::internal(format!(
                "namespace '{}' of {} has a bad {what}",
                self.namespace, self.tenant_id
            ))
        };
        let namespace = Namespace {
            ttl: u32::try_from(self.default_ttl_seconds).map_err(|_| bad("ttl"))?,
            ttl_jitter: self.ttl_jitter,
            compression: self.compression,
            compression_min_bytes: u64::try_from(self.compression_min_bytes)
                .map_err(|_| bad("compression threshold"))?,
            max_keys: u64::try_from(self.max_keys).map_err(|_| bad("key limit"))?,
            over_limit: OverLimit::parse(&self.over_limit).ok_or_else(|| bad("overLimit"))?,
            access: Access::parse(&self.access).ok_or_else(|| bad("access"))?,
            near_cache: self.near_cache,
            encrypted: self.encrypted,
            prefix: self.namespace,
        };
        Ok((self.tenant_id, namespace))
    }
}

const COLUMNS: &str = "tenant_id, namespace, default_ttl_seconds, ttl_jitter, compression, \
    compression_min_bytes, max_keys, over_limit, access, near_cache, encrypted";

/// Every tenant that changed its namespaces, with its rows (at most
/// [`MAX_NAMESPACES`] per tenant).
///
/// # Errors
///
/// [`Error::StoreUnavailable`], [`Error::Internal`] for a row the table's
/// checks should have refused.
pub async fn all(db: &sqlx::PgPool) -> Result<HashMap<String, NamespaceSet>, Error> {
    let mut tx = db.begin().await?;
    let tenants: Vec<(String,)> = sqlx::query_as("select tenant_id from namespace_tenants")
        .fetch_all(&mut *tx)
        .await?;
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from cache_configs"
    )))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut grouped: HashMap<String, Vec<Namespace>> = tenants
        .into_iter()
        .map(|(tenant,)| (tenant, Vec::new()))
        .collect();
    for row in rows {
        let (tenant, namespace) = row.namespace()?;
        // Rows of a tenant not (yet) listed are ignored, as its reads would.
        if let Some(namespaces) = grouped.get_mut(&tenant) {
            namespaces.push(namespace);
        }
    }
    Ok(grouped
        .into_iter()
        .map(|(tenant, namespaces)| (tenant, NamespaceSet::new(namespaces)))
        .collect())
}

/// `tenant`'s namespaces as stored: its rows, or `defaults` when it
/// changed none.
///
/// # Errors
///
/// [`Error::StoreUnavailable`].
pub async fn of_tenant(
    pool: &sqlx::PgPool,
    tenant: &str,
    defaults: &NamespaceSet,
) -> Result<NamespaceSet, Error> {
    let mut conn = pool.acquire().await?;
    Ok(match rows_of(&mut conn, tenant).await? {
        Some(namespaces) => NamespaceSet::new(namespaces),
        None => defaults.clone(),
    })
}

/// `tenant`'s rows (`None`: it changed none, the defaults apply).
async fn rows_of(
    exec: &mut sqlx::PgConnection,
    tenant: &str,
) -> Result<Option<Vec<Namespace>>, Error> {
    let listed: Option<(String,)> =
        sqlx::query_as("select tenant_id from namespace_tenants where tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&mut *exec)
            .await?;
    if listed.is_none() {
        return Ok(None);
    }
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from cache_configs where tenant_id = $1"
    )))
    .bind(tenant)
    .fetch_all(&mut *exec)
    .await?;
    rows.into_iter()
        .map(|row| row.namespace().map(|(_, ns)| ns))
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Applies `change` to `tenant`'s namespaces (the defaults when it changed
/// none before) and stores the result, recorded as an admin action in the
/// same transaction; one change of a tenant at a time. Returns what
/// `change` returned and the tenant's namespaces now.
///
/// # Errors
///
/// What `change` returns (nothing stored), [`Error::Validation`] beyond
/// [`MAX_NAMESPACES`], [`Error::StoreUnavailable`].
pub async fn change<T: serde::Serialize>(
    pool: &sqlx::PgPool,
    tenant: &str,
    actor: &str,
    defaults: &NamespaceSet,
    change: impl FnOnce(&mut Vec<Namespace>) -> Result<T, Error>,
) -> Result<(T, NamespaceSet), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('namespaces:' || $1, 0))")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let mut namespaces = match rows_of(&mut tx, tenant).await? {
        Some(namespaces) => namespaces,
        None => defaults.listed(),
    };
    let outcome = change(&mut namespaces)?;
    if namespaces.len() > MAX_NAMESPACES {
        return Err(Error::validation(
            "prefix",
            format!("a tenant may have at most {MAX_NAMESPACES} namespaces"),
        ));
    }
    sqlx::query(
        "insert into namespace_tenants (tenant_id) values ($1) \
         on conflict (tenant_id) do update set changed_at = now()",
    )
    .bind(tenant)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from cache_configs where tenant_id = $1")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    for ns in &namespaces {
        insert(&mut *tx, tenant, ns).await?;
    }
    crate::db::admin_actions::record(
        &mut *tx,
        actor,
        tenant,
        "namespaces",
        &serde_json::json!({ "change": outcome }),
    )
    .await?;
    tx.commit().await?;
    Ok((outcome, NamespaceSet::new(namespaces)))
}

async fn insert(exec: impl PgExecutor<'_>, tenant: &str, ns: &Namespace) -> Result<(), Error> {
    sqlx::query(
        "insert into cache_configs (tenant_id, namespace, default_ttl_seconds, ttl_jitter, \
             compression, compression_min_bytes, max_keys, over_limit, access, near_cache, \
             encrypted) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(tenant)
    .bind(&ns.prefix)
    .bind(i32::try_from(ns.ttl).unwrap_or(i32::MAX))
    .bind(ns.ttl_jitter)
    .bind(ns.compression)
    .bind(crate::saturating_i64(ns.compression_min_bytes))
    .bind(crate::saturating_i64(ns.max_keys))
    .bind(ns.over_limit.as_str())
    .bind(ns.access.as_str())
    .bind(ns.near_cache)
    .bind(ns.encrypted)
    .execute(exec)
    .await?;
    Ok(())
}

/// Replaces `book`'s tenants with PostgreSQL's.
///
/// # Errors
///
/// [`Error::StoreUnavailable`]; the book keeps what it had.
pub async fn reload(db: &sqlx::PgPool, book: &NamespaceBook) -> Result<(), Error> {
    let ticket = book.reload_ticket();
    book.replace(ticket, all(db).await?);
    Ok(())
}
