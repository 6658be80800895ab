//! Namespaces (API.md §10): key prefixes of a tenant, each with its caching
//! strategy (default TTL and its jitter, compression, a key limit, access
//! pattern). Every tenant starts with the service design's five; a tenant's
//! first change copies them into its own rows, which from then on are all
//! it has. Each process keeps a [`NamespaceBook`] reloaded every few seconds,
//! so a change made through any api instance applies in all of them.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::keys::validate_key;
use crate::reloaded::{Reloaded, Ticket};
use crate::ttl::Expiry;

/// Most namespaces one tenant may have: a lookup per request walks them.
pub const MAX_NAMESPACES: usize = 100;

/// Longest prefix, matching the `varchar(255)` column.
pub const MAX_PREFIX_BYTES: usize = 255;

/// Largest `ttlJitter`: beyond ±50% a TTL says little.
pub const MAX_JITTER: f64 = 0.5;

/// TTL of a negative entry written without one, in seconds.
pub const NEGATIVE_DEFAULT_TTL: u32 = 60;

/// What a write does when it would take a namespace over `maxKeys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    /// Refuse the write (`507`).
    Reject,
    /// Accept it; the least recently used keys are trimmed in the background.
    EvictLru,
    /// Accept it; the least frequently used keys are trimmed in the background.
    EvictLfu,
}

impl OverLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::EvictLru => "evict_lru",
            Self::EvictLfu => "evict_lfu",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Reject, Self::EvictLru, Self::EvictLfu]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// Which operations the public plane allows on a namespace's keys (the
/// internal plane, the platform's own services, may do both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    ReadWrite,
    ReadOnly,
    WriteOnly,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "read_write",
            Self::ReadOnly => "read_only",
            Self::WriteOnly => "write_only",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::ReadWrite, Self::ReadOnly, Self::WriteOnly]
            .into_iter()
            .find(|a| a.as_str() == text)
    }

    /// Whether a public caller may read (`write == false`) or write.
    pub fn allows(self, write: bool) -> bool {
        match self {
            Self::ReadWrite => true,
            Self::ReadOnly => !write,
            Self::WriteOnly => write,
        }
    }
}

/// One namespace and its strategy.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    /// The key prefix; a key takes the namespace of its longest matching prefix.
    pub prefix: String,
    /// Default TTL in seconds of keys written without one (`0`: no expiry).
    pub ttl: u32,
    /// Each default TTL is drawn within ±this share of `ttl`.
    pub ttl_jitter: f64,
    /// Whether values are LZ4-compressed (when longer than `compressionMinBytes` and smaller so).
    pub compression: bool,
    pub compression_min_bytes: u64,
    /// Keys the namespace may hold (`0`: unlimited).
    pub max_keys: u64,
    pub over_limit: OverLimit,
    pub access: Access,
    pub near_cache: bool,
    pub encrypted: bool,
}

impl Namespace {
    fn design(prefix: &str, ttl: u32, max_keys: u64, over_limit: OverLimit, min: u64) -> Self {
        Self {
            prefix: prefix.to_owned(),
            ttl,
            ttl_jitter: 0.1,
            compression: true,
            compression_min_bytes: min,
            max_keys,
            over_limit,
            access: Access::ReadWrite,
            near_cache: false,
            encrypted: false,
        }
    }

    /// The namespaces every tenant starts with (the service design's
    /// strategies), compressing above `compression_min_bytes`.
    pub fn defaults(compression_min_bytes: u64) -> Vec<Self> {
        let min = compression_min_bytes;
        vec![
            Self::design("session:", 900, 10_000, OverLimit::EvictLru, min),
            Self::design("permission:", 300, 0, OverLimit::EvictLru, min),
            Self::design("user:", 3600, 5_000, OverLimit::EvictLru, min),
            Self::design("api:", 300, 20_000, OverLimit::EvictLfu, min),
            Self::design("config:", 1800, 1_000, OverLimit::EvictLru, min),
        ]
    }

    /// A new namespace from a caller's fields; the ones not given take the
    /// defaults of a namespace nobody configured (`default_ttl`, ±10%,
    /// compression above `compression_min_bytes`, no key limit).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming the first bad field.
    pub fn create(
        fields: &NamespaceFields,
        default_ttl: Expiry,
        compression_min_bytes: u64,
    ) -> Result<Self, Error> {
        let prefix = fields
            .prefix
            .clone()
            .ok_or_else(|| Error::validation("prefix", "prefix is required"))?;
        let base = Self {
            prefix,
            ttl: default_ttl.seconds().unwrap_or(0),
            ..Self::design("", 0, 0, OverLimit::EvictLru, compression_min_bytes)
        };
        base.changed(fields)
    }

    /// Refuses `encrypted: true` without data keys to seal with.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming `encrypted`.
    pub fn check_sealable(
        fields: &NamespaceFields,
        keys: &crate::sealing::Keyring,
    ) -> Result<(), Error> {
        if fields.encrypted == Some(true) && keys.is_empty() {
            return Err(Error::validation(
                "encrypted",
                "encrypted namespaces need DATA_ENCRYPTION_KEYS, which this service is not \
                 configured with",
            ));
        }
        Ok(())
    }

    /// This namespace with a caller's fields applied (absent ones kept).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming the first bad field, including a
    /// `prefix` that differs from this one's.
    pub fn changed(&self, fields: &NamespaceFields) -> Result<Self, Error> {
        if let Some(prefix) = &fields.prefix
            && *prefix != self.prefix
            && !self.prefix.is_empty()
        {
            return Err(Error::validation(
                "prefix",
                "prefix cannot change: create the new namespace and delete this one",
            ));
        }
        let next = Self {
            prefix: fields.prefix.clone().unwrap_or_else(|| self.prefix.clone()),
            ttl: fields.ttl.map_or(self.ttl, |t| t.seconds().unwrap_or(0)),
            ttl_jitter: fields.ttl_jitter.unwrap_or(self.ttl_jitter),
            compression: fields.compression.unwrap_or(self.compression),
            compression_min_bytes: fields
                .compression_min_bytes
                .unwrap_or(self.compression_min_bytes),
            max_keys: fields.max_keys.unwrap_or(self.max_keys),
            over_limit: fields.over_limit.unwrap_or(self.over_limit),
            access: fields.access.unwrap_or(self.access),
            near_cache: fields.near_cache.unwrap_or(self.near_cache),
            encrypted: fields.encrypted.unwrap_or(self.encrypted),
        };
        next.validate()?;
        Ok(next)
    }

    fn validate(&self) -> Result<(), Error> {
        validate_prefix(&self.prefix)?;
        if !self.ttl_jitter.is_finite() || !(0.0..=MAX_JITTER).contains(&self.ttl_jitter) {
            return Err(Error::validation(
                "ttlJitter",
                format!("ttlJitter must be a share from 0 to {MAX_JITTER} (0.1 is ±10%)"),
            ));
        }
        if self.compression_min_bytes > u64::from(u32::MAX) {
            return Err(Error::validation(
                "compressionMinBytes",
                "compressionMinBytes must be from 0 to 4294967295",
            ));
        }
        if self.max_keys > i64::MAX as u64 {
            return Err(Error::validation("maxKeys", "maxKeys is too large"));
        }
        Ok(())
    }

    /// The expiry of a write of `key` in this namespace (`None`: no
    /// namespace) that asked for `asked` (or nothing), in milliseconds (`0`:
    /// none). An asked TTL is kept exactly; otherwise the namespace's TTL
    /// moved within its jitter unless `exact`; outside every namespace,
    /// `default` as is.
    ///
    /// The jitter is a fixed function of the key: keys written together
    /// spread over the whole ±share (no avalanche), while each key keeps
    /// the same offset when it is written again, so its expiry stays in
    /// the same accounting bucket and a rewrite costs no more than without
    /// jitter (see [`crate::quota`]).
    pub fn expiry_ms(
        namespace: Option<&Self>,
        key: &str,
        asked: Option<Expiry>,
        exact: bool,
        default: Expiry,
    ) -> u64 {
        let seconds = |e: Expiry| e.seconds().map_or(0, |s| u64::from(s) * 1000);
        match (asked, namespace) {
            (Some(asked), _) => seconds(asked),
            (None, None) => seconds(default),
            (None, Some(ns)) if ns.ttl == 0 => 0,
            (None, Some(ns)) => {
                let base = u64::from(ns.ttl) * 1000;
                if exact || ns.ttl_jitter == 0.0 {
                    return base;
                }
                jittered(base, ns.ttl_jitter, spread_of(key))
            }
        }
    }

    /// Bytes above which this namespace's values are compressed (`None`: never).
    pub fn compress_above(&self) -> Option<usize> {
        self.compression
            .then(|| usize::try_from(self.compression_min_bytes).unwrap_or(usize::MAX))
    }
}

/// Where `key` falls in `[-1, 1)`: FNV-1a of its bytes, finished with
/// SplitMix64 so that keys differing in their last byte spread too.
fn spread_of(key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    #[allow(clippy::cast_precision_loss)]
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

/// `base` milliseconds moved by `share × base × u` for `u` in `[-1, 1]`,
/// never below one second.
fn jittered(base: u64, share: f64, u: f64) -> u64 {
    #[allow(clippy::cast_precision_loss)] // TTLs in ms stay far below 2^53
    let moved = base as f64 * (1.0 + share * u.clamp(-1.0, 1.0));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // positive, bounded
    let ms = moved.round() as u64;
    ms.max(1000)
}

/// # Errors
///
/// [`Error::Validation`] for a prefix that could not be a key's beginning.
pub fn validate_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.len() > MAX_PREFIX_BYTES {
        return Err(Error::validation(
            "prefix",
            format!("prefix must be 1 to {MAX_PREFIX_BYTES} bytes of UTF-8"),
        ));
    }
    validate_key(prefix, "prefix")
}

/// A caller's fields of a namespace: every one optional (a creation takes
/// defaults for the absent ones, a change keeps them).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceFields {
    #[schema(min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f]+$")]
    pub prefix: Option<String>,
    #[schema(value_type = Option<u32>, maximum = 31536000)]
    pub ttl: Option<Expiry>,
    #[schema(minimum = 0.0, maximum = 0.5)]
    pub ttl_jitter: Option<f64>,
    pub compression: Option<bool>,
    #[schema(maximum = 4294967295_u64)]
    pub compression_min_bytes: Option<u64>,
    pub max_keys: Option<u64>,
    pub over_limit: Option<OverLimit>,
    pub access: Option<Access>,
    pub near_cache: Option<bool>,
    pub encrypted: Option<bool>,
}

/// One tenant's namespaces, longest prefix first (the first match wins).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceSet {
    ordered: Vec<Arc<Namespace>>,
}

impl NamespaceSet {
    pub fn new(namespaces: impl IntoIterator<Item = Namespace>) -> Self {
        let mut ordered: Vec<Arc<Namespace>> = namespaces.into_iter().map(Arc::new).collect();
        ordered.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| a.prefix.cmp(&b.prefix))
        });
        Self { ordered }
    }

    /// The namespace of `key`: its longest matching prefix.
    pub fn find(&self, key: &str) -> Option<&Arc<Namespace>> {
        self.ordered.iter().find(|ns| key.starts_with(&ns.prefix))
    }

    pub fn get(&self, prefix: &str) -> Option<&Arc<Namespace>> {
        self.ordered.iter().find(|ns| ns.prefix == prefix)
    }

    /// In prefix order (as listed to callers).
    pub fn listed(&self) -> Vec<Namespace> {
        let mut all: Vec<Namespace> = self.ordered.iter().map(|ns| (**ns).clone()).collect();
        all.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        all
    }

    pub fn len(&self) -> usize {
        self.ordered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ordered.is_empty()
    }
}

/// Every tenant's namespaces as this process knows them: the tenants that
/// changed theirs, and the defaults for all others.
#[derive(Debug)]
pub struct NamespaceBook {
    defaults: Arc<NamespaceSet>,
    tenants: Reloaded<HashMap<String, Arc<NamespaceSet>>>,
}

impl NamespaceBook {
    pub fn new(defaults: Vec<Namespace>) -> Self {
        Self {
            defaults: Arc::new(NamespaceSet::new(defaults)),
            tenants: Reloaded::new(HashMap::new()),
        }
    }

    /// The namespaces a tenant that changed nothing has.
    pub fn defaults(&self) -> &NamespaceSet {
        &self.defaults
    }

    /// `tenant`'s namespaces now.
    pub fn of(&self, tenant: &str) -> Arc<NamespaceSet> {
        self.tenants
            .with(|tenants| Arc::clone(tenants.get(tenant).unwrap_or(&self.defaults)))
    }

    /// The namespace of `tenant`'s `key`, if any.
    pub fn resolve(&self, tenant: &str, key: &str) -> Option<Arc<Namespace>> {
        self.with_namespace(tenant, key, Arc::clone)
    }

    /// `f` of the prefix of `tenant`'s `key`'s namespace, if it has one
    /// (no reference counting: for the read path).
    pub fn with_prefix<R>(&self, tenant: &str, key: &str, f: impl FnOnce(&str) -> R) -> Option<R> {
        self.with_namespace(tenant, key, |ns| f(&ns.prefix))
    }

    /// Whether `tenant`'s `key` is in a namespace kept in the near cache.
    pub fn is_near_cached(&self, tenant: &str, key: &str) -> bool {
        self.with_namespace(tenant, key, |ns| ns.near_cache)
            .unwrap_or(false)
    }

    /// Every (tenant, prefix) kept in the near cache (the design's defaults
    /// never are).
    pub fn near_cached(&self) -> Vec<(String, String)> {
        self.tenants.with(|tenants| {
            tenants
                .iter()
                .flat_map(|(tenant, set)| {
                    set.ordered
                        .iter()
                        .filter(|ns| ns.near_cache)
                        .map(move |ns| (tenant.clone(), ns.prefix.clone()))
                })
                .collect()
        })
    }

    /// `f` of `tenant`'s `key`'s namespace, looked up under the book's lock.
    fn with_namespace<R>(
        &self,
        tenant: &str,
        key: &str,
        f: impl FnOnce(&Arc<Namespace>) -> R,
    ) -> Option<R> {
        self.tenants.with(|tenants| {
            let ns = tenants.get(tenant).unwrap_or(&self.defaults).find(key)?;
            Some(f(ns))
        })
    }

    /// Taken before a full reload reads PostgreSQL.
    pub fn reload_ticket(&self) -> Ticket {
        self.tenants.ticket()
    }

    /// Replaces what the book knows with a full reload read after `ticket`
    /// (dropped if a newer one or a change on this instance came first).
    pub fn replace(&self, ticket: Ticket, tenants: HashMap<String, NamespaceSet>) {
        let fresh = tenants
            .into_iter()
            .map(|(tenant, set)| (tenant, Arc::new(set)))
            .collect();
        self.tenants.replace(ticket, fresh);
    }

    /// Records one tenant's namespaces at once, before the next reload.
    pub fn set(&self, tenant: &str, set: NamespaceSet) {
        self.tenants.update(|tenants| {
            tenants.insert(tenant.to_owned(), Arc::new(set));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(prefix: &str) -> Namespace {
        Namespace::design(prefix, 60, 0, OverLimit::Reject, 1024)
    }

    #[test]
    fn the_longest_matching_prefix_wins() {
        let set = NamespaceSet::new([ns("user:"), ns("user:admin:"), ns("u")]);
        assert_eq!(set.find("user:admin:1").unwrap().prefix, "user:admin:");
        assert_eq!(set.find("user:1").unwrap().prefix, "user:");
        assert_eq!(set.find("us").unwrap().prefix, "u");
        assert!(set.find("session:1").is_none());
        let book = NamespaceBook::new(Namespace::defaults(1024));
        assert_eq!(book.resolve("acme", "session:9").unwrap().ttl, 900);
        book.set("acme", NamespaceSet::new([ns("session:")]));
        assert_eq!(book.resolve("acme", "session:9").unwrap().ttl, 60);
        assert!(book.resolve("acme", "user:1").is_none());
        assert_eq!(book.resolve("other", "user:1").unwrap().ttl, 3600);
    }

    #[test]
    fn jitter_stays_within_its_share_and_an_exact_or_asked_ttl_has_none() {
        assert_eq!(jittered(100_000, 0.1, -1.0), 90_000);
        assert_eq!(jittered(100_000, 0.1, 1.0), 110_000);
        assert_eq!(jittered(1000, 0.5, -1.0), 1000);
        let user = Namespace::design("user:", 100, 0, OverLimit::Reject, 0);
        let default = Expiry::Seconds(7);
        let expiry =
            |key: &str, asked, exact| Namespace::expiry_ms(Some(&user), key, asked, exact, default);
        let drawn: Vec<u64> = (0..2000)
            .map(|i| expiry(&format!("user:{i}"), None, false))
            .collect();
        assert!(drawn.iter().all(|ms| (90_000..=110_000).contains(ms)));
        // Spread over the whole range: every tenth of it is used.
        let mut tenths = [0u32; 10];
        for ms in &drawn {
            tenths[usize::try_from((ms - 90_000) / 2001).unwrap()] += 1;
        }
        assert!(tenths.iter().all(|n| *n > 100), "uneven spread: {tenths:?}");
        assert_eq!(
            expiry("user:7", None, false),
            drawn[7],
            "a key keeps its offset"
        );
        assert_eq!(expiry("user:7", None, true), 100_000);
        assert_eq!(expiry("user:7", Some(Expiry::Seconds(5)), false), 5000);
        assert_eq!(Namespace::expiry_ms(None, "x", None, false, default), 7000);
        assert_eq!(expiry("user:7", Some(Expiry::Never), false), 0);
    }

    #[test]
    fn fields_are_validated_and_a_change_keeps_what_it_does_not_name() {
        let fields: NamespaceFields =
            serde_json::from_str(r#"{"prefix":"cart:","maxKeys":10,"overLimit":"reject"}"#)
                .unwrap();
        let cart = Namespace::create(&fields, Expiry::Seconds(3600), 1024).unwrap();
        assert_eq!((cart.ttl, cart.max_keys, cart.ttl_jitter), (3600, 10, 0.1));
        let change: NamespaceFields = serde_json::from_str(r#"{"ttl":0}"#).unwrap();
        let changed = cart.changed(&change).unwrap();
        assert_eq!((changed.ttl, changed.max_keys), (0, 10));
        for bad in [r#"{"ttlJitter":0.9}"#, r#"{"prefix":"other:"}"#] {
            let fields: NamespaceFields = serde_json::from_str(bad).unwrap();
            assert!(cart.changed(&fields).is_err(), "{bad} accepted");
        }
        assert!(serde_json::from_str::<NamespaceFields>(r#"{"overLimit":"fifo"}"#).is_err());
        assert!(serde_json::from_str::<NamespaceFields>(r#"{"ttl":-1}"#).is_err());
        assert!(Namespace::create(&NamespaceFields::default(), Expiry::Never, 0).is_err());
    }
}
