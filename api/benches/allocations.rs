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
