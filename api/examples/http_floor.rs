//! The machine's HTTP ceiling for `bench/data_plane.py`: the same runtime,
//! allocator and server stack as `cache-api`, answering every GET with a
//! fixed 100-byte JSON body and doing nothing else. What the api does on a
//! request is measured against this.
//!
//! `cargo run --release --example http_floor -- 127.0.0.1:3099`

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 100 bytes, the size of the benchmark's cached value.
const BODY: &str = r#"{"key":"bench:value","value":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","ttl":-1}"#;

async fn answer() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

/// Accepts and serves connections as `cache_api::serve` does (hyper's
/// HTTP/1 builder, `TCP_NODELAY`, one task per connection).
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3099".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let app = Router::new().fallback(get(answer));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut builder = http1::Builder::new();
    builder.writev(false);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(connection);
    }
}
