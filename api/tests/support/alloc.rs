//! Counting a request's heap allocations: the api served in-process over
//! loopback, and a client that allocates nothing per request, so every
//! allocation counted while it runs belongs to the server. Shared by
//! `benches/allocations.rs` and `tests/allocations.rs`, each of which
//! installs the counting allocator as its global one.

use std::future::pending;

use clap::Parser;
use stats_alloc::Stats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TOKEN: &str = "bench-token";

/// A keep-alive HTTP/1.1 client that reuses one buffer: it allocates
/// nothing per request, so every count belongs to the server.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn send(&mut self, request: &[u8]) -> u16 {
        self.stream
            .write_all(request)
            .await
            .expect("the api hung up");
        self.buf.clear();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = &self.buf[..end];
                let length = content_length(head);
                if self.buf.len() >= end + 4 + length {
                    let status = std::str::from_utf8(&head[9..12]).expect("a status line");
                    return status.parse().expect("a status code");
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await.expect("the api hung up");
            assert!(n > 0, "the api closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .find_map(|line| {
            let line = std::str::from_utf8(line).ok()?.trim();
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

pub fn get(key: &str) -> Vec<u8> {
    format!(
        "GET /internal/cache/get/{key} HTTP/1.1\r\nHost: bench\r\nX-Service-Token: {TOKEN}\r\nX-Tenant-Id: bench\r\n\r\n"
    )
    .into_bytes()
}

pub fn plain(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
}

pub fn set(key: &str, value: &str) -> Vec<u8> {
    let body = format!(r#"{{"key":"{key}","value":"{value}","ttl":0}}"#);
    format!(
        "POST /internal/cache/set HTTP/1.1\r\nHost: bench\r\nX-Service-Token: {TOKEN}\r\nX-Tenant-Id: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Allocations and bytes per request over `requests` sends of `request`,
/// after a warm-up that fills the server's caches and pools; `stats` reads
/// the counting allocator.
pub async fn measure(
    client: &mut Client,
    request: &[u8],
    expect: u16,
    requests: u64,
    stats: impl Fn() -> Stats,
) -> (f64, f64) {
    for _ in 0..500 {
        assert_eq!(client.send(request).await, expect);
    }
    let before = stats();
    for _ in 0..requests {
        client.send(request).await;
    }
    let after = stats();
    let allocations =
        (after.allocations + after.reallocations) - (before.allocations + before.reallocations);
    let bytes = after.bytes_allocated - before.bytes_allocated;
    (
        allocations as f64 / requests as f64,
        bytes as f64 / requests as f64,
    )
}

/// Serves the api (settings from the environment, plus `args`) on a
/// loopback port of this process and connects a client to it.
pub async fn start(args: &[&str]) -> Client {
    let mut all = vec!["cache-api", "--internal-service-token", TOKEN];
    all.extend_from_slice(args);
    let cli = cache_api::cli::Cli::parse_from(all);
    let state = cache_api::build_state(&cli.serve).expect("settings from the environment");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(cache_api::serve(listener, state, pending()));
    let stream = TcpStream::connect(addr).await.expect("the api listens");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    Client {
        stream,
        buf: Vec::with_capacity(64 * 1024),
    }
}
