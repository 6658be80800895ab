//! The parameters of `preload`: the items to write into a tenant, inline,
//! from an allowed URL or from a backup.

use cache_shared::Error;
use cache_shared::codec::Value;
use cache_shared::keys::validate_key;
use cache_shared::ttl::Expiry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::allow_list::AllowList;
use crate::backup::RestoreParams;
use crate::payload::{Checks, Params};

/// Most items one inline preload may carry.
pub const MAX_INLINE_ITEMS: usize = 10_000;

/// One key to write.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreloadItem {
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\x00-\x1f\x7f]+$")]
    pub key: String,
    #[schema(value_type = serde_json::Value)]
    pub value: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u32>, maximum = 31536000)]
    pub ttl: Option<Expiry>,
}

/// Where the items come from, as callers send it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreloadParams {
    /// Up to 10 000 items, each validated at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 10000)]
    pub items: Option<Vec<PreloadItem>>,
    /// Newline-delimited JSON items, from a host on `PRELOAD_ALLOWED_HOSTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A completed backup of the tenant's (an operator may name any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[0-9A-Za-z]{26}$")]
    pub backup_id: Option<String>,
}

impl PreloadParams {
    /// Checks every item before anything is enqueued, naming the first bad one.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] or [`Error::PayloadTooLarge`].
    pub fn validate(&self, max_value_bytes: usize, allow: &AllowList) -> Result<(), Error> {
        let sources = [
            self.items.is_some(),
            self.url.is_some(),
            self.backup_id.is_some(),
        ];
        if sources.iter().filter(|&&s| s).count() != 1 {
            return Err(Error::validation(
                "items",
                "give exactly one source: items, url or backupId",
            ));
        }
        if let Some(url) = &self.url {
            return allow.check(url).map(|_| ());
        }
        if let Some(backup_id) = &self.backup_id {
            return RestoreParams {
                backup_id: Some(backup_id.clone()),
                file: None,
                overwrite: true,
            }
            .validate();
        }
        let Some(items) = &self.items else {
            return Err(Error::validation("items", "items is required"));
        };
        if items.len() > MAX_INLINE_ITEMS {
            return Err(Error::validation(
                "items",
                format!(
                    "items must hold at most {MAX_INLINE_ITEMS} entries, not {}",
                    items.len()
                ),
            ));
        }
        for (i, item) in items.iter().enumerate() {
            validate_key(&item.key, &format!("items[{i}].key"))?;
            let value = Value::from_raw_json(&item.value);
            if value.len() > max_value_bytes {
                return Err(Error::PayloadTooLarge {
                    message: format!(
                        "items[{i}].value is {} bytes, more than the limit of {max_value_bytes} bytes",
                        value.len()
                    ),
                    limit: max_value_bytes,
                });
            }
        }
        Ok(())
    }
}

impl Params for PreloadParams {
    fn validate(&self, checks: &Checks<'_>) -> Result<(), Error> {
        PreloadParams::validate(self, checks.max_value_bytes, checks.preload_hosts)
    }
}
