//! The near cache (API.md §10): a second api instance serves hot keys from
//! memory and never serves them stale once Redis's invalidation arrives,
//! whoever wrote (another instance, or a client straight to Redis); without
//! its invalidation connection it does not serve from memory at all.

use std::time::Duration;

use cache_shared::api_keys::Role;
use deadpool_redis::redis::{self, AsyncCommands};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, sample, scrape, spawn_app, wait_until};

async fn value_of(app: &TestApp, key: &str) -> Value {
    let answer = app.get(key).await;
    assert_eq!(answer.status(), 200);
    answer.json::<Value>().await.unwrap()["value"].clone()
}

/// A value as the service stores it: expiry header, JSON tag, text.
fn stored(json_text: &str, ttl_ms: u64) -> Vec<u8> {
    let at = cache_shared::codec::unix_now_ms() + ttl_ms;
    let mut bytes = vec![b'T'];
    bytes.extend_from_slice(&at.to_be_bytes());
    bytes.push(b'J');
    bytes.extend_from_slice(json_text.as_bytes());
    bytes
}

fn near_hits(app: &TestApp) -> u64 {
    app.state.cache.near_cache().unwrap().figures().hits
}

#[tokio::test]
async fn another_instance_serves_from_memory_and_never_stale_after_an_invalidation() {
    let writer = spawn_app().await;
    let mut reader = spawn_app().await;
    reader.tenant = writer.tenant.clone();
    let admin = writer.key(Role::Admin).await;
    let created = writer
        .public(Method::POST, "/api/v1/cache/namespaces", &admin)
        .json(&json!({"prefix": "hot:", "nearCache": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    cache_api::limits_refresh::refresh(&reader.state, "test-instances").await;
    let near = reader.state.cache.near_cache().unwrap().clone();
    wait_until(Duration::from_secs(5), || {
        let near = near.clone();
        async move { near.is_healthy() }
    })
    .await;

    assert_eq!(writer.set("hot:1", json!(1)).await.status(), 200);
    assert_eq!(value_of(&reader, "hot:1").await, 1);
    let before = near_hits(&reader);
    assert_eq!(value_of(&reader, "hot:1").await, 1);
    assert_eq!(
        near_hits(&reader),
        before + 1,
        "the second read came from memory"
    );
    assert_eq!(writer.set("cold:1", json!(1)).await.status(), 200);
    assert_eq!(value_of(&reader, "cold:1").await, 1);
    assert_eq!(value_of(&reader, "cold:1").await, 1);
    assert_eq!(
        near_hits(&reader),
        before + 1,
        "other namespaces are not near-cached"
    );

    // Written through the other instance: stale at most until the push arrives.
    assert_eq!(writer.set("hot:1", json!(2)).await.status(), 200);
    wait_until(Duration::from_secs(1), || async {
        value_of(&reader, "hot:1").await == 2
    })
    .await;
    for _ in 0..20 {
        assert_eq!(value_of(&reader, "hot:1").await, 2);
    }
    // Written straight to Redis: the same.
    let mut redis = reader.raw_redis().await;
    let raw_key = format!("c:{{{}}}:hot:1", reader.tenant);
    let _: () = redis
        .pset_ex(&raw_key, stored("3", 60_000), 60_000)
        .await
        .unwrap();
    wait_until(Duration::from_secs(1), || async {
        value_of(&reader, "hot:1").await == 3
    })
    .await;
    for _ in 0..20 {
        assert_eq!(value_of(&reader, "hot:1").await, 3);
    }
    assert!(
        near_hits(&reader) > before + 20,
        "served from memory meanwhile"
    );

    // The invalidation connection cut: what was cached is never served,
    // although the write after the cut sends it no push.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut redis)
        .await
        .unwrap();
    let name = format!("name=near-cache-{}", reader.state.instance_id);
    let id = clients
        .lines()
        .find(|line| line.split(' ').any(|field| field == name))
        .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("the tracking connection is listed")
        .to_owned();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis
        .pset_ex(&raw_key, stored("4", 60_000), 60_000)
        .await
        .unwrap();
    wait_until(Duration::from_secs(1), || async {
        value_of(&reader, "hot:1").await == 4
    })
    .await;
    for _ in 0..20 {
        assert_eq!(value_of(&reader, "hot:1").await, 4);
    }

    let hits = sample(&scrape(&reader).await, "cache_near_cache_hits_total ");
    assert!(hits > 20.0, "{hits}");
}
