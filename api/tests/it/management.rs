//! Management, performance and monitoring routes with real figures.

use cache_shared::api_keys::Role;
use deadpool_redis::redis;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    CuttablePostgres, PrivateRedis, TestApp, assert_error, settings, spawn_app, spawn_app_with,
};

async fn get(app: &TestApp, key: &str, path: &str) -> Value {
    let response = app.public(Method::GET, path, key).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn wait_job(app: &TestApp, key: &str, accepted: reqwest::Response) -> Value {
    assert_eq!(accepted.status(), 202);
    let accepted: Value = accepted.json().await.unwrap();
    app.wait_public_job(key, accepted["statusUrl"].as_str().unwrap())
        .await
}

#[tokio::test]
async fn memory_analysis_figures_match_the_keys_seeded() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let admin = app.key(Role::Admin).await;
    let missing = app
        .public(Method::GET, "/api/v1/cache/memory/analyze", &admin)
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "NOT_FOUND").await;

    let mut raw = app.raw_redis().await;
    let mut pipe = redis::pipe();
    let t = &app.tenant;
    for i in 0..300 {
        pipe.cmd("SET")
            .arg(format!("c:{{{t}}}:user:{i}:profile"))
            .arg("J{}")
            .arg("EX")
            .arg(600)
            .ignore();
    }
    for i in 0..50 {
        pipe.cmd("SET")
            .arg(format!("c:{{{t}}}:session:{i}"))
            .arg(format!("J\"{}\"", "x".repeat(2000)))
            .ignore();
    }
    let () = pipe.query_async(&mut raw).await.unwrap();

    let job = wait_job(
        &app,
        &admin,
        app.public(Method::POST, "/api/v1/cache/memory/analyze", &admin)
            .json(&json!({"mode": "full"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let report = get(&app, &admin, "/api/v1/cache/memory/analyze").await;
    assert_eq!(report["reportId"], job["jobId"]);
    let r = &report["report"];
    assert_eq!(r["mode"], "full");
    assert_eq!(r["complete"], true);
    assert_eq!(r["keysAnalysed"], 350);
    let patterns: Vec<(String, u64)> = r["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pattern"].as_str().unwrap().to_owned(),
                p["keys"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        patterns.contains(&("user:{id}:profile".into(), 300)),
        "{patterns:?}"
    );
    assert!(
        patterns.contains(&("session:{id}".into(), 50)),
        "{patterns:?}"
    );
    assert_eq!(r["keysWithoutTtl"], 50);
    assert_eq!(r["ttlDistribution"]["under1h"], 300);
    assert_eq!(r["compressionCandidates"]["count"], 50);
    assert!(
        r["biggestKeys"][0]["key"]
            .as_str()
            .unwrap()
            .starts_with("session:")
    );

    // Another tenant never sees this report.
    let other_tenant = crate::helpers::unique("t");
    let other = app.key_for(&other_tenant, Role::Admin).await;
    let hidden = app
        .public(Method::GET, "/api/v1/cache/memory/analyze", &other)
        .send()
        .await
        .unwrap();
    assert_error(hidden, 404, "NOT_FOUND").await;
    // Nor through the performance view, which reads the latest report.
    let mine = get(&app, &admin, "/api/v1/cache/performance").await;
    assert_eq!(mine["biggestKeys"], r["biggestKeys"], "{mine}");
    let theirs = get(&app, &other, "/api/v1/cache/performance").await;
    assert!(theirs["biggestKeys"].is_null(), "{theirs}");
    assert_eq!(theirs["tenantId"], other_tenant.as_str());
    worker.stop().await;
}

#[tokio::test]
async fn compressing_a_key_keeps_its_value_and_ttl() {
    let app = spawn_app().await;
    let writer = app.key(Role::Writer).await;
    let text = "repetitive ".repeat(50);
    app.public(Method::PUT, "/api/v1/cache/keys/doc", &writer)
        .json(&json!({"value": text, "ttl": 900}))
        .send()
        .await
        .unwrap();
    let body: Value = app
        .public(Method::POST, "/api/v1/cache/keys/doc/compress", &writer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["key"], "doc");
    assert_eq!(body["compressed"], true);
    assert!(body["bytesAfter"].as_u64().unwrap() < body["bytesBefore"].as_u64().unwrap());
    let back = get(&app, &writer, "/api/v1/cache/keys/doc").await;
    assert_eq!(back["value"], json!(text));
    assert!(back["ttl"].as_i64().unwrap() > 890);
    // A second call finds it compressed already.
    let again: Value = app
        .public(Method::POST, "/api/v1/cache/keys/doc/compress", &writer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["bytesBefore"], again["bytesAfter"]);
    assert_eq!(again["compressed"], true);
    let missing = app
        .public(Method::POST, "/api/v1/cache/keys/nope/compress", &writer)
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "KEY_NOT_FOUND").await;
}

#[tokio::test]
async fn bulk_compression_touches_only_matching_keys() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let admin = app.key(Role::Admin).await;
    // Stored uncompressed, as a service with a higher COMPRESSION_MIN_BYTES would have.
    let stored = format!("J\"{}\"", "abcabcabc".repeat(300));
    let mut raw = app.raw_redis().await;
    for key in ["docs:1", "docs:2", "other:1"] {
        let () = redis::cmd("SET")
            .arg(format!("c:{{{}}}:{key}", app.tenant))
            .arg(&stored)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let job = wait_job(
        &app,
        &admin,
        app.public(Method::POST, "/api/v1/cache/compress/docs:*", &admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["compressed"], 2);
    for (key, tag) in [("docs:1", b'j'), ("docs:2", b'j'), ("other:1", b'J')] {
        let stored: Vec<u8> = redis::cmd("GET")
            .arg(format!("c:{{{}}}:{key}", app.tenant))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(stored[0], tag, "{key}");
    }
    worker.stop().await;
}

#[tokio::test]
async fn eviction_policy_and_pool_settings_are_validated() {
    let app = spawn_app().await;
    let operator = app.key(Role::Operator).await;
    let bad = app
        .public(Method::POST, "/api/v1/cache/eviction/policy", &operator)
        .json(&json!({"policy": "evict-everything"}))
        .send()
        .await
        .unwrap();
    let body = assert_error(bad, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["details"]["field"], "policy");
    let multiplexed = app
        .public(Method::PUT, "/api/v1/cache/connections/config", &operator)
        .json(&json!({"maxSize": 4}))
        .send()
        .await
        .unwrap();
    assert_error(multiplexed, 400, "VALIDATION_ERROR").await;
    let timeout: Value = app
        .public(Method::PUT, "/api/v1/cache/connections/config", &operator)
        .json(&json!({"commandTimeoutMs": 1500}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(timeout["mode"], app.state.cache.redis().mode());
    let connections = get(&app, &operator, "/api/v1/cache/connections").await;
    for field in ["size", "maxSize", "idle", "inUse", "waiting", "timeouts"] {
        assert!(connections[field].is_u64(), "{field} in {connections}");
    }
}

#[tokio::test]
async fn live_figures_reflect_the_operations_made() {
    let app = spawn_app().await;
    let key = app.key(Role::Writer).await;
    app.public(Method::PUT, "/api/v1/cache/keys/hot", &key)
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    for _ in 0..64 {
        app.public(Method::GET, "/api/v1/cache/keys/hot", &key)
            .send()
            .await
            .unwrap();
    }
    for i in 0..16 {
        app.public(Method::GET, &format!("/api/v1/cache/keys/cold{i}"), &key)
            .send()
            .await
            .unwrap();
    }
    let stats = get(&app, &key, "/api/v1/cache/stats").await;
    assert_eq!(stats["live"]["hits"], 64);
    assert_eq!(stats["live"]["misses"], 16);
    assert_eq!(stats["live"]["hitRate"], 80.0);
    let latency = get(&app, &key, "/api/v1/cache/latency").await;
    let get_op = latency["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operation"] == "get")
        .unwrap()
        .clone();
    assert_eq!(get_op["count"], 80);
    assert!(get_op["p50Ms"].as_f64().unwrap() <= get_op["p99Ms"].as_f64().unwrap());
    assert_eq!(latency["windowMinutes"], 5);
    for bad in ["0", "16", "five"] {
        let refused = app
            .public(
                Method::GET,
                &format!("/api/v1/cache/latency?window={bad}"),
                &key,
            )
            .send()
            .await
            .unwrap();
        assert_error(refused, 400, "VALIDATION_ERROR").await;
    }
    let throughput = get(&app, &key, "/api/v1/cache/throughput").await;
    assert!(throughput["total"]["last1m"].as_f64().unwrap() > 0.0);
    let hot = get(&app, &key, "/api/v1/cache/hotkeys").await;
    assert_eq!(hot["source"], "live");
    assert_eq!(hot["keys"][0]["key"], "hot");
    // Another tenant sees none of these figures.
    let stranger = app
        .key_for(&crate::helpers::unique("t"), Role::Reader)
        .await;
    let theirs = get(&app, &stranger, "/api/v1/cache/hotkeys").await;
    assert_eq!(theirs["keys"], json!([]));
    let their_stats = get(&app, &stranger, "/api/v1/cache/stats").await;
    assert_eq!(their_stats["live"]["hits"], 0);
    let metrics = get(&app, &key, "/api/v1/cache/metrics").await;
    assert_eq!(metrics["hits"], 64);
    let performance = get(&app, &key, "/api/v1/cache/performance").await;
    assert_eq!(performance["hitRate"], 80.0);
    let history = get(
        &app,
        &key,
        "/api/v1/cache/stats?from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z",
    )
    .await;
    assert!(history["history"].is_array());
    let bad = app
        .public(
            Method::GET,
            "/api/v1/cache/stats?from=yesterday&to=now",
            &key,
        )
        .send()
        .await
        .unwrap();
    assert_error(bad, 400, "VALIDATION_ERROR").await;
    let info = get(&app, &key, "/api/v1/cache/info").await;
    assert_eq!(info["scope"], "tenant");
    assert_eq!(info["keyCount"], 1);
    assert!(info["redisVersion"].is_string());
}

#[tokio::test]
async fn a_tenants_flush_never_reaches_another_tenant() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let mine = app.key(Role::Admin).await;
    let other_tenant = crate::helpers::unique("t");
    let theirs = app.key_for(&other_tenant, Role::Admin).await;
    for (key, name) in [
        (&mine, "shared:1"),
        (&mine, "shared:2"),
        (&theirs, "shared:1"),
    ] {
        app.public(Method::PUT, &format!("/api/v1/cache/keys/{name}"), key)
            .json(&json!({"value": name}))
            .send()
            .await
            .unwrap();
    }
    let job = wait_job(
        &app,
        &mine,
        app.public(Method::POST, "/api/v1/cache/flush", &mine)
            .json(&json!({"namespace": "shared:"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(job["result"]["deleted"], 2);
    let gone = app
        .public(Method::GET, "/api/v1/cache/keys/shared:1", &mine)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let kept = get(&app, &theirs, "/api/v1/cache/keys/shared:1").await;
    assert_eq!(kept["value"], "shared:1");
    // Their job is not ours to see.
    let url = job["jobId"].as_str().unwrap();
    let hidden = app
        .public(Method::GET, &format!("/api/v1/jobs/{url}"), &theirs)
        .send()
        .await
        .unwrap();
    assert_error(hidden, 404, "NOT_FOUND").await;
    worker.stop().await;
}

#[tokio::test]
async fn an_admin_action_that_cannot_be_recorded_does_not_take_effect() {
    let own = PrivateRedis::start().await;
    let relay = CuttablePostgres::start().await;
    let base = spawn_app().await;
    let app = spawn_app_with(settings(&[
        "--redis-url",
        &own.url(),
        "--database-url",
        &relay.url_for(&base.database_url),
    ]))
    .await;
    let operator = app.key(Role::Operator).await;
    let mut raw = app.raw_redis().await;
    let mut policy = async || {
        let (_, policy): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut raw)
            .await
            .unwrap();
        policy
    };
    let before = policy().await;
    assert_ne!(before, "allkeys-lfu");
    // Remembered key, PostgreSQL gone: the change cannot be put on record.
    let ping = app
        .public(Method::GET, "/api/v1/cache/status", &operator)
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 200);
    relay.cut();
    let refused = app
        .public(Method::POST, "/api/v1/cache/eviction/policy", &operator)
        .json(&json!({"policy": "allkeys-lfu"}))
        .send()
        .await
        .unwrap();
    assert_error(refused, 503, "STORE_UNAVAILABLE").await;
    assert_eq!(policy().await, before, "changed without a record");
    let resized = app
        .public(Method::PUT, "/api/v1/cache/connections/config", &operator)
        .json(&json!({"commandTimeoutMs": 1234}))
        .send()
        .await
        .unwrap();
    assert_error(resized, 503, "STORE_UNAVAILABLE").await;
    assert_ne!(
        app.state.cache.redis().command_timeout(),
        std::time::Duration::from_millis(1234)
    );
}
