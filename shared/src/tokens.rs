//! Secret tokens a caller presents (internal service tokens, metrics scrape
//! tokens): kept only as SHA-256 digests and compared in constant time, so
//! that neither content nor length leaks. HTTP-free: the binaries hand over
//! the header's text.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Accepted secret tokens; several allow rotation.
#[derive(Clone, Default)]
pub struct ServiceTokens {
    /// Shared: the admission layer is cloned per request.
    digests: Arc<[[u8; 32]]>,
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
        self.accepts_digest(&Sha256::digest(presented).into())
    }

    fn accepts_digest(&self, digest: &[u8; 32]) -> bool {
        // Compare with every token, without stopping early.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(digest)
            })
            .into()
    }
}

/// The areas of the internal plane a named service can be limited to
/// (API.md §11, `INTERNAL_SERVICE_SCOPES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// get, set, delete, mget, mset, exists, expire, events.
    Cache,
    Session,
    Permission,
    Jobs,
    /// metrics, health, collect-stats.
    Metrics,
}

impl Area {
    const ALL: [(Self, &'static str); 5] = [
        (Self::Cache, "cache"),
        (Self::Session, "session"),
        (Self::Permission, "permission"),
        (Self::Jobs, "jobs"),
        (Self::Metrics, "metrics"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("cache", |(_, name)| name)
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == text).map(|(a, _)| *a)
    }

    /// The area of an internal-plane path (`/internal/cache/…`).
    pub fn of_path(path: &str) -> Self {
        let rest = path.strip_prefix("/internal/cache/").unwrap_or(path);
        let first = rest.split('/').next().unwrap_or("");
        match first {
            "session" => Self::Session,
            "permission" => Self::Permission,
            "jobs" => Self::Jobs,
            "metrics" | "health" | "collect-stats" => Self::Metrics,
            _ => Self::Cache,
        }
    }
}

/// A named service and how many calls it made (kept across reloads).
#[derive(Debug)]
pub struct NamedService {
    name: Box<str>,
    calls: AtomicU64,
}

/// Who presented an internal token.
#[derive(Debug, Clone)]
pub enum ServiceIdentity {
    /// A token of the anonymous `INTERNAL_SERVICE_TOKEN` list.
    Anonymous,
    /// A token of `INTERNAL_SERVICE_TOKENS`, with its service.
    Named(Arc<NamedService>),
}

impl PartialEq for ServiceIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

/// The name the anonymous tokens go by in logs, metrics and records.
pub const ANONYMOUS_SERVICE: &str = "service";

impl ServiceIdentity {
    /// The name logs, metrics and records use.
    pub fn name(&self) -> &str {
        match self {
            Self::Anonymous => ANONYMOUS_SERVICE,
            Self::Named(service) => &service.name,
        }
    }
}

/// The internal plane's callers: the anonymous tokens, the named services'
/// tokens (several per name for rotation, from the environment and from a
/// file re-read on demand) and their scopes. Shared by every request and
/// replaced whole by a reload.
#[derive(Clone)]
pub struct ServiceDirectory {
    current: Arc<RwLock<Arc<Directory>>>,
    source: Arc<DirectorySource>,
    anonymous_calls: Arc<AtomicU64>,
}

struct Directory {
    anonymous: ServiceTokens,
    named: Vec<([u8; 32], Arc<NamedService>)>,
    scopes: HashMap<String, Vec<Area>>,
}

/// Where the directory comes from, kept for reloads.
struct DirectorySource {
    anonymous: String,
    named: String,
    file: Option<PathBuf>,
    scopes: String,
}

impl std::fmt::Debug for ServiceDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.snapshot();
        write!(
            f,
            "ServiceDirectory({} anonymous, {} named tokens)",
            current.anonymous.digests.len(),
            current.named.len()
        )
    }
}

/// Longest service name: it is a metrics label and a log field.
const MAX_SERVICE_NAME: usize = 64;

/// Checks `name:token,…` (`INTERNAL_SERVICE_TOKENS`, or a file of it, where
/// newlines separate entries too); returns a message naming what is wrong.
///
/// # Errors
///
/// The first malformed entry.
pub fn parse_named_tokens(list: &str) -> Result<Vec<(String, String)>, String> {
    list.split([',', '\n'])
        .map(str::trim)
        .filter(|entry| !entry.is_empty() && !entry.starts_with('#'))
        .enumerate()
        .map(|(n, entry)| {
            // Entries are named by position: a name that does not check out
            // may be a token written first, which must not be repeated.
            let position = n + 1;
            let (name, token) = entry
                .split_once(':')
                .ok_or_else(|| format!("entry {position} is not name:token"))?;
            let (name, token) = (name.trim(), token.trim());
            check_service_name(name).map_err(|why| format!("entry {position}: {why}"))?;
            if token.is_empty() {
                return Err(format!("service '{name}' has an empty token"));
            }
            Ok((name.to_owned(), token.to_owned()))
        })
        .collect()
}

/// Checks `name:area|area,…` (`INTERNAL_SERVICE_SCOPES`).
///
/// # Errors
///
/// The first malformed entry or unknown area.
pub fn parse_scopes(list: &str) -> Result<HashMap<String, Vec<Area>>, String> {
    let mut scopes: HashMap<String, Vec<Area>> = HashMap::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, areas) = entry
            .split_once(':')
            .ok_or_else(|| "each entry is name:area|area".to_owned())?;
        let name = name.trim();
        check_service_name(name)?;
        let known = scopes.entry(name.to_owned()).or_default();
        for area in areas.split('|').map(str::trim) {
            known.push(Area::parse(area).ok_or_else(|| {
                format!(
                    "unknown area '{area}' for '{name}' (cache, session, permission, jobs, metrics)"
                )
            })?);
        }
    }
    Ok(scopes)
}

/// Checks a service name; the error does not repeat it (see [`parse_named_tokens`]).
fn check_service_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "a service name is 1 to {MAX_SERVICE_NAME} of A-Z a-z 0-9 - _ ."
        ))
    }
}

impl ServiceDirectory {
    /// The directory of the anonymous list, the named list, the file of
    /// named tokens (read now) and the scopes.
    ///
    /// # Errors
    ///
    /// A message naming the variable whose value is malformed, or the file
    /// that cannot be read.
    pub fn load(
        anonymous: &str,
        named: &str,
        file: Option<PathBuf>,
        scopes: &str,
    ) -> Result<Self, String> {
        let source = DirectorySource {
            anonymous: anonymous.to_owned(),
            named: named.to_owned(),
            file,
            scopes: scopes.to_owned(),
        };
        let directory = source.read(&[])?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(directory))),
            source: Arc::new(source),
            anonymous_calls: Arc::default(),
        })
    }

    /// Reads the file of named tokens again (on SIGHUP); a file that cannot
    /// be read or parsed leaves the directory as it was.
    ///
    /// # Errors
    ///
    /// Why the reload did not happen.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = self.source.read(&self.snapshot().named)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    fn snapshot(&self) -> Arc<Directory> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn is_empty(&self) -> bool {
        let current = self.snapshot();
        current.anonymous.is_empty() && current.named.is_empty()
    }

    /// The configured service names (the closed set of metrics labels).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .snapshot()
            .named
            .iter()
            .map(|(_, service)| service.name.to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Who `presented` belongs to, compared in constant time with every
    /// configured token; `None` for an unknown token.
    pub fn identify(&self, presented: &[u8]) -> Option<ServiceIdentity> {
        let current = self.snapshot();
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found: Option<&Arc<NamedService>> = None;
        for (known, service) in &current.named {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(service);
            }
        }
        if let Some(service) = found {
            return Some(ServiceIdentity::Named(Arc::clone(service)));
        }
        current
            .anonymous
            .accepts_digest(&digest)
            .then_some(ServiceIdentity::Anonymous)
    }

    /// Whether `identity` may call `area` (a name without scopes may call all).
    pub fn allows(&self, identity: &ServiceIdentity, area: Area) -> bool {
        match identity {
            ServiceIdentity::Anonymous => true,
            ServiceIdentity::Named(service) => self
                .snapshot()
                .scopes
                .get(&*service.name)
                .is_none_or(|areas| areas.contains(&area)),
        }
    }

    /// Counts one call of `identity` (no lock: for the request path).
    pub fn count(&self, identity: &ServiceIdentity) {
        match identity {
            ServiceIdentity::Anonymous => &self.anonymous_calls,
            ServiceIdentity::Named(service) => &service.calls,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Calls so far per service name (the anonymous tokens as
    /// [`ANONYMOUS_SERVICE`]), for the metrics.
    pub fn calls(&self) -> Vec<(String, u64)> {
        let current = self.snapshot();
        let mut calls: Vec<(String, u64)> = current
            .named
            .iter()
            .map(|(_, s)| (s.name.to_string(), s.calls.load(Ordering::Relaxed)))
            .collect();
        calls.sort();
        calls.dedup_by(|a, b| a.0 == b.0);
        calls.push((
            ANONYMOUS_SERVICE.to_owned(),
            self.anonymous_calls.load(Ordering::Relaxed),
        ));
        calls
    }
}

impl DirectorySource {
    /// The directory as the source says now, keeping the services (and
    /// their call counts) of `before` that are still named.
    fn read(&self, before: &[([u8; 32], Arc<NamedService>)]) -> Result<Directory, String> {
        let mut named =
            parse_named_tokens(&self.named).map_err(|e| format!("INTERNAL_SERVICE_TOKENS: {e}"))?;
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("INTERNAL_SERVICE_TOKENS_FILE {}: {e}", path.display()))?;
            named
                .extend(parse_named_tokens(&text).map_err(|e| {
                    format!("INTERNAL_SERVICE_TOKENS_FILE {}: {e}", path.display())
                })?);
        }
        Ok(Directory {
            anonymous: ServiceTokens::from_list(&self.anonymous),
            named: {
                // One service per name, whatever its number of tokens.
                let mut services: HashMap<String, Arc<NamedService>> = before
                    .iter()
                    .map(|(_, s)| (s.name.to_string(), Arc::clone(s)))
                    .collect();
                named
                    .into_iter()
                    .map(|(name, token)| {
                        let service = services.entry(name.clone()).or_insert_with(|| {
                            Arc::new(NamedService {
                                name: name.into_boxed_str(),
                                calls: AtomicU64::new(0),
                            })
                        });
                        (Sha256::digest(token.as_bytes()).into(), Arc::clone(service))
                    })
                    .collect()
            },
            scopes: parse_scopes(&self.scopes)
                .map_err(|e| format!("INTERNAL_SERVICE_SCOPES: {e}"))?,
        })
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
    fn named_tokens_identify_their_service_and_scopes_limit_it() {
        let directory = ServiceDirectory::load(
            "anon",
            "billing:b1, billing:b2,rbac:r1",
            None,
            "rbac:permission|metrics",
        )
        .unwrap();
        let billing = directory.identify(b"b1").unwrap();
        assert_eq!(billing.name(), "billing");
        assert_eq!(directory.identify(b"b2"), Some(billing.clone()), "rotation");
        assert_eq!(
            directory.identify(b"anon"),
            Some(ServiceIdentity::Anonymous)
        );
        assert_eq!(directory.identify(b"b3"), None);
        let rbac = directory.identify(b"r1").unwrap();
        assert!(directory.allows(&rbac, Area::Permission));
        assert!(!directory.allows(&rbac, Area::Cache));
        assert!(
            directory.allows(&billing, Area::Session),
            "no entry: every area"
        );
        assert_eq!(directory.names(), ["billing", "rbac"]);
        assert_eq!(
            Area::of_path("/internal/cache/session/get/x"),
            Area::Session
        );
        assert_eq!(
            Area::of_path("/internal/cache/collect-stats"),
            Area::Metrics
        );
        assert_eq!(Area::of_path("/internal/cache/get/session"), Area::Cache);
        for (named, scopes) in [("x", ""), ("a b:t", ""), ("a:", ""), ("", "a:bogus")] {
            assert!(
                ServiceDirectory::load("", named, None, scopes).is_err(),
                "{named} {scopes}"
            );
        }
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
