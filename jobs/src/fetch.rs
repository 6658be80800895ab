//! Fetching preload sources from URLs without opening a door into the
//! private network: only `http`/`https`, only hosts on `PRELOAD_ALLOWED_HOSTS`,
//! every redirect re-checked (at most 3), a domain name may only resolve to
//! public addresses (loopback, private and link-local ones are reachable only
//! through an IP literal or `localhost` listed as such), the connection is
//! pinned to the checked address, and size and time are capped.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cache_shared::Error;
use futures::StreamExt;
use reqwest::Url;

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 3;

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

fn host_port(url: &Url) -> Option<(String, u16)> {
    let host = url
        .host_str()?
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    Some((host, url.port_or_known_default()?))
}

/// Every address that is not plainly public: loopback, private, link-local,
/// shared (CGNAT), documentation, benchmarking, reserved, multicast and the
/// IPv6 ranges that embed or tunnel to IPv4 (IANA special-purpose registries).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || a == 0 // 0/8 "this network"
                || a >= 240 // 240/4 reserved, broadcast included
                || a == 100 && (b & 0xc0) == 64 // 100.64/10 shared
                || a == 192 && b == 0 && c == 0 // 192.0.0/24 protocol assignments
                || a == 192 && b == 0 && c == 2 // 192.0.2/24 documentation
                || a == 198 && (b & 0xfe) == 18 // 198.18/15 benchmarking
                || a == 198 && b == 51 && c == 100 // 198.51.100/24 documentation
                || a == 203 && b == 0 && c == 113 // 203.0.113/24 documentation
                || a == 192 && b == 88 && c == 99 // 192.88.99/24 6to4 relay
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local
                || s[..6] == [0; 6] // ::a.b.c.d (IPv4-compatible)
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // 64:ff9b::/96 NAT64
                || s[..3] == [0x64, 0xff9b, 1] // 64:ff9b:1::/48 local NAT64
                || s[0] == 0x2002 // 2002::/16 6to4
                || s[0] == 0x2001 && s[1] < 0x200 // 2001::/23 protocol assignments (Teredo)
                || s[0] == 0x2001 && s[1] == 0xdb8 // 2001:db8::/32 documentation
                || s[..4] == [0x100, 0, 0, 0] // 100::/64 discard
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
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

/// Resolves an allowed URL's host to the address to connect to.
async fn resolve(url: &Url, host: &str, port: u16) -> Result<SocketAddr, String> {
    let literal = host.parse::<IpAddr>().ok();
    let addrs: Vec<SocketAddr> = match literal {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    let named_internal_allowed = literal.is_some() || host == "localhost";
    let addr = addrs
        .into_iter()
        .find(|a| named_internal_allowed || !is_internal(a.ip()))
        .ok_or_else(|| format!("{} resolves only to internal addresses", redacted(url)))?;
    Ok(addr)
}

/// Caps of one download.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// Downloads `url` line by line (newline-delimited), calling `on_line` for
/// each complete line.
///
/// # Errors
///
/// A message saying why the download was refused or failed (permanent).
pub async fn fetch_lines(
    allow: &AllowList,
    url: &str,
    limits: FetchLimits,
    mut on_line: impl FnMut(&[u8]),
) -> Result<(), String> {
    let work = async {
        let mut url = allow.check(url).map_err(|e| e.to_string())?;
        let mut hops = 0;
        let response = loop {
            let (host, port) = host_port(&url).ok_or("url has no host")?;
            let addr = resolve(&url, &host, port).await?;
            let client = reqwest::Client::builder()
                // HTTP(S)_PROXY and the like must not route around the checks.
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(&host, addr)
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| format!("http client: {e}"))?;
            let response = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| format!("fetching {}: {}", redacted(&url), e.without_url()))?;
            if !response.status().is_redirection() {
                break response;
            }
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(format!("more than {MAX_REDIRECTS} redirects"));
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or("redirect without a Location")?;
            let next = url
                .join(location)
                .map_err(|e| format!("bad redirect target: {e}"))?;
            url = allow
                .check(next.as_str())
                .map_err(|e| format!("redirect refused: {e}"))?;
        };
        if !response.status().is_success() {
            return Err(format!("{} answered {}", redacted(&url), response.status()));
        }
        let mut seen: u64 = 0;
        let mut pending: Vec<u8> = Vec::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| format!("reading {}: {}", redacted(&url), e.without_url()))?;
            seen += chunk.len() as u64;
            if seen > limits.max_bytes {
                return Err(format!(
                    "{} is larger than {} bytes",
                    redacted(&url),
                    limits.max_bytes
                ));
            }
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                on_line(&pending[..end]);
                pending.drain(..=end);
            }
        }
        if !pending.is_empty() {
            on_line(&pending);
        }
        Ok(())
    };
    tokio::time::timeout(limits.timeout, work)
        .await
        .map_err(|_| format!("download took longer than {:?}", limits.timeout))?
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

    #[test]
    fn internal_ranges_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::1",
            "2002:a00:1::",
            "2002:808:808::",
            "::10.0.0.1",
            "::8.8.8.8",
            "fec0::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
            "ff02::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "198.20.0.1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
