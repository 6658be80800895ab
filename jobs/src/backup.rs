//! The parameters of `backup` and `restore`: where a backup goes (PostgreSQL,
//! or a file on the worker for operators) and where a restore reads from.

use cache_shared::Error;
use serde::{Deserialize, Serialize};

use crate::payload::{Checks, Params};

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupParams {
    /// Operators only: write the backup to this absolute path on the worker
    /// (newline-delimited JSON) instead of PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^/")]
    pub file: Option<String>,
}

impl BackupParams {
    /// # Errors
    ///
    /// [`Error::Validation`] for a path that is not absolute.
    pub fn validate(&self) -> Result<(), Error> {
        self.file.as_deref().map_or(Ok(()), validate_path)
    }
}

impl Params for BackupParams {
    fn validate(&self, _: &Checks<'_>) -> Result<(), Error> {
        BackupParams::validate(self)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreParams {
    /// The id of a completed backup job stored in PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[0-9A-Za-z]{26}$")]
    pub backup_id: Option<String>,
    /// Operators only: a backup file written by a `file` backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^/")]
    pub file: Option<String>,
    /// Replace keys that exist in the target tenant (default: keep them).
    #[serde(default)]
    pub overwrite: bool,
}

impl RestoreParams {
    /// # Errors
    ///
    /// [`Error::Validation`] unless exactly one well-formed source is given.
    pub fn validate(&self) -> Result<(), Error> {
        match (&self.backup_id, &self.file) {
            (Some(id), None) => {
                if id.len() != 26 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(Error::validation(
                        "backupId",
                        "backupId must be a backup job id",
                    ));
                }
                Ok(())
            }
            (None, Some(path)) => validate_path(path),
            _ => Err(Error::validation("backupId", "give backupId or file")),
        }
    }
}

impl Params for RestoreParams {
    fn validate(&self, _: &Checks<'_>) -> Result<(), Error> {
        RestoreParams::validate(self)
    }
}

fn validate_path(path: &str) -> Result<(), Error> {
    if !path.starts_with('/') || path.contains('\0') || path.split('/').any(|s| s == "..") {
        return Err(Error::validation(
            "file",
            "file must be an absolute path without '..'",
        ));
    }
    Ok(())
}
