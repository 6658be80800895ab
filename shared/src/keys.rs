//! The Redis key layout: which tenant owns which bytes of the keyspace.
//!
//! Every key the service writes starts with a kind prefix and the owner's tenant
//! id inside a Redis Cluster hash tag: `c:{acme}:user:1`. Tenant ids never contain
//! `{`, `}` or `:`, so the tenant part ends unambiguously at `}:` and no tenant id
//! or user key can produce another tenant's key (`t1` and `t10` give `c:{t1}:` and
//! `c:{t10}:`). The hash tag keeps all of a tenant's keys in one slot, so a batch
//! stays atomic today and a later cluster mode needs no data migration.
//!
//! This module owns validation of tenant ids and cache keys (API.md §2) and the
//! escaping of glob characters; nothing else in the code base builds key strings.

use std::fmt;

use crate::error::Error;

/// The namespace of callers that act for the platform rather than a tenant.
pub const PLATFORM_TENANT: &str = "_platform";

/// Longest accepted tenant id, matching the `varchar(64)` columns.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// Longest accepted cache key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 512;

/// A validated tenant id (or the reserved platform namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    /// Validates a tenant id supplied by a caller; reserved ids (leading `_`) are refused.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming `field` when the id is empty, too long, uses a
    /// character outside `[A-Za-z0-9_-]` or begins with `_`.
    pub fn parse(raw: &str, field: &str) -> Result<Self, Error> {
        if raw.is_empty() || raw.len() > MAX_TENANT_ID_LEN {
            return Err(Error::validation(
                field.to_owned(),
                format!("{field} must be 1 to {MAX_TENANT_ID_LEN} characters"),
            ));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::validation(
                field.to_owned(),
                format!("{field} may only contain A-Z, a-z, 0-9, '_' and '-'"),
            ));
        }
        if raw.starts_with('_') {
            return Err(Error::validation(
                field.to_owned(),
                format!("{field} must not begin with '_' (reserved)"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A tenant id read back from our own records (a job's tenant): the
    /// caller rules plus the platform namespace, which only the service assigns.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] when the record holds something else.
    pub fn from_record(raw: &str) -> Result<Self, Error> {
        if raw == PLATFORM_TENANT {
            Ok(Self::platform())
        } else {
            Self::parse(raw, "tenantId")
        }
    }

    /// The platform namespace, used when an internal caller names no tenant.
    pub fn platform() -> Self {
        Self(PLATFORM_TENANT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a cache key against API.md §2: 1 to 512 bytes, no ASCII control
/// characters, and not `.` or `..`.
///
/// # Errors
///
/// [`Error::Validation`] naming `field`.
pub fn validate_key(key: &str, field: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::validation(
            field.to_owned(),
            format!("{field} must be 1 to {MAX_KEY_BYTES} bytes of UTF-8"),
        ));
    }
    if key.bytes().any(|b| b.is_ascii_control()) {
        return Err(Error::validation(
            field.to_owned(),
            format!("{field} must not contain control characters"),
        ));
    }
    if key == "." || key == ".." {
        return Err(Error::validation(
            field.to_owned(),
            format!("{field} must not be '.' or '..'"),
        ));
    }
    Ok(())
}

/// Builds Redis keys for one tenant's cached values.
#[derive(Clone, Debug)]
pub struct TenantKeyspace {
    prefix: String,
}

impl TenantKeyspace {
    pub fn new(tenant: &TenantId) -> Self {
        Self {
            prefix: format!("c:{{{tenant}}}:"),
        }
    }

    /// The Redis key holding `key`'s value; `key` must already be validated.
    pub fn key(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + key.len());
        out.push_str(&self.prefix);
        out.push_str(key);
        out
    }

    /// The Redis key of `key`'s lease (API.md §10): `l:` instead of `c:`,
    /// in the same hash slot. The accounting scripts derive it the same way.
    pub fn lease_key(&self, key: &str) -> String {
        let mut out = self.key(key);
        out.replace_range(0..1, "l");
        out
    }

    /// The Redis key of `key` in `tenant`'s namespace in one allocation, for
    /// single-key operations on the request path.
    pub fn key_of(tenant: &TenantId, key: &str) -> String {
        Self::key_of_raw(tenant.as_str(), key)
    }

    /// [`TenantKeyspace::key_of`] for a tenant id read back from storage.
    pub fn key_of_raw(tenant: &str, key: &str) -> String {
        let mut out = String::with_capacity(5 + tenant.len() + key.len());
        out.push_str("c:{");
        out.push_str(tenant);
        out.push_str("}:");
        out.push_str(key);
        out
    }

    /// The caller's key back from a Redis key of this namespace.
    pub fn strip<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        redis_key.strip_prefix(&self.prefix)
    }

    /// A `SCAN MATCH` pattern over this tenant's keys; `user_glob` is a caller's
    /// glob (its wildcards act) and is confined to the tenant because the prefix
    /// itself is escaped.
    pub fn pattern(&self, user_glob: &str) -> String {
        let mut out = escape_glob(&self.prefix);
        out.push_str(user_glob);
        out
    }

    /// A pattern matching every value of every tenant (and nothing else the
    /// service keeps in Redis: sessions, permissions, queues).
    pub fn all_tenants_pattern() -> &'static str {
        "c:{*}:*"
    }

    /// A pattern matching exactly the keys that start with `literal_prefix`.
    pub fn literal_prefix_pattern(&self, literal_prefix: &str) -> String {
        let mut out = escape_glob(&self.prefix);
        out.push_str(&escape_glob(literal_prefix));
        out.push('*');
        out
    }
}

/// Redis keys of sessions and their indexes. They live in the platform
/// namespace (one hash tag) so that a session, its user index and its tenant
/// index can change together in one script.
#[derive(Debug)]
pub struct SessionKeys;

impl SessionKeys {
    /// Prefix of every session; the session id follows it.
    pub const SESSION_PREFIX: &'static str = "s:{_platform}:";

    pub fn session(session_id: &str) -> String {
        format!("{}{session_id}", Self::SESSION_PREFIX)
    }

    /// A `SCAN` pattern over every session index (user and tenant).
    pub const INDEX_PATTERN: &'static str = "si:{_platform}:*";

    /// Prefix of a user's session index; the user id follows it.
    pub const USER_INDEX_PREFIX: &'static str = "si:{_platform}:u:";
    /// Prefix of a tenant's session index; the tenant id follows it.
    pub const TENANT_INDEX_PREFIX: &'static str = "si:{_platform}:t:";

    pub fn user_index(user_id: &str) -> String {
        format!("{}{user_id}", Self::USER_INDEX_PREFIX)
    }

    pub fn tenant_index(tenant_id: &str) -> String {
        format!("{}{tenant_id}", Self::TENANT_INDEX_PREFIX)
    }
}

/// Redis keys of cached permission results and their indexes (platform namespace).
#[derive(Debug)]
pub struct PermissionKeys;

impl PermissionKeys {
    /// Prefix of every permission entry; the caller's full permission key follows.
    pub const ENTRY_PREFIX: &'static str = "p:{_platform}:";
    /// Prefix of a user's permission index.
    pub const USER_INDEX_PREFIX: &'static str = "pi:{_platform}:u:";
    /// Prefix of a tenant's permission index.
    pub const TENANT_INDEX_PREFIX: &'static str = "pi:{_platform}:t:";

    pub fn entry(key: &str) -> String {
        format!("{}{key}", Self::ENTRY_PREFIX)
    }

    pub fn user_index(user_id: &str) -> String {
        format!("{}{user_id}", Self::USER_INDEX_PREFIX)
    }

    pub fn tenant_index(tenant_id: &str) -> String {
        format!("{}{tenant_id}", Self::TENANT_INDEX_PREFIX)
    }
}

/// Escapes Redis glob metacharacters (`* ? [ ] \`) so that `literal` matches only itself.
pub fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() + 8);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Redis's glob matcher (stringmatchlen) for the subset we produce:
    /// `*`, `?`, `[...]` and backslash escapes.
    fn redis_glob_match(pattern: &[char], text: &[char]) -> bool {
        match pattern.first() {
            None => text.is_empty(),
            Some('*') => (0..=text.len()).any(|i| redis_glob_match(&pattern[1..], &text[i..])),
            Some('?') => !text.is_empty() && redis_glob_match(&pattern[1..], &text[1..]),
            Some('\\') if pattern.len() > 1 => {
                text.first() == Some(&pattern[1]) && redis_glob_match(&pattern[2..], &text[1..])
            }
            Some(c) => text.first() == Some(c) && redis_glob_match(&pattern[1..], &text[1..]),
        }
    }

    fn matches(pattern: &str, text: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        redis_glob_match(&p, &t)
    }

    #[test]
    fn tenant_ids_follow_the_contract() {
        assert!(TenantId::parse("acme-1_b", "tenant").is_ok());
        assert!(TenantId::parse(&"a".repeat(64), "tenant").is_ok());
        for bad in [
            "",
            "_platform",
            "_x",
            "a b",
            "a:b",
            "a{b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(TenantId::parse(bad, "tenant").is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keys_follow_the_contract() {
        for good in [
            "a",
            "user:1",
            "* ? [ ] \\ / : {}",
            "  spaced ",
            "ключ",
            "...",
        ] {
            assert!(validate_key(good, "key").is_ok(), "{good:?} refused");
        }
        assert!(validate_key(&"k".repeat(512), "key").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a\nb",
            "tab\there",
            "\u{7f}",
            &"k".repeat(513),
        ] {
            assert!(validate_key(bad, "key").is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tenant_prefixes_never_overlap() {
        let t1 = TenantKeyspace::new(&TenantId::parse("t1", "t").unwrap());
        let t10 = TenantKeyspace::new(&TenantId::parse("t10", "t").unwrap());
        assert_eq!(t1.key("x"), "c:{t1}:x");
        let t1_id = TenantId::parse("t1", "t").unwrap();
        assert_eq!(TenantKeyspace::key_of(&t1_id, "x"), t1.key("x"));
        assert!(t1.strip(&t10.key("x")).is_none());
        assert!(t10.strip(&t1.key("0:x")).is_none());
        assert!(!matches(&t1.pattern("*"), &t10.key("x")));
    }

    proptest! {
        #[test]
        fn escaped_text_matches_only_itself(a in "[*?\\[\\]\\\\a-c:{}^-]{0,12}", b in "[*?\\[\\]\\\\a-c:{}^-]{0,12}") {
            let pattern = escape_glob(&a);
            prop_assert!(matches(&pattern, &a));
            prop_assert_eq!(matches(&pattern, &b), a == b);
        }

        #[test]
        fn a_tenant_pattern_never_reaches_another_tenant(
            t1 in "[a-z0-9-]{1,8}", t2 in "[a-z0-9-]{1,8}",
            glob in "[*?a-c:]{0,6}", key in "[*?a-c:{}]{1,6}",
        ) {
            prop_assume!(t1 != t2);
            let ns1 = TenantKeyspace::new(&TenantId::parse(&t1, "t").unwrap());
            let ns2 = TenantKeyspace::new(&TenantId::parse(&t2, "t").unwrap());
            prop_assert!(!matches(&ns1.pattern(&glob), &ns2.key(&key)));
        }

        #[test]
        fn literal_prefix_patterns_match_exactly_the_prefixed_keys(prefix in "[*?a-c\\[\\]]{0,5}", key in "[*?a-c\\[\\]]{1,8}") {
            let ns = TenantKeyspace::new(&TenantId::parse("acme", "t").unwrap());
            prop_assert_eq!(matches(&ns.literal_prefix_pattern(&prefix), &ns.key(&key)), key.starts_with(&prefix));
        }
    }
}
