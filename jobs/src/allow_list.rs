//! Where preloads may fetch from: only `http`/`https`, only hosts on
//! `PRELOAD_ALLOWED_HOSTS` (checked at submission; the worker checks every
//! redirect again), and URLs shown without their credentials.

use cache_shared::Error;
use url::Url;

/// Hosts a preload may fetch from: `host` (any port) or `host:port` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<(String, Option<u16>)>,
}

impl AllowList {
    /// Parses the comma-separated setting; blanks are ignored.
    pub fn parse(list: &str) -> Self {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                let entry = entry.to_ascii_lowercase();
                // `host:port`, `[v6]:port`; a bare IPv6 address has several colons.
                match entry.rsplit_once(':') {
                    Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                        match port.parse::<u16>() {
                            Ok(port) => (host.trim_matches(['[', ']']).to_owned(), Some(port)),
                            Err(_) => (entry.clone(), None),
                        }
                    }
                    _ => (entry.trim_matches(['[', ']']).to_owned(), None),
                }
            })
            .collect();
        Self { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        self.entries
            .iter()
            .any(|(h, p)| h == host && p.is_none_or(|p| p == port))
    }

    /// Checks a URL against the scheme rule and the list.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming `url`.
    pub fn check(&self, url: &str) -> Result<Url, Error> {
        let refuse = |why: String| Error::validation("url", why);
        let parsed = Url::parse(url).map_err(|e| refuse(format!("url does not parse: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(refuse("url must be http or https".into()));
        }
        if self.is_empty() {
            return Err(refuse(
                "preloading from URLs is off: PRELOAD_ALLOWED_HOSTS is empty".into(),
            ));
        }
        let (host, port) = host_port(&parsed).ok_or_else(|| refuse("url has no host".into()))?;
        if !self.allows(&host, port) {
            return Err(refuse(format!(
                "host {host}:{port} is not in PRELOAD_ALLOWED_HOSTS"
            )));
        }
        Ok(parsed)
    }
}

/// The host (lowercase, without IPv6 brackets) and port a URL names.
pub fn host_port(url: &Url) -> Option<(String, u16)> {
    let host = url
        .host_str()?
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    Some((host, url.port_or_known_default()?))
}

/// `url` as it may be shown (in errors, job records): without credentials.
pub fn redacted(url: &Url) -> Url {
    let mut shown = url.clone();
    // Only fails for URLs that cannot have credentials at all.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown
}

/// The text of a URL as callers sent it, without credentials (kept as
/// sent when it does not parse: such a URL was refused anyway).
pub fn redact(url: &str) -> String {
    Url::parse(url).map_or_else(|_| url.to_owned(), |u| redacted(&u).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_after_url_parsing() {
        let list =
            AllowList::parse("data.example.com, 127.0.0.1:8080 ,[::1]:9000,Files.Example.org");
        assert!(list.check("https://data.example.com/x.ndjson").is_ok());
        assert!(list.check("http://DATA.example.com:9999/x").is_ok());
        assert!(list.check("http://user@data.example.com/x").is_ok());
        assert!(
            list.check("http://127.1:8080/x").is_ok(),
            "127.1 is 127.0.0.1"
        );
        assert!(
            list.check("http://127.0.0.1:8081/x").is_err(),
            "port not listed"
        );
        assert!(list.check("http://[::1]:9000/x").is_ok());
        assert!(list.check("http://files.example.org/x").is_ok());
        assert!(list.check("http://evil.example.com/x").is_err());
        assert!(list.check("http://data.example.com.evil.net/x").is_err());
        assert!(list.check("ftp://data.example.com/x").is_err());
        assert!(list.check("file:///etc/passwd").is_err());
        assert!(
            AllowList::parse(" , ")
                .check("http://data.example.com/")
                .is_err()
        );
    }

    #[test]
    fn credentials_are_never_shown() {
        assert_eq!(
            redact("https://user:secret@data.example.com/x?y=1"),
            "https://data.example.com/x?y=1"
        );
        assert_eq!(redact("not a url"), "not a url");
    }
}
