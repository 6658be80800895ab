//! Heap allocations per request on the data plane's hot routes.
//!
//! A global allocator wrapping mimalloc (the api's) counts every allocation
//! and reallocation
//! while the api, served in this process over loopback against the local
//! Redis (`REDIS_URL`), answers a few thousand requests from a client that
//! allocates nothing itself. Run with `cargo bench -p cache-api --bench
//! allocations`; `bench/data_plane.py` prints its table beside the
//! throughput figures.

use std::future::pending;

use clap::Parser;
use stats_alloc::{Region, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: StatsAlloc<mimalloc::MiMalloc> = StatsAlloc::new(mimalloc::MiMalloc);

const TOKEN: &str = "bench-token";
const REQUESTS: u64 = 5_000;

/// A keep-alive HTTP/1.1 client that reuses one buffer: it allocates
/// nothing per request, so every count belongs to the server.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, request: &[u8]) -> u16 {
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

fn get(key: &str) -> Vec<u8> {
    format!(
        "GET /internal/cache/get/{key} HTTP/1.1\r\nHost: bench\r\nX-Service-Token: {TOKEN}\r\nX-Tenant-Id: bench\r\n\r\n"
    )
    .into_bytes()
}

fn plain(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
}

fn set(key: &str, value: &str) -> Vec<u8> {
    let body = format!(r#"{{"key":"{key}","value":"{value}","ttl":0}}"#);
    format!(
        "POST /internal/cache/set HTTP/1.1\r\nHost: bench\r\nX-Service-Token: {TOKEN}\r\nX-Tenant-Id: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Allocations and bytes per request over `REQUESTS` sends of `request`,
/// after a warm-up that fills the server's caches and pools.
async fn measure(client: &mut Client, request: &[u8], expect: u16) -> (f64, f64) {
    for _ in 0..500 {
        assert_eq!(client.send(request).await, expect);
    }
    let region = Region::new(&GLOBAL);
    for _ in 0..REQUESTS {
        client.send(request).await;
    }
    let change = region.change();
    (
        (change.allocations + change.reallocations) as f64 / REQUESTS as f64,
        change.bytes_allocated as f64 / REQUESTS as f64,
    )
}

#[tokio::main]
async fn main() {
    let mut args = vec![
        "cache-api".to_owned(),
        "--internal-service-token".into(),
        TOKEN.into(),
    ];
    args.extend(std::env::args().skip(1).filter(|a| a != "--bench"));
    let cli = cache_api::cli::Cli::parse_from(args);
    let state = cache_api::build_state(&cli.serve).expect("settings from the environment");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(cache_api::serve(listener, state, pending()));
    let stream = TcpStream::connect(addr).await.expect("the api listens");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut client = Client {
        stream,
        buf: Vec::with_capacity(64 * 1024),
    };

    let small = "x".repeat(98);
    let large = "y".repeat(10_238);
    assert_eq!(client.send(&set("alloc:small", &small)).await, 200);
    assert_eq!(client.send(&set("alloc:large", &large)).await, 200);
    let rows = [
        ("GET /internal/cache/get, 100 B", get("alloc:small"), 200),
        ("GET /internal/cache/get, 10 KB", get("alloc:large"), 200),
        ("GET /internal/cache/get, miss", get("alloc:absent"), 404),
        (
            "POST /internal/cache/set, 100 B",
            set("alloc:small", &small),
            200,
        ),
        (
            "GET /api/v1/cache/ping (no Redis, no auth)",
            plain("/api/v1/cache/ping"),
            200,
        ),
        ("GET of an unknown path (404)", plain("/nowhere"), 404),
    ];
    println!("| request | allocations / request | bytes allocated / request |");
    println!("|---|---|---|");
    for (name, request, status) in rows {
        let (allocations, bytes) = measure(&mut client, &request, status).await;
        println!("| {name} | {allocations:.1} | {bytes:.0} |");
    }
}
