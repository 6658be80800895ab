//! Time-to-live as the contract speaks of it (API.md §2): whole seconds, `0`
//! for no expiry, 1 to 31 536 000 as given, anything else refused.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::error::Error;

/// The longest TTL a caller may ask for: one year.
pub const MAX_TTL_SECONDS: u32 = 31_536_000;

const TTL_RULE: &str = "a whole number of seconds from 0 to 31536000";

/// A caller's explicit TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `0`: the entry never expires.
    Never,
    /// Expires after this many seconds.
    Seconds(u32),
}

impl Expiry {
    /// Parses a TTL given as text (a query parameter).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming `field` for anything but an integer in range.
    pub fn parse(text: &str, field: &'static str) -> Result<Self, Error> {
        text.parse::<u64>()
            .ok()
            .and_then(Self::from_seconds)
            .ok_or_else(|| Error::validation(field, format!("{field} must be {TTL_RULE}")))
    }

    fn from_seconds(seconds: u64) -> Option<Self> {
        match seconds {
            0 => Some(Self::Never),
            s if s <= u64::from(MAX_TTL_SECONDS) => u32::try_from(s).ok().map(Self::Seconds),
            _ => None,
        }
    }

    /// The TTL a read would now report: seconds, or `-1` for no expiry.
    pub fn reported(self) -> i64 {
        match self {
            Self::Never => -1,
            Self::Seconds(s) => i64::from(s),
        }
    }

    /// Seconds to pass to Redis, `None` for no expiry.
    pub fn seconds(self) -> Option<u32> {
        match self {
            Self::Never => None,
            Self::Seconds(s) => Some(s),
        }
    }
}

impl serde::Serialize for Expiry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.seconds().unwrap_or(0))
    }
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExpiryVisitor;

        impl Visitor<'_> for ExpiryVisitor {
            type Value = Expiry;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(TTL_RULE)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Expiry, E> {
                Expiry::from_seconds(v).ok_or_else(|| E::custom(format!("expected {TTL_RULE}")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Expiry, E> {
                u64::try_from(v)
                    .ok()
                    .and_then(Expiry::from_seconds)
                    .ok_or_else(|| E::custom(format!("expected {TTL_RULE}")))
            }
        }

        deserializer.deserialize_u64(ExpiryVisitor)
    }
}

/// Converts Redis's `TTL` answer to the contract's: `None` when the key is
/// absent, `-1` for no expiry, else whole seconds.
pub fn from_redis_ttl(ttl: i64) -> Option<i64> {
    match ttl {
        -2 => None,
        t if t < 0 => Some(-1),
        t => Some(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        ttl: Option<Expiry>,
    }

    fn parse(body: &str) -> Result<Option<Expiry>, String> {
        serde_json::from_str::<Body>(body)
            .map(|b| b.ttl)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(parse("{}"), Ok(None));
        assert_eq!(parse(r#"{"ttl":null}"#), Ok(None));
        assert_eq!(parse(r#"{"ttl":0}"#), Ok(Some(Expiry::Never)));
        assert_eq!(parse(r#"{"ttl":1}"#), Ok(Some(Expiry::Seconds(1))));
        assert_eq!(
            parse(r#"{"ttl":31536000}"#),
            Ok(Some(Expiry::Seconds(31_536_000)))
        );
    }

    #[test]
    fn refused_forms() {
        for bad in [
            "-1", "1.5", "1.0", "\"60\"", "31536001", "true", "[]", "1e3",
        ] {
            assert!(
                parse(&format!(r#"{{"ttl":{bad}}}"#)).is_err(),
                "{bad} accepted"
            );
        }
        for bad in ["-1", "1.5", "", "abc", "31536001", " 5"] {
            assert!(Expiry::parse(bad, "ttl").is_err(), "{bad:?} accepted");
        }
        assert_eq!(Expiry::parse("0", "ttl").unwrap(), Expiry::Never);
    }

    #[test]
    fn redis_ttl_answers_map_to_the_contract() {
        assert_eq!(from_redis_ttl(-2), None);
        assert_eq!(from_redis_ttl(-1), Some(-1));
        assert_eq!(from_redis_ttl(42), Some(42));
    }
}
