//! Server behaviour: request ids, health, slow clients, graceful shutdown.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{assert_error, settings, spawn_app, spawn_app_with};

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let echoed = app
        .client
        .get(app.url("/health"))
        .header("X-Request-Id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-123");
    let fresh = app.client.get(app.url("/nope")).send().await.unwrap();
    let id = fresh.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 26, "a ULID: {id}");
    let other = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_ne!(other.headers()["x-request-id"].to_str().unwrap(), id);
}

#[tokio::test]
async fn health_ready_and_ping_report_the_dependencies() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert!(matches!(body["status"].as_str(), Some("ok" | "degraded")));
    assert_eq!(body["checks"]["redis"]["status"], "up");
    assert!(body["checks"]["redis"]["latencyMs"].as_f64().is_some());
    assert_eq!(body["checks"]["postgres"]["status"], "up");
    assert!(body["queue"]["waiting"].is_u64(), "{body}");
    let same: Value = app
        .client
        .get(app.url("/api/v1/cache/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(same["checks"]["redis"]["status"], "up");

    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let ping: Value = app
        .client
        .get(app.url("/api/v1/cache/ping"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ping["pong"], true);
    assert!(ping["redisLatencyMs"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn ready_is_503_without_postgres() {
    let app = spawn_app_with(settings(&[
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
        "--database-timeout-ms",
        "300",
    ]))
    .await;
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_error(ready, 503, "STORE_UNAVAILABLE").await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["postgres"]["status"], "down");
}

#[tokio::test]
async fn the_metrics_report_counts_hits_and_misses() {
    let app = spawn_app().await;
    app.set("h", json!(1)).await;
    app.get("h").await;
    app.get("h").await;
    app.get("missing").await;
    let body: Value = app
        .internal(reqwest::Method::GET, "/internal/cache/metrics")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["hits"], 2);
    assert_eq!(body["misses"], 1);
    let rate = body["hitRate"].as_f64().unwrap();
    assert!((rate - 200.0 / 3.0).abs() < 1e-9, "{rate}");
    assert!(body["memoryUsage"].as_f64().unwrap() > 0.0);
    assert!(body["connectionCount"].as_u64().unwrap() >= 1);
    assert!(body["operationsPerSecond"].as_f64().is_some());
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app_with(settings(&["--header-read-timeout-ms", "300"])).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The server must close the connection on its own; a generous bound
    // fails the test instead of hanging if it never does.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "connection still open");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let app = spawn_app().await;
    let addr = app.addr;
    let body = json!({"key": "during-shutdown", "value": "x".repeat(1000)}).to_string();
    let (head, tail) = body.as_bytes().split_at(body.len() / 2);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /internal/cache/set HTTP/1.1\r\nHost: x\r\nX-Service-Token: {}\r\n\
         X-Tenant-Id: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        crate::helpers::TOKEN_A,
        app.tenant,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // `100 Continue` comes once the handler reads the body: from then on
    // the request is in flight, not waiting in the listen backlog.
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
        .await
        .expect("the server asked for the body")
        .unwrap();
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue"), "{interim:?}");
    stream.write_all(head).await.unwrap();

    // Half a request is in flight; begin the shutdown and wait until the
    // server has stopped accepting new connections.
    let stopping = tokio::spawn(app.stop());
    crate::helpers::wait_until(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;

    stream.write_all(tail).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the server answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(r#"{"key":"during-shutdown","ttl":3600}"#),
        "{answer}"
    );
    stopping.await.unwrap();
}
