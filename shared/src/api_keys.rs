//! API keys and roles of the public plane (API.md §1): keys are 256 random
//! bits, shown once and stored only as a SHA-256 digest.

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Prefix that makes a cache-service key recognisable in logs and scanners.
pub const KEY_PREFIX: &str = "csk_";

/// What a key may do; each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    Admin,
    Operator,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Writer, Role::Admin, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
            Role::Operator => "operator",
        }
    }

    /// # Errors
    ///
    /// [`Error::Validation`] naming `field` for anything but the four roles.
    pub fn parse(text: &str, field: &'static str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| {
                Error::validation(
                    field,
                    format!("{field} must be reader, writer, admin or operator"),
                )
            })
    }

    /// Whether this role may do what `required` may.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A freshly generated key: the secret (to show once) and its digest (to store).
#[derive(Debug)]
pub struct NewKey {
    pub secret: String,
    pub hash: [u8; 32],
}

/// Generates a key from 256 bits of operating-system randomness.
///
/// # Errors
///
/// [`Error::Internal`] when the system has no randomness to give.
pub fn generate() -> Result<NewKey, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    let secret = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = digest(&secret);
    Ok(NewKey { secret, hash })
}

/// The stored form of a presented key.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_before_them() {
        assert!(Role::Operator.allows(Role::Reader));
        assert!(Role::Admin.allows(Role::Writer));
        assert!(!Role::Writer.allows(Role::Admin));
        assert!(Role::parse("owner", "role").is_err());
    }

    #[test]
    fn keys_are_long_random_and_stored_as_digests() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(KEY_PREFIX) && a.secret.len() == KEY_PREFIX.len() + 43);
        assert_eq!(a.hash, digest(&a.secret));
    }
}
