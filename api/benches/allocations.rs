//! Heap allocations per request on the data plane's hot routes.
//!
//! A global allocator wrapping mimalloc (the api's) counts every allocation
//! and reallocation while the api, served in this process over loopback
//! against the local Redis (`REDIS_URL`), answers a few thousand requests
//! from a client that allocates nothing itself. Run with `cargo bench -p
//! cache-api --bench allocations`; `bench/data_plane.py` prints its table
//! beside the throughput figures.

use stats_alloc::StatsAlloc;

#[path = "../tests/support/alloc.rs"]
mod counting;

use counting::{get, measure, plain, set, start};

#[global_allocator]
static GLOBAL: StatsAlloc<mimalloc::MiMalloc> = StatsAlloc::new(mimalloc::MiMalloc);

const REQUESTS: u64 = 5_000;

#[tokio::main]
async fn main() {
    let mut client = start(&[]).await;
    let small = "x".repeat(98);
    let large = "y".repeat(10_238);
    let noise = incompressible(10_238);
    assert_eq!(client.send(&set("alloc:small", &small)).await, 200);
    assert_eq!(client.send(&set("alloc:large", &large)).await, 200);
    assert_eq!(client.send(&set("alloc:noise", &noise)).await, 200);
    let rows = [
        ("GET /internal/cache/get, 100 B", get("alloc:small"), 200),
        (
            "GET /internal/cache/get, 10 KB stored with LZ4",
            get("alloc:large"),
            200,
        ),
        (
            "GET /internal/cache/get, 10 KB stored as it is",
            get("alloc:noise"),
            200,
        ),
        ("GET /internal/cache/get, miss", get("alloc:absent"), 404),
        (
            "POST /internal/cache/set, 100 B",
            set("alloc:small", &small),
            200,
        ),
        (
            "GET /api/v1/cache/ping (no auth)",
            plain("/api/v1/cache/ping"),
            200,
        ),
        ("GET of an unknown path (404)", plain("/nowhere"), 404),
    ];
    println!("| request | allocations / request | bytes allocated / request |");
    println!("|---|---|---|");
    for (name, request, status) in rows {
        let (allocations, bytes) =
            measure(&mut client, &request, status, REQUESTS, || GLOBAL.stats()).await;
        println!("| {name} | {allocations:.1} | {bytes:.0} |");
    }
}

/// Letters and digits LZ4 cannot shrink, so the value is stored as it is
/// and its answer splices the bytes read from Redis.
fn incompressible(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(ALPHABET[(state % ALPHABET.len() as u64) as usize])
        })
        .collect()
}
