//! Secret tokens a caller presents (internal service tokens, metrics scrape
//! tokens): kept only as SHA-256 digests and compared in constant time, so
//! that neither content nor length leaks. HTTP-free: the binaries hand over
//! the header's text.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Accepted secret tokens; several allow rotation.
#[derive(Clone, Default)]
pub struct ServiceTokens {
    /// Shared: the admission layer is cloned per request.
    digests: std::sync::Arc<[[u8; 32]]>,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceTokens({} configured)", self.digests.len())
    }
}

impl ServiceTokens {
    /// Parses the comma-separated `INTERNAL_SERVICE_TOKEN` list (several
    /// tokens allow rotation); blanks around commas are ignored.
    pub fn from_list(list: &str) -> Self {
        Self {
            digests: list
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn accepts(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Compare with every token, without stopping early.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(&digest)
            })
            .into()
    }
}

/// The token of an `Authorization` header's value `Bearer <token>` (scheme
/// in any case).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rotated_token_is_accepted_and_nothing_else() {
        let tokens = ServiceTokens::from_list("old-secret, new-secret ,");
        assert!(tokens.accepts(b"old-secret"));
        assert!(tokens.accepts(b"new-secret"));
        assert!(!tokens.accepts(b"new-secre"));
        assert!(!tokens.accepts(b""));
        assert!(!ServiceTokens::from_list(" , ").accepts(b""));
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
