//! The parameters of `compress`: which of a tenant's values to re-encode
//! with LZ4.

use cache_shared::Error;
use cache_shared::keys::validate_key;
use serde::{Deserialize, Serialize};

use crate::payload::{Checks, Params};

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompressParams {
    /// A glob over the tenant's keys (`*`, `?`, `[..]` act).
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
    pub pattern: String,
}

impl CompressParams {
    /// # Errors
    ///
    /// [`Error::Validation`] for a malformed pattern.
    pub fn validate(&self) -> Result<(), Error> {
        validate_key(&self.pattern, "pattern")
    }
}

impl Params for CompressParams {
    fn validate(&self, _: &Checks<'_>) -> Result<(), Error> {
        CompressParams::validate(self)
    }
}
