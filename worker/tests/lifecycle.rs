//! The worker starts, reports itself alive where `/health` looks, and signs
//! off when told to stop.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cache_worker::Cli;
use clap::Parser;
use deadpool_redis::redis::{self, AsyncCommands};

async fn heartbeats_with_prefix(prefix: &str) -> Vec<String> {
    let settings = Cli::try_parse_from(["cache-worker"]).unwrap().settings();
    let client = redis::Client::open(settings.redis.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let names: Vec<String> = conn
        .zrange(cache_shared::health::WORKER_HEARTBEATS_KEY, 0, -1)
        .await
        .unwrap();
    names
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn a_worker_heartbeats_while_running_and_signs_off_on_shutdown() {
    let prefix = format!("test-{}", ulid::Ulid::new());
    // Queues of its own: jobs other processes left in the default ones
    // would otherwise move this worker's counters.
    let mut settings = Cli::try_parse_from([
        "cache-worker",
        "--worker-name",
        &prefix,
        "--queue-prefix",
        &prefix,
    ])
    .unwrap()
    .settings();
    settings.database.database_url =
        cache_shared::db::testing::fresh_database(&settings.database.database_url)
            .await
            .unwrap();
    let port = free_port();
    settings.worker_metrics_port = port;
    settings.worker_metrics_address = std::net::Ipv4Addr::LOCALHOST.into();
    settings.metrics.metrics_token = "scrape-me".parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(cache_worker::run(settings, async {
        let _ = stopped.await;
    }));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while heartbeats_with_prefix(&prefix).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names = heartbeats_with_prefix(&prefix).await;
    assert_eq!(names.len(), 1);
    assert!(names[0].contains(&std::process::id().to_string()));

    // The worker's own metrics, in the Prometheus text format, for the
    // METRICS_TOKEN bearer only.
    let anonymous = http_get(port, "/metrics", None).await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    let wrong = http_get(port, "/metrics", Some("scrape-you")).await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let metrics = http_get(port, "/metrics", Some("scrape-me")).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
    assert!(
        metrics.contains("\ncache_oplog_persisted_total 0\n"),
        "{metrics}"
    );

    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    assert!(heartbeats_with_prefix(&prefix).await.is_empty());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bare HTTP/1.1 GET (the worker's one route needs no client library).
async fn http_get(port: u16, path: &str, bearer: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}
