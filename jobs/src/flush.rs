//! The parameters of `flush`: what to delete from a tenant (all, a
//! namespace, or a glob pattern), or, for operators, every tenant's values.

use cache_shared::Error;
use cache_shared::keys::{TenantId, TenantKeyspace, validate_key};
use serde::{Deserialize, Serialize};

use crate::payload::{Checks, Params};

/// What to flush, as callers send it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlushParams {
    /// A glob over the tenant's keys (`*`, `?`, `[..]` act).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
    pub pattern: Option<String>,
    /// A literal key prefix, e.g. `user:` (no wildcards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
    pub namespace: Option<String>,
    /// Every tenant's values (operators only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole_server: bool,
}

impl FlushParams {
    /// What is flushed, as the operation log's key: the glob, the namespace
    /// followed by `*`, `*` for the whole tenant or `**` for the whole server.
    pub fn describe(&self) -> String {
        match (&self.pattern, &self.namespace, self.whole_server) {
            (_, _, true) => "**".to_owned(),
            (Some(pattern), _, _) => pattern.clone(),
            (None, Some(namespace), _) => format!("{namespace}*"),
            (None, None, false) => "*".to_owned(),
        }
    }

    /// # Errors
    ///
    /// [`Error::Validation`] for a malformed pattern or namespace, or a
    /// combination that makes no sense.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(pattern) = &self.pattern {
            validate_key(pattern, "pattern")?;
        }
        if let Some(namespace) = &self.namespace {
            validate_key(namespace, "namespace")?;
        }
        match (&self.pattern, &self.namespace, self.whole_server) {
            (Some(_), Some(_), _) => Err(Error::validation(
                "pattern",
                "give pattern or namespace, not both",
            )),
            (Some(_), _, true) | (_, Some(_), true) => Err(Error::validation(
                "wholeServer",
                "wholeServer flushes everything; it takes no pattern or namespace",
            )),
            _ => Ok(()),
        }
    }

    /// The `SCAN` pattern of the flush: inside the tenant's namespace unless whole-server.
    pub fn scan_pattern(&self, tenant: &TenantId) -> String {
        if self.whole_server {
            return TenantKeyspace::all_tenants_pattern().to_owned();
        }
        let ns = TenantKeyspace::new(tenant);
        match (&self.pattern, &self.namespace) {
            (Some(glob), _) => ns.pattern(glob),
            (None, Some(prefix)) => ns.literal_prefix_pattern(prefix),
            (None, None) => ns.pattern("*"),
        }
    }
}

impl Params for FlushParams {
    fn validate(&self, _: &Checks<'_>) -> Result<(), Error> {
        FlushParams::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_parameters_are_checked() {
        assert!(FlushParams::default().validate().is_ok());
        let both = FlushParams {
            pattern: Some("a*".into()),
            namespace: Some("a".into()),
            whole_server: false,
        };
        assert!(both.validate().is_err());
        let whole_with_pattern = FlushParams {
            pattern: Some("*".into()),
            whole_server: true,
            ..FlushParams::default()
        };
        assert!(whole_with_pattern.validate().is_err());
    }

    #[test]
    fn patterns_stay_inside_the_tenant() {
        let t = TenantId::parse("acme", "t").unwrap();
        let by_ns = FlushParams {
            namespace: Some("user*:".into()),
            ..FlushParams::default()
        };
        assert_eq!(by_ns.scan_pattern(&t), "c:{acme}:user\\*:*");
        let by_glob = FlushParams {
            pattern: Some("user:*".into()),
            ..FlushParams::default()
        };
        assert_eq!(by_glob.scan_pattern(&t), "c:{acme}:user:*");
    }
}
