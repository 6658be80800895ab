//! Fetching preload sources from URLs without opening a door into the
//! private network: only `http`/`https`, only hosts on `PRELOAD_ALLOWED_HOSTS`,
//! every redirect re-checked (at most 3), a domain name may only resolve to
//! public addresses (loopback, private and link-local ones are reachable only
//! through an IP literal or `localhost` listed as such), the connection is
//! pinned to the checked address, and size and time are capped.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cache_jobs::allow_list::{AllowList, host_port, redacted};
use futures::StreamExt;
use reqwest::Url;

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 3;

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
