//! `cache-api keys create|list|revoke` (API.md §8): key management without
//! the HTTP API, straight against DATABASE_URL.

use std::io::Write;

use anyhow::Context;
use cache_shared::api_keys;
use cache_shared::db::api_keys::{self as key_rows, ApiKeyRecord};
use serde::Serialize;

use crate::cli::{KeysArgs, KeysCommand};

#[derive(Serialize)]
struct Listed<'a> {
    id: &'a str,
    tenant: &'a str,
    role: &'a str,
    name: Option<&'a str>,
    revoked: bool,
    #[serde(rename = "expiresAt")]
    expires_at: Option<String>,
}

impl<'a> From<&'a ApiKeyRecord> for Listed<'a> {
    fn from(r: &'a ApiKeyRecord) -> Self {
        Self {
            id: &r.id,
            tenant: &r.tenant_id,
            role: &r.role,
            name: r.name.as_deref(),
            revoked: r.revoked_at.is_some(),
            expires_at: r.expires_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// Who the audit trail names for keys managed from the command line.
const CLI_ACTOR: &str = "cli";

/// Runs one `keys` command, writing its answer to standard output.
///
/// # Errors
///
/// PostgreSQL unreachable, or an unknown key id to revoke.
pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let pool = cache_shared::db::lazy_pool(&args.database).context("parsing DATABASE_URL")?;
    let mut out = std::io::stdout().lock();
    match args.command {
        KeysCommand::Create {
            tenant,
            role,
            name,
            expires_in_days,
            json,
        } => {
            let key = api_keys::generate()?;
            let record = key_rows::insert_audited(
                &pool,
                CLI_ACTOR,
                &key,
                &tenant,
                role,
                name.as_deref(),
                expires_in_days,
            )
            .await
            .context("storing the key in DATABASE_URL")?;
            if json {
                let created = serde_json::json!({
                    "id": record.id,
                    "key": key.secret,
                    "tenant": record.tenant_id,
                    "role": record.role,
                    "name": record.name,
                });
                writeln!(out, "{created}")?;
            } else {
                writeln!(out, "id:     {}", record.id)?;
                writeln!(out, "tenant: {}", record.tenant_id)?;
                writeln!(out, "role:   {}", record.role)?;
                writeln!(out, "# the key is shown once; store it now:")?;
                writeln!(out, "{}", key.secret)?;
            }
        }
        KeysCommand::List { tenant, json } => {
            let records = key_rows::list(&pool, tenant.as_deref())
                .await
                .context("reading keys from DATABASE_URL")?;
            if json {
                let listed: Vec<Listed<'_>> = records.iter().map(Listed::from).collect();
                writeln!(out, "{}", serde_json::to_string(&listed)?)?;
            } else {
                for r in &records {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}{}",
                        r.id,
                        r.tenant_id,
                        r.role,
                        r.name.as_deref().unwrap_or("-"),
                        if r.revoked_at.is_some() {
                            "\trevoked"
                        } else {
                            ""
                        }
                    )?;
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let record = key_rows::revoke_audited(&pool, CLI_ACTOR, &id)
                .await
                .context("revoking the key in DATABASE_URL")?
                .with_context(|| format!("no API key with id {id}"))?;
            writeln!(
                out,
                "revoked {} ({} {})",
                record.id, record.tenant_id, record.role
            )?;
        }
    }
    Ok(())
}
