//! Encryption at rest (API.md §11): values of encrypted namespaces (and,
//! with `ENCRYPT_PLATFORM_DATA`, sessions and permission results) are stored
//! sealed with AES-256-GCM under a data key from `DATA_ENCRYPTION_KEYS`.
//!
//! A sealed envelope is the tag `E`, the key id's length (one byte), the key
//! id, a random 12-byte nonce, then the inner envelope (tag and payload, as
//! the codec writes it, compressed first when that pays) encrypted, and the
//! 16-byte authentication tag. The tag, length and key id are authenticated
//! as associated data, so a value cannot be relabelled to another key.
//!
//! AES-256-GCM over XChaCha20-Poly1305: with AES-NI it opens a 1 KB value
//! in a third of the time on this service's machines (reads must stay
//! within 10 % of a plain namespace). Its random 96-bit nonces bound one key
//! to 2^32 seals (NIST SP 800-38D); [`Keyring::seals`] counts them per key
//! (`cache_values_sealed_total{key}`), so a key is rotated long before.
//!
//! The first configured key seals; every configured key opens, so keys
//! rotate: add the new key first, keep the old one until the `reencrypt`
//! job has rewritten every value sealed under it. A value whose key is not
//! configured is an error saying so, never garbage.

use base64::Engine;
use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::{AeadInOut, Generate, KeyInit, Nonce};
use aes_gcm::{Aes256Gcm, Tag};

use crate::error::Error;

/// The codec's tag of a sealed envelope.
pub const TAG_SEALED: u8 = b'E';
const NONCE_BYTES: usize = 12;
const AEAD_TAG_BYTES: usize = 16;
/// Longest key id.
pub const MAX_KEY_ID_BYTES: usize = 32;
/// Most bytes sealing adds to an envelope: tag, id length, id, nonce, authentication tag.
pub const MAX_OVERHEAD_BYTES: usize = 2 + MAX_KEY_ID_BYTES + NONCE_BYTES + AEAD_TAG_BYTES;

struct DataKey {
    id: String,
    cipher: Aes256Gcm,
    /// Values this process sealed under the key.
    seals: AtomicU64,
}

/// The configured data keys; the first seals.
#[derive(Default)]
pub struct Keyring {
    keys: Vec<DataKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// Parses `DATA_ENCRYPTION_KEYS`: `id:base64-of-32-bytes,…` (empty: no keys).
    ///
    /// # Errors
    ///
    /// A message naming the entry (by position and id, never the key) that is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<DataKey> = Vec::new();
        for (n, entry) in text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let position = n + 1;
            let (id, key) = entry
                .split_once(':')
                .ok_or_else(|| format!("entry {position} is not id:base64-key"))?;
            let id = id.trim();
            if id.is_empty()
                || id.len() > MAX_KEY_ID_BYTES
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "entry {position}: a key id is 1 to {MAX_KEY_ID_BYTES} of [A-Za-z0-9_-]"
                ));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(format!("key id '{id}' appears twice"));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .map_err(|_| format!("key '{id}' is not base64"))?;
            let cipher = Aes256Gcm::new_from_slice(&bytes)
                .map_err(|_| format!("key '{id}' is {} bytes, not 32", bytes.len()))?;
            keys.push(DataKey {
                id: id.to_owned(),
                cipher,
                seals: AtomicU64::new(0),
            });
        }
        Ok(Self { keys })
    }

    /// Whether no key is configured (encrypted namespaces cannot be used).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Values this process sealed so far, per key id (for the metric that
    /// tells when a key nears its bound of seals).
    pub fn seals(&self) -> impl Iterator<Item = (&str, u64)> {
        self.keys
            .iter()
            .map(|k| (k.id.as_str(), k.seals.load(Ordering::Relaxed)))
    }

    /// The id of the key that seals new values.
    pub fn current_id(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    /// `envelope` (a codec envelope: tag and payload) sealed under the current key.
    ///
    /// # Errors
    ///
    /// [`Error::Sealing`] when no key is configured.
    pub fn seal(&self, envelope: &[u8]) -> Result<Vec<u8>, Error> {
        let key = self.keys.first().ok_or_else(|| {
            Error::Sealing(
                "this value belongs to an encrypted namespace, and DATA_ENCRYPTION_KEYS is \
                 not configured on this instance"
                    .into(),
            )
        })?;
        let id = key.id.as_bytes();
        let header_len = 2 + id.len();
        let mut out =
            Vec::with_capacity(header_len + NONCE_BYTES + envelope.len() + AEAD_TAG_BYTES);
        out.push(TAG_SEALED);
        // Ids are at most MAX_KEY_ID_BYTES long (checked when parsed).
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(id);
        let nonce = Nonce::<Aes256Gcm>::generate();
        out.extend_from_slice(&nonce);
        let body = out.len();
        out.extend_from_slice(envelope);
        let (aad, rest) = out.split_at_mut(header_len);
        let tag = key
            .cipher
            .encrypt_inout_detached(&nonce, aad, (&mut rest[NONCE_BYTES..]).into())
            .map_err(|_| Error::Sealing("the value is too large to seal".into()))?;
        debug_assert_eq!(body, header_len + NONCE_BYTES);
        out.extend_from_slice(&tag);
        key.seals.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// The inner envelope of a sealed one.
    ///
    /// # Errors
    ///
    /// [`Error::Sealing`] naming the key id when that key is not configured,
    /// or saying the value does not decrypt (damaged, or not ours).
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let parts = SealedParts::of(sealed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id.as_bytes() == parts.key_id)
            .ok_or_else(|| {
                Error::Sealing(format!(
                    "the value is encrypted under data key '{}', which DATA_ENCRYPTION_KEYS \
                     on this instance does not hold",
                    String::from_utf8_lossy(parts.key_id)
                ))
            })?;
        let nonce = Nonce::<Aes256Gcm>::try_from(parts.nonce)
            .map_err(|_| Error::Sealing("the sealed value is damaged".into()))?;
        let tag = Tag::try_from(parts.tag)
            .map_err(|_| Error::Sealing("the sealed value is damaged".into()))?;
        let mut inner = parts.ciphertext.to_vec();
        key.cipher
            .decrypt_inout_detached(&nonce, parts.aad, inner.as_mut_slice().into(), &tag)
            .map_err(|_| {
                Error::Sealing(format!(
                    "the value sealed under data key '{}' does not decrypt: it was damaged",
                    key.id
                ))
            })?;
        Ok(inner)
    }
}

/// The parts of a sealed envelope.
struct SealedParts<'a> {
    aad: &'a [u8],
    key_id: &'a [u8],
    nonce: &'a [u8],
    ciphertext: &'a [u8],
    tag: &'a [u8],
}

impl<'a> SealedParts<'a> {
    fn of(sealed: &'a [u8]) -> Result<Self, Error> {
        let damaged = || Error::Sealing("the sealed value is damaged".into());
        let [TAG_SEALED, id_len, ..] = sealed else {
            return Err(damaged());
        };
        let header_len = 2 + usize::from(*id_len);
        if sealed.len() < header_len + NONCE_BYTES + 1 + AEAD_TAG_BYTES {
            return Err(damaged());
        }
        let (aad, rest) = sealed.split_at(header_len);
        let (nonce, rest) = rest.split_at(NONCE_BYTES);
        let (ciphertext, tag) = rest.split_at(rest.len() - AEAD_TAG_BYTES);
        Ok(Self {
            aad,
            key_id: &aad[2..],
            nonce,
            ciphertext,
            tag,
        })
    }
}

/// The key id a sealed envelope names, or `None` when it is not a
/// well-formed sealed envelope.
pub fn key_id_of(sealed: &[u8]) -> Option<&str> {
    SealedParts::of(sealed)
        .ok()
        .and_then(|p| std::str::from_utf8(p.key_id).ok())
}

/// Whether `envelope` is sealed.
pub fn is_sealed(envelope: &[u8]) -> bool {
    envelope.first() == Some(&TAG_SEALED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    #[test]
    fn keys_are_parsed_strictly_and_never_shown() {
        let ring = Keyring::parse(&format!("new:{}, old:{}", key(1), key(2))).unwrap();
        assert_eq!(ring.current_id(), Some("new"));
        assert!(!format!("{ring:?}").contains(&key(1)));
        assert!(Keyring::parse("").unwrap().is_empty());
        for bad in [
            "nokey".to_owned(),
            format!(
                "a:{}",
                base64::engine::general_purpose::STANDARD.encode([0u8; 16])
            ),
            "a:!!!".to_owned(),
            format!("a b:{}", key(1)),
            format!("a:{},a:{}", key(1), key(2)),
        ] {
            let error = Keyring::parse(&bad).unwrap_err();
            assert!(!error.contains(&key(1)), "{error}");
        }
    }

    #[test]
    fn sealed_values_open_with_any_configured_key_and_only_with_it() {
        let old = Keyring::parse(&format!("old:{}", key(2))).unwrap();
        let sealed = old.seal(b"J{\"secret\":1}").unwrap();
        assert!(is_sealed(&sealed));
        assert_eq!(key_id_of(&sealed), Some("old"));
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "the plaintext is not in the sealed bytes"
        );
        // Two seals of one value differ (random nonces).
        assert_ne!(old.seal(b"Jx").unwrap(), old.seal(b"Jx").unwrap());

        let rotated = Keyring::parse(&format!("new:{},old:{}", key(1), key(2))).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), b"J{\"secret\":1}");
        assert_eq!(key_id_of(&rotated.seal(b"Jx").unwrap()), Some("new"));

        let without = Keyring::parse(&format!("new:{}", key(1))).unwrap();
        let Err(Error::Sealing(message)) = without.open(&sealed) else {
            panic!("opened without its key")
        };
        assert!(message.contains("'old'"), "{message}");

        // A flipped bit anywhere, the key id included, is refused.
        for at in [1, 3, 10, sealed.len() / 2, sealed.len() - 1] {
            let mut damaged = sealed.clone();
            damaged[at] ^= 1;
            assert!(rotated.open(&damaged).is_err(), "bit at {at}");
        }
        assert!(rotated.open(&sealed[..20]).is_err());
        assert!(Keyring::default().seal(b"Jx").is_err());
    }
}
