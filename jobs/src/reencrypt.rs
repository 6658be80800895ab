//! The parameters of `reencrypt`: which of a tenant's values to bring under
//! the current data key (API.md §11).

use cache_shared::Error;
use cache_shared::keys::validate_key;
use serde::{Deserialize, Serialize};

use crate::payload::{Checks, Params};

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReencryptParams {
    /// A glob over the tenant's keys (`*`, `?`, `[..]` act); absent: every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
    pub pattern: Option<String>,
    /// The platform's sessions and permission results instead of the
    /// tenant's values (operators only; with `ENCRYPT_PLATFORM_DATA`, plain
    /// ones are sealed too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub platform: bool,
}

impl ReencryptParams {
    /// The glob the job walks.
    pub fn pattern(&self) -> &str {
        self.pattern.as_deref().unwrap_or("*")
    }
}

impl Params for ReencryptParams {
    fn validate(&self, _: &Checks<'_>) -> Result<(), Error> {
        match &self.pattern {
            Some(_) if self.platform => Err(Error::validation(
                "pattern",
                "pattern applies to a tenant's values, not to platform data",
            )),
            Some(pattern) => validate_key(pattern, "pattern"),
            None => Ok(()),
        }
    }
}
