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
    let mut settings = Cli::try_parse_from(["cache-worker", "--worker-name", &prefix])
        .unwrap()
        .settings();
    settings.database.database_url =
        cache_shared::db::testing::fresh_database(&settings.database.database_url)
            .await
            .unwrap();
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

    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    assert!(heartbeats_with_prefix(&prefix).await.is_empty());
}
