//! Redis faults on a private redis-server: unreachable, slow, and back again.

use std::time::Duration;

use deadpool_redis::redis;
use serde_json::{Value, json};

use crate::helpers::{PrivateRedis, TestApp, assert_error, settings, spawn_app_with, wait_until};

const COMMAND_TIMEOUT_MS: &str = "300";

async fn app_on(redis: &PrivateRedis, client_mode: &str) -> TestApp {
    let url = redis.url();
    spawn_app_with(settings(&[
        "--redis-url",
        &url,
        "--redis-client",
        client_mode,
        "--redis-command-timeout-ms",
        COMMAND_TIMEOUT_MS,
        "--redis-connect-timeout-ms",
        COMMAND_TIMEOUT_MS,
        "--redis-wait-timeout-ms",
        COMMAND_TIMEOUT_MS,
    ]))
    .await
}

/// The answer must come well within the deadline; hanging fails the test.
async fn answer_within(app: &TestApp, limit: Duration) -> reqwest::Response {
    tokio::time::timeout(limit, app.get("k"))
        .await
        .expect("the request answered instead of hanging")
}

async fn redis_down_then_back(client_mode: &str) {
    let mut redis = PrivateRedis::start().await;
    let app = app_on(&redis, client_mode).await;
    assert_eq!(app.set("k", json!("v")).await.status(), 200);

    redis.stop().await;
    let deadline = Duration::from_millis(2000);
    let body = assert_error(
        answer_within(&app, deadline).await,
        503,
        "CACHE_UNAVAILABLE",
    )
    .await;
    assert_eq!(body["details"]["retryable"], true);
    assert_error(app.set("k2", json!(1)).await, 503, "CACHE_UNAVAILABLE").await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "down");

    redis.restart().await;
    // Recovery without a restart of the api: the first writes after Redis is
    // back may still meet a connection being replaced, so wait for success.
    wait_until(Duration::from_secs(10), || async {
        app.set("k", json!("again")).await.status() == 200
    })
    .await;
    let body: Value = app.get("k").await.json().await.unwrap();
    assert_eq!(body["value"], "again");
}

#[tokio::test]
async fn unreachable_redis_answers_503_and_recovers_multiplexed() {
    redis_down_then_back("multiplexed").await;
}

#[tokio::test]
async fn unreachable_redis_answers_503_and_recovers_pooled() {
    redis_down_then_back("pool").await;
}

#[tokio::test]
async fn a_slow_redis_answers_503_within_the_timeout() {
    let redis = PrivateRedis::start().await;
    let app = app_on(&redis, "multiplexed").await;
    assert_eq!(app.set("k", json!("v")).await.status(), 200);
    // Block the server for two seconds from another connection.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut blocker = client.get_multiplexed_async_connection().await.unwrap();
    let probe = client.get_multiplexed_async_connection().await.unwrap();
    let sleeper = tokio::spawn(async move {
        let _: redis::RedisResult<String> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(2)
            .query_async(&mut blocker)
            .await;
    });
    // Wait until the server is really blocked before asking.
    wait_until(Duration::from_secs(5), || {
        let mut probe = probe.clone();
        async move {
            tokio::time::timeout(
                Duration::from_millis(100),
                redis::cmd("PING").query_async::<String>(&mut probe),
            )
            .await
            .is_err()
        }
    })
    .await;
    let response = answer_within(&app, Duration::from_millis(1500)).await;
    assert_error(response, 503, "CACHE_UNAVAILABLE").await;
    sleeper.await.unwrap();
    wait_until(Duration::from_secs(5), || async {
        app.get("k").await.status() == 200
    })
    .await;
}

#[tokio::test]
async fn a_refused_batch_stores_nothing() {
    let redis = PrivateRedis::start().await;
    let app = app_on(&redis, "multiplexed").await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let response = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [{"key": "a", "value": 1}, {"key": "b", "value": 2}]}),
        )
        .await;
    assert_error(response, 503, "CACHE_UNAVAILABLE").await;
    let keys: i64 = redis::cmd("DBSIZE").query_async(&mut admin).await.unwrap();
    assert_eq!(keys, 0);
}
