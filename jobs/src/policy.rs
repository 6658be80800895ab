//! The one door to the queues. A job becomes runnable only as an
//! [`Authorized`] job, which only `authorize` makes (called as
//! `JobQueue::authorize`), from who asks ([`Requester`]) and what
//! ([`JobSpec`]); `JobQueue::submit` takes
//! nothing else, so a path that skips these rules does not compile. Every
//! path goes through it: the per-type endpoints, `POST /api/v1/jobs`, the
//! internal plane, and schedules at creation and again at every firing.
//!
//! The rules (API.md §6, "Tenant scope of job params"):
//! - on the public plane a job needs the admin role and acts on the
//!   requester's tenant only (an operator's `?tenant=` included);
//! - a whole-server flush and a file on the worker are for operators;
//! - a backup is visible to its own tenant (and operators), else absent;
//! - a public `session_cleanup` revokes sessions of the requester's tenant
//!   only; only the internal plane may clean up across tenants.

use cache_shared::Error;
use cache_shared::api_keys::Role;
use cache_shared::db::backups;
use cache_shared::keys::TenantId;
use cache_shared::sessions::Owner;

use sqlx::PgPool;

use crate::JobSpec;
use crate::payload::Checks;

/// Where a request to start a job came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// `/api/v1`, with an API key and its role.
    Public,
    /// `/internal`, a platform service with `X-Service-Token`: trusted
    /// with every tenant.
    Internal,
}

/// Who asks for a job: the tenant it acts on and the rights it acts with.
#[derive(Debug, Clone)]
pub struct Requester {
    pub plane: Plane,
    /// The tenant the job acts on: the key's own, an operator's
    /// `?tenant=`, or the internal plane's `X-Tenant-Id`.
    pub tenant: TenantId,
    /// The key's role on the public plane (unused on the internal one).
    pub role: Role,
    /// Recorded as the job's `created_by`: a key id, `internal`, or a
    /// schedule's tick.
    pub label: String,
}

impl Requester {
    /// A platform service on the internal plane acting for `tenant`.
    pub fn internal(tenant: TenantId) -> Self {
        Self {
            plane: Plane::Internal,
            tenant,
            role: Role::Operator,
            label: "internal".to_owned(),
        }
    }

    fn is_operator(&self) -> bool {
        self.plane == Plane::Internal || self.role == Role::Operator
    }
}

/// A job the policy let through, scoped to its tenant. Only
/// [`JobQueue::authorize`] makes one; its fields cannot be changed after.
#[derive(Debug, Clone)]
pub struct Authorized {
    tenant: TenantId,
    spec: JobSpec,
    created_by: String,
}

impl Authorized {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    pub fn created_by(&self) -> &str {
        &self.created_by
    }

    pub(crate) fn into_parts(self) -> (TenantId, JobSpec, String) {
        (self.tenant, self.spec, self.created_by)
    }
}

/// The least role that may start a job on the public plane.
pub const JOB_ROLE: Role = Role::Admin;

/// Validates `spec` and applies the rules of the module docs for
/// `requester`: the only way to an [`Authorized`] job (reached through
/// `JobQueue::authorize`).
///
/// # Errors
///
/// [`Error::Validation`] for bad parameters, [`Error::Forbidden`] naming
/// the rule, [`Error::NotFound`] for a backup the requester cannot see,
/// [`Error::StoreUnavailable`] when the backup cannot be looked up.
pub(crate) async fn authorize(
    db: &PgPool,
    checks: &Checks<'_>,
    requester: &Requester,
    spec: JobSpec,
) -> Result<Authorized, Error> {
    spec.validate(checks)?;
    let spec = scope(requester, spec)?;
    if let Some(backup_id) = backup_source(&spec) {
        let backup = backups::get(db, backup_id).await?;
        let visible = backup
            .is_some_and(|b| requester.is_operator() || b.tenant_id == requester.tenant.as_str());
        if !visible {
            return Err(Error::NotFound {
                what: format!("backup '{backup_id}'"),
            });
        }
    }
    Ok(Authorized {
        tenant: requester.tenant.clone(),
        spec,
        created_by: requester.label.clone(),
    })
}

/// The role and tenant rules that need no lookup; returns the spec scoped
/// to the requester's tenant.
fn scope(requester: &Requester, spec: JobSpec) -> Result<JobSpec, Error> {
    if requester.plane == Plane::Public && !requester.role.allows(JOB_ROLE) {
        return Err(Error::Forbidden(format!(
            "starting a job needs the {JOB_ROLE} role; the key has {}",
            requester.role
        )));
    }
    let operator_only = |what: &str| {
        if requester.is_operator() {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("only an operator may {what}")))
        }
    };
    match spec {
        JobSpec::Flush(ref params) if params.whole_server => {
            operator_only("flush the whole server")?;
            Ok(spec)
        }
        JobSpec::Backup(ref params) if params.file.is_some() => {
            operator_only("name a file on the worker")?;
            Ok(spec)
        }
        JobSpec::Restore(ref params) if params.file.is_some() => {
            operator_only("name a file on the worker")?;
            Ok(spec)
        }
        JobSpec::Reencrypt(ref params) if params.platform => {
            operator_only("re-encrypt the platform's sessions and permission results")?;
            Ok(spec)
        }
        JobSpec::SessionCleanup(owner) if requester.plane == Plane::Public => {
            let tenant = requester.tenant.as_str();
            if owner.tenant_id.as_deref().is_some_and(|t| t != tenant) {
                return Err(Error::Forbidden(format!(
                    "sessions of tenant '{tenant}' only: tenantId names another tenant"
                )));
            }
            Ok(JobSpec::SessionCleanup(Owner {
                user_id: owner.user_id,
                tenant_id: Some(tenant.to_owned()),
            }))
        }
        spec => Ok(spec),
    }
}

/// The backup a job reads, if any.
fn backup_source(spec: &JobSpec) -> Option<&str> {
    match spec {
        JobSpec::Restore(params) => params.backup_id.as_deref(),
        JobSpec::Preload(params) => params.backup_id.as_deref(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupParams, RestoreParams};
    use crate::flush::FlushParams;

    fn public(role: Role) -> Requester {
        Requester {
            plane: Plane::Public,
            tenant: TenantId::parse("acme", "tenant").unwrap(),
            role,
            label: "key".into(),
        }
    }

    fn whole_server() -> JobSpec {
        JobSpec::Flush(FlushParams {
            whole_server: true,
            ..FlushParams::default()
        })
    }

    #[test]
    fn whole_server_flushes_and_worker_files_are_for_operators() {
        let file = || Some("/var/backups/x.ndjson".to_owned());
        for spec in [
            whole_server(),
            JobSpec::Backup(BackupParams { file: file() }),
            JobSpec::Restore(RestoreParams {
                backup_id: None,
                file: file(),
                overwrite: false,
            }),
            JobSpec::Reencrypt(crate::reencrypt::ReencryptParams {
                pattern: None,
                platform: true,
            }),
        ] {
            let refused = scope(&public(Role::Admin), spec.clone()).unwrap_err();
            assert!(matches!(refused, Error::Forbidden(_)), "{refused:?}");
            assert!(scope(&public(Role::Operator), spec.clone()).is_ok());
            let service = Requester::internal(TenantId::platform());
            assert!(scope(&service, spec).is_ok());
        }
    }

    #[test]
    fn jobs_need_the_admin_role_on_the_public_plane() {
        let spec = JobSpec::Flush(FlushParams::default());
        for role in [Role::Reader, Role::Writer] {
            assert!(matches!(
                scope(&public(role), spec.clone()),
                Err(Error::Forbidden(_))
            ));
        }
        assert!(scope(&public(Role::Admin), spec).is_ok());
    }

    #[test]
    fn public_session_cleanup_is_pinned_to_the_requester_tenant() {
        let by_user = Owner {
            user_id: Some("alice".into()),
            tenant_id: None,
        };
        let Ok(JobSpec::SessionCleanup(owner)) = scope(
            &public(Role::Admin),
            JobSpec::SessionCleanup(by_user.clone()),
        ) else {
            panic!("a user's cleanup in the caller's tenant is allowed");
        };
        assert_eq!(owner.tenant_id.as_deref(), Some("acme"));
        assert_eq!(owner.user_id.as_deref(), Some("alice"));

        let other = Owner {
            user_id: None,
            tenant_id: Some("globex".into()),
        };
        // Even an operator acts on the tenant it names with ?tenant=.
        for role in [Role::Admin, Role::Operator] {
            assert!(matches!(
                scope(&public(role), JobSpec::SessionCleanup(other.clone())),
                Err(Error::Forbidden(_))
            ));
        }
        // The internal plane cleans up across tenants, as asked.
        let service = Requester::internal(TenantId::platform());
        let Ok(JobSpec::SessionCleanup(owner)) = scope(&service, JobSpec::SessionCleanup(by_user))
        else {
            panic!("the internal plane may clean up a user everywhere");
        };
        assert_eq!(owner.tenant_id, None);
    }
}
