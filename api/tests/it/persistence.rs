//! A Redis that keeps its data: run from compose/redis.conf (append-only
//! file, snapshots, password), killed and started again on its data, it
//! still holds the sessions, permission entries and values the api wrote;
//! and a missing or wrong password stops the api at start-up.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use deadpool_redis::redis;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    PrivateRedis, RedisOptions, TestApp, settings, spawn_app_with, unique, wait_until,
};

/// The configuration compose and scripts/start run Redis with.
fn compose_redis_conf() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../compose/redis.conf"
    ))
}

/// A directory of this test's own under the system's temporary one, removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("cache-service-redis"));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        Self(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `INFO persistence` field.
async fn persistence_field(redis: &PrivateRedis, field: &str) -> Option<String> {
    let client = redis::Client::open(redis.url()).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.trim().to_owned())
}

async fn session(app: &TestApp, sid: &str) -> reqwest::Response {
    app.internal(Method::GET, &format!("/internal/cache/session/{sid}"))
        .send()
        .await
        .expect("session read")
}

#[tokio::test]
async fn sessions_permissions_and_values_survive_a_redis_restart() {
    let data = DataDir::new();
    let mut redis = PrivateRedis::start_with(
        RedisOptions::default()
            .config(compose_redis_conf())
            .password(&unique("pw"))
            .dir(&data.0),
    )
    .await;
    assert_eq!(
        persistence_field(&redis, "aof_enabled").await.as_deref(),
        Some("1"),
        "compose/redis.conf turns the append-only file on"
    );
    let app = spawn_app_with(settings(&["--redis-url", &redis.url()])).await;

    let (sid, user) = (unique("s"), unique("u"));
    let stored = app
        .post_json(
            "/internal/cache/session/set",
            json!({"sessionId": sid, "userId": user, "tenantId": app.tenant,
                   "data": {"role": "admin"}, "ttl": 3600}),
        )
        .await;
    assert_eq!(stored.status(), 200);
    let permission = format!("permission:{user}:{}:doc:read", app.tenant);
    let stored = app
        .post_json(
            "/internal/cache/permission/set",
            json!({"key": permission, "result": {"allowed": true}, "ttl": 3600}),
        )
        .await;
    assert_eq!(stored.status(), 200);
    let stored = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "profile:1", "value": {"name": "Ada"}, "ttl": 3600}),
        )
        .await;
    assert_eq!(stored.status(), 200);
    let stored = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "flags", "value": [1, 2, 3], "ttl": 0}),
        )
        .await;
    assert_eq!(stored.status(), 200);

    // appendfsync everysec: each write reaches the file before its answer
    // leaves Redis, unless a slow disk made Redis postpone it; wait until
    // nothing is left in Redis's buffer. A killed process loses nothing the
    // kernel has (only a crash of the machine loses up to the last second).
    wait_until(Duration::from_secs(10), || async {
        persistence_field(&redis, "aof_buffer_length")
            .await
            .as_deref()
            == Some("0")
    })
    .await;
    redis.stop().await;
    redis.restart().await;

    // The api reconnects by itself; its first calls may meet a connection
    // being replaced.
    wait_until(Duration::from_secs(10), || async {
        session(&app, &sid).await.status() != 503
    })
    .await;
    let found = session(&app, &sid).await;
    assert_eq!(found.status(), 200, "the session is gone after a restart");
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["userId"], json!(user));
    assert_eq!(found["tenantId"], json!(app.tenant));
    assert_eq!(found["data"], json!({"role": "admin"}));
    let ttl = found["ttl"].as_i64().unwrap();
    assert!((3000..=3600).contains(&ttl), "session ttl {ttl}");

    let found = app
        .internal(
            Method::GET,
            &format!("/internal/cache/permission/get?key={permission}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), 200, "the permission entry is gone");
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["result"], json!({"allowed": true}));

    let found = app.get("profile:1").await;
    assert_eq!(found.status(), 200, "the value is gone");
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["value"], json!({"name": "Ada"}));
    let ttl = found["ttl"].as_i64().unwrap();
    assert!((3000..=3600).contains(&ttl), "value ttl {ttl}");
    let found: Value = app.get("flags").await.json().await.unwrap();
    assert_eq!(found["value"], json!([1, 2, 3]));
    assert_eq!(found["ttl"], json!(-1));
}

/// Runs `cache-api` on `redis_url` and returns its exit status and
/// standard error, failing the test if it is still running after 20 s.
async fn api_start_up(redis_url: &str) -> (std::process::ExitStatus, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cache-api"))
        .env_clear()
        .env("REDIS_URL", redis_url)
        .env("SERVICE_PORT", "0")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("INTERNAL_SERVICE_TOKEN", "start-up-test")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cache-api starts");
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("cache-api kept running instead of stopping")
        .expect("cache-api output");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_missing_or_wrong_redis_password_stops_the_api_with_a_clear_error() {
    let password = unique("right-password");
    let redis = PrivateRedis::start_with(RedisOptions::default().password(&password)).await;

    let (status, stderr) = api_start_up(&format!("redis://127.0.0.1:{}", redis.port)).await;
    assert!(!status.success(), "started without a password: {stderr}");
    assert!(
        stderr.contains("refused the credentials of REDIS_URL")
            && stderr.contains("no password given"),
        "{stderr}"
    );

    let wrong = unique("wrong-password");
    let (status, stderr) =
        api_start_up(&format!("redis://:{wrong}@127.0.0.1:{}", redis.port)).await;
    assert!(!status.success(), "started with a wrong password: {stderr}");
    assert!(
        stderr.contains("refused the credentials of REDIS_URL")
            && stderr.contains("wrong password"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&wrong) && !stderr.contains(&password),
        "a password in the error: {stderr}"
    );
}
