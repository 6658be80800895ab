//! The parameters of `memory_analysis`: every key of the tenant or a sample.

use cache_shared::Error;
use serde::{Deserialize, Serialize};

use crate::payload::{Checks, Params};

/// Keys a sampled analysis looks at unless told otherwise.
pub const DEFAULT_SAMPLE: u64 = 10_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every key of the tenant.
    Full,
    /// The first `sampleSize` keys `SCAN` returns (spread over the keyspace).
    #[default]
    Sampled,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisParams {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub sample_size: Option<u64>,
}

impl AnalysisParams {
    /// # Errors
    ///
    /// [`Error::Validation`] for a sample size outside 1..=1 000 000, or one given in full mode.
    pub fn validate(&self) -> Result<(), Error> {
        match (self.mode, self.sample_size) {
            (Mode::Full, Some(_)) => Err(Error::validation(
                "sampleSize",
                "sampleSize applies to mode sampled only",
            )),
            (_, Some(n)) if !(1..=1_000_000).contains(&n) => Err(Error::validation(
                "sampleSize",
                "sampleSize must be from 1 to 1000000",
            )),
            _ => Ok(()),
        }
    }
}

impl Params for AnalysisParams {
    fn validate(&self, _: &Checks<'_>) -> Result<(), Error> {
        AnalysisParams::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_sizes_are_checked() {
        assert!(AnalysisParams::default().validate().is_ok());
        let full_with_sample = AnalysisParams {
            mode: Mode::Full,
            sample_size: Some(5),
        };
        assert!(full_with_sample.validate().is_err());
        let zero = AnalysisParams {
            mode: Mode::Sampled,
            sample_size: Some(0),
        };
        assert!(zero.validate().is_err());
    }
}
