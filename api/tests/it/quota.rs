//! Tenant quotas (API.md §9): exactly at the limit passes, one over is
//! `507` with nothing stored, and usage stays equal to what a full `SCAN`
//! counts through writes, deletes, expiries, flushes and evictions.

use std::time::Duration;

use cache_shared::api_keys::Role;
use cache_shared::db::backups;
use deadpool_redis::redis;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    PrivateRedis, TestApp, assert_error, json_of, settings, spawn_app, spawn_app_with, wait_until,
};

/// Keys and bytes (caller's key + stored value less its expiry header) of
/// `tenant`, by a full SCAN.
async fn scanned(app: &TestApp, tenant: &str) -> (u64, u64) {
    let mut conn = app.raw_redis().await;
    let prefix = format!("c:{{{tenant}}}:");
    let (mut keys, mut bytes) = (0, 0);
    for key in app.scan_keys(&format!("{prefix}*")).await {
        let stored: u64 = redis::cmd("STRLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if stored > 0 {
            let first: Vec<u8> = redis::cmd("GETRANGE")
                .arg(&key)
                .arg(0)
                .arg(0)
                .query_async(&mut conn)
                .await
                .unwrap();
            // The expiry header is not counted (see the codec).
            let header = if first == b"T" { 9 } else { 0 };
            keys += 1;
            bytes += (key.len() - prefix.len()) as u64 + stored - header;
        }
    }
    (keys, bytes)
}

/// The tenant's usage and quota as `GET /api/v1/cache/memory` shows them.
async fn quota(app: &TestApp, key: &str) -> Value {
    let memory: Value = json_of(app.public(Method::GET, "/api/v1/cache/memory", key)).await;
    memory["quota"].clone()
}

async fn limit(app: &TestApp, body: Value) {
    let operator = app.key(Role::Operator).await;
    let changed = app
        .public(
            Method::PUT,
            &format!("/api/v1/admin/tenants/{}/limits", app.tenant),
            &operator,
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
}

async fn exists(app: &TestApp, key: &str) -> bool {
    app.get(key).await.status() == 200
}

#[tokio::test]
async fn keys_exactly_at_the_quota_pass_and_one_more_is_refused_with_nothing_stored() {
    let app = spawn_app().await;
    let reader = app.key(Role::Reader).await;
    limit(&app, json!({"maxKeys": 3})).await;
    for key in ["a", "b"] {
        assert_eq!(app.set(key, json!(1)).await.status(), 200);
    }
    // An all-or-nothing batch one key over stores nothing.
    let batch = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [{"key": "c", "value": 1}, {"key": "d", "value": 1}]}),
        )
        .await;
    let error = assert_error(batch, 507, "QUOTA_EXCEEDED").await;
    assert_eq!(error["details"]["limit"], "maxKeys", "{error}");
    assert_eq!(error["details"]["quota"], 3);
    assert_eq!(error["details"]["usage"], 2);
    assert!(!exists(&app, "c").await && !exists(&app, "d").await);

    assert_eq!(
        app.set("c", json!(1)).await.status(),
        200,
        "the third key fits"
    );
    let over = app.set("d", json!(1)).await;
    let error = assert_error(over, 507, "QUOTA_EXCEEDED").await;
    assert_eq!(error["details"]["usage"], 3);
    assert!(!exists(&app, "d").await);
    let public = app
        .public(
            Method::PUT,
            "/api/v1/cache/keys/d",
            &app.key(Role::Writer).await,
        )
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_error(public, 507, "QUOTA_EXCEEDED").await;

    // Replacing a key adds no key; deleting one makes room.
    assert_eq!(app.set("a", json!(2)).await.status(), 200);
    app.internal(Method::DELETE, "/internal/cache/delete/b")
        .send()
        .await
        .unwrap();
    assert_eq!(app.set("d", json!(1)).await.status(), 200);
    let shown = quota(&app, &reader).await;
    assert_eq!(shown["maxKeys"], 3);
    assert_eq!(shown["keys"], 3);
}

#[tokio::test]
async fn bytes_exactly_at_the_quota_pass_and_one_more_is_refused() {
    let app = spawn_app().await;
    // "k1" + "J1" = 4 bytes; "k2" + "J12" = 5.
    limit(&app, json!({"maxBytes": 9})).await;
    assert_eq!(app.set("k1", json!(1)).await.status(), 200);
    let over = app.set("k2", json!(123)).await;
    let error = assert_error(over, 507, "QUOTA_EXCEEDED").await;
    assert_eq!(error["details"]["limit"], "maxBytes");
    assert_eq!(error["details"]["quota"], 9);
    assert_eq!(error["details"]["usage"], 4);
    assert_eq!(
        app.set("k2", json!(12)).await.status(),
        200,
        "exactly 9 bytes"
    );
    // The same size again always succeeds; one byte more does not.
    assert_eq!(app.set("k2", json!(34)).await.status(), 200);
    assert_error(app.set("k2", json!(345)).await, 507, "QUOTA_EXCEEDED").await;
    let reader = app.key(Role::Reader).await;
    assert_eq!(quota(&app, &reader).await["bytes"], 9);
}

#[tokio::test]
async fn a_preload_over_the_quota_fails_and_a_restore_stops_at_it() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    limit(&app, json!({"maxKeys": 3})).await;
    // Started after the change: a worker reads limits when it starts.
    let worker = app.spawn_worker();
    let items: Vec<Value> = (0..4)
        .map(|i| json!({"key": format!("p{i}"), "value": i}))
        .collect();
    let request = app
        .public(Method::POST, "/api/v1/cache/preload", &admin)
        .json(&json!({"items": items}));
    let job = app.run_public_job(&admin, request).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("maxKeys"), "{job}");
    assert_eq!(
        scanned(&app, &app.tenant).await.0,
        0,
        "the batch stored nothing"
    );

    let request = app
        .public(Method::POST, "/api/v1/cache/preload", &admin)
        .json(&json!({"items": &items[..3]}));
    let job = app.run_public_job(&admin, request).await;
    assert_eq!(job["status"], "succeeded", "exactly at the quota: {job}");

    // A restore of two more keys: refused whole, what is there is kept.
    let backup = ulid::Ulid::new().to_string();
    backups::begin(&app.state.db, &backup, &app.tenant)
        .await
        .unwrap();
    let entries: Vec<backups::BackupEntry> = ["r1", "r2"]
        .iter()
        .map(|k| backups::BackupEntry {
            cache_key: (*k).into(),
            value: b"J1".to_vec(),
            expires_at: None,
        })
        .collect();
    backups::add(&app.state.db, &backup, &entries)
        .await
        .unwrap();
    backups::finish(&app.state.db, &backup).await.unwrap();
    let request = app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .json(&json!({"type": "restore", "params": {"backupId": backup}}));
    let job = app.run_public_job(&admin, request).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("quota"), "{job}");
    assert_eq!(scanned(&app, &app.tenant).await.0, 3);

    limit(&app, json!({"maxKeys": 5})).await;
    // The worker applies the change within its refresh.
    wait_until(Duration::from_secs(10), || async {
        let request = app
            .public(Method::POST, "/api/v1/jobs", &admin)
            .json(&json!({"type": "restore", "params": {"backupId": backup}}));
        app.run_public_job(&admin, request).await["status"] == "succeeded"
    })
    .await;
    assert_eq!(
        scanned(&app, &app.tenant).await.0,
        5,
        "exactly at the new quota"
    );
    worker.stop().await;
}

#[tokio::test]
async fn usage_equals_a_full_scan_after_writes_deletes_expiries_and_a_flush() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let admin = app.key(Role::Admin).await;
    let items = |from: usize, to: usize, ttl: u32| -> Value {
        let items: Vec<Value> = (from..to)
            .map(|i| json!({"key": format!("k:{i}"), "value": {"n": i, "pad": "x".repeat(i % 50)}, "ttl": ttl}))
            .collect();
        json!({"items": items})
    };
    for (from, to, ttl) in [(0, 300, 600), (300, 400, 1), (400, 500, 0)] {
        let stored = app
            .post_json("/internal/cache/mset", items(from, to, ttl))
            .await;
        assert_eq!(stored.status(), 200);
    }
    // Overwrites with other sizes and TTLs, deletes, re-timing, compression.
    for i in (0..300).step_by(7) {
        app.set(&format!("k:{i}"), json!("x".repeat(i))).await;
    }
    for i in (0..500).step_by(11) {
        app.internal(Method::DELETE, &format!("/internal/cache/delete/k:{i}"))
            .send()
            .await
            .unwrap();
    }
    for i in (1..300).step_by(13) {
        app.post_json(
            "/internal/cache/expire",
            json!({"key": format!("k:{i}"), "ttl": 1}),
        )
        .await;
    }
    for i in (401..500).step_by(17) {
        app.public(
            Method::POST,
            &format!("/api/v1/cache/keys/k:{i}/compress"),
            &admin,
        )
        .send()
        .await
        .unwrap();
    }
    let big = json!({"value": "y".repeat(5000)});
    app.public(Method::PUT, "/api/v1/cache/keys/big", &admin)
        .json(&big)
        .send()
        .await
        .unwrap();
    app.public(Method::POST, "/api/v1/cache/keys/big/compress", &admin)
        .send()
        .await
        .unwrap();
    let request = app
        .public(Method::POST, "/api/v1/cache/flush", &admin)
        .json(&json!({"namespace": "k:2"}));
    let flushed = app.run_public_job(&admin, request).await;
    assert_eq!(flushed["status"], "succeeded", "{flushed}");

    // Right away usage may still count keys whose TTL ran out; once they
    // have all gone and their expiry buckets settled, it equals the SCAN.
    let reader = app.key(Role::Reader).await;
    let now = quota(&app, &reader).await;
    let (keys, _) = scanned(&app, &app.tenant).await;
    assert!(now["keys"].as_u64().unwrap() >= keys, "{now} vs {keys}");
    wait_until(Duration::from_secs(30), || async {
        let short_lived_left =
            app.get("k:301").await.status() == 200 || app.get("k:14").await.status() == 200;
        let shown = quota(&app, &reader).await;
        let (keys, bytes) = scanned(&app, &app.tenant).await;
        !short_lived_left && shown["keys"] == keys && shown["bytes"] == bytes
    })
    .await;
    let (left, _) = scanned(&app, &app.tenant).await;
    assert!(
        (200..300).contains(&left),
        "the short TTLs, the deleted and the flushed went: {left} left"
    );
    worker.stop().await;
}

/// The tenant's settle hint (its usage hash's `d`) and the expiry bucket of
/// its `key`.
async fn hint_and_bucket(app: &TestApp, key: &str) -> (Option<i64>, i64) {
    let mut raw = app.raw_redis().await;
    let hint: Option<i64> = redis::cmd("HGET")
        .arg(format!("q:{{{}}}:usage", app.tenant))
        .arg("d")
        .query_async(&mut raw)
        .await
        .unwrap();
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg(format!("c:{{{}}}:{key}", app.tenant))
        .query_async(&mut raw)
        .await
        .unwrap();
    (hint, at.div_euclid(cache_shared::quota::BUCKET_MS))
}

/// Scripts settle only once the tenant's earliest expiry bucket is due (the
/// usage hash's hint): a write or a re-time to an expiry sooner than every
/// one before must lower the hint, or that expiry would never leave the
/// usage.
#[tokio::test]
async fn an_expiry_sooner_than_every_earlier_one_still_leaves_the_usage() {
    // Its own Redis: no other test's worker recounts (which resets the hint).
    let own = PrivateRedis::start().await;
    let app = spawn_app_with(settings(&["--redis-url", &own.url()])).await;
    let reader = app.key(Role::Reader).await;
    // Reading the usage of a tenant that never wrote stores nothing.
    assert_eq!(quota(&app, &reader).await["keys"], 0);
    let none: Option<i64> = hint_and_bucket(&app, "forever").await.0;
    assert_eq!(none, None);
    let usage_keys: u64 = redis::cmd("EXISTS")
        .arg(format!("q:{{{}}}:usage", app.tenant))
        .query_async(&mut app.raw_redis().await)
        .await
        .unwrap();
    assert_eq!(usage_keys, 0);
    // No expiry (the first settle finds no bucket), then a late one, then
    // an early one: the hint comes down twice.
    for (key, ttl) in [("forever", 0), ("late", 600), ("early", 3)] {
        let stored = app
            .post_json(
                "/internal/cache/set",
                json!({"key": key, "value": key, "ttl": ttl}),
            )
            .await;
        assert_eq!(stored.status(), 200);
    }
    let (hint, early) = hint_and_bucket(&app, "early").await;
    assert_eq!(hint, Some(early));
    assert_eq!(quota(&app, &reader).await["keys"], 3);
    // A bucket is settled a second after its 10-second end.
    wait_until(Duration::from_secs(25), || async {
        quota(&app, &reader).await["keys"] == 2
    })
    .await;
    assert!(!exists(&app, "early").await);
    let (hint, late) = hint_and_bucket(&app, "late").await;
    assert_eq!(hint, Some(late), "a settle leaves the lowest bucket left");

    // A re-time to sooner than every bucket left lowers it too.
    let retimed = app
        .post_json("/internal/cache/expire", json!({"key": "late", "ttl": 3}))
        .await;
    assert_eq!(retimed.status(), 200);
    let (hint, sooner) = hint_and_bucket(&app, "late").await;
    assert!(sooner < late);
    assert_eq!(hint, Some(sooner));
    wait_until(Duration::from_secs(25), || async {
        quota(&app, &reader).await["keys"] == 1
    })
    .await;
    assert_eq!(scanned(&app, &app.tenant).await.0, 1);
}

#[tokio::test]
async fn keys_written_before_accounting_and_evicted_keys_are_recounted() {
    let own = PrivateRedis::start().await;
    let app = spawn_app_with(settings(&["--redis-url", &own.url()])).await;
    let reader = app.key(Role::Reader).await;
    // Written behind the accounting's back, as before it existed.
    let mut raw = app.raw_redis().await;
    for i in 0..50 {
        let () = redis::cmd("SET")
            .arg(format!("c:{{{}}}:old{i}", app.tenant))
            .arg("J\"v\"")
            .arg("EX")
            .arg(600)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    app.set("new", json!(1)).await;
    let worker = app.spawn_worker();
    // The first worker on this Redis recounts every tenant.
    wait_until(Duration::from_secs(20), || async {
        quota(&app, &reader).await["keys"] == 51
    })
    .await;
    assert_eq!(
        quota(&app, &reader).await["bytes"],
        scanned(&app, &app.tenant).await.1
    );

    // Evictions: Redis drops keys no script sees; a recount puts usage right.
    // (volatile-*: the accounting's own keys, which never expire, stay.)
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-random")
        .query_async(&mut raw)
        .await
        .unwrap();
    let used: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut raw)
        .await
        .unwrap();
    let used: u64 = used
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 200_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    let filler = "z".repeat(1000);
    for i in 0..600 {
        let _ = app.set(&format!("fill{i}"), json!(filler)).await;
    }
    let evicted: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!evicted.contains("evicted_keys:0\r"), "nothing was evicted");
    // Room again, so no eviction happens between the recount and the reading.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut raw)
        .await
        .unwrap();
    let done = cache_shared::quota::reconcile(
        app.state.cache.redis(),
        app.state.cache.namespaces(),
        100,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(done.tenants >= 1, "{done:?}");
    let (keys, bytes) = scanned(&app, &app.tenant).await;
    let shown = quota(&app, &reader).await;
    assert_eq!(
        (shown["keys"].as_u64(), shown["bytes"].as_u64()),
        (Some(keys), Some(bytes))
    );
    worker.stop().await;
}

/// One flush step, as the flush job runs it: `(cursor, removed, examined)`.
async fn flush_step(
    app: &TestApp,
    cursor: &str,
    page: u64,
    budget_us: u64,
    most: u64,
) -> (String, i64, i64) {
    let mut conn = app.raw_redis().await;
    cache_shared::quota::SCAN_UNLINK
        .prepare_invoke()
        .arg(cursor)
        .arg(format!("c:{{{}}}:*", app.tenant))
        .arg(page)
        .arg(budget_us)
        .arg(most)
        .invoke_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_flush_step_stops_at_its_time_budget_or_key_bound_and_accounts_what_it_removed() {
    let own = PrivateRedis::start().await;
    let app = spawn_app_with(settings(&["--redis-url", &own.url()])).await;
    let reader = app.key(Role::Reader).await;
    for batch in 0..3 {
        let items: Vec<Value> = (batch * 1000..(batch + 1) * 1000)
            .map(|i| json!({"key": format!("k:{i}"), "value": i, "ttl": if i % 2 == 0 { 600 } else { 0 }}))
            .collect();
        let stored = app
            .post_json("/internal/cache/mset", json!({ "items": items }))
            .await;
        assert_eq!(stored.status(), 200);
    }

    // With all the time in the world, the key bound ends the step.
    let (cursor, removed, examined) = flush_step(&app, "0", 10, 10_000_000, 200).await;
    assert_ne!(cursor, "0", "200 of 3000 keys cannot finish the walk");
    assert!((200..400).contains(&examined), "examined {examined}");
    assert!(removed > 0 && removed <= examined, "removed {removed}");
    let (keys, bytes) = scanned(&app, &app.tenant).await;
    assert_eq!(keys, 3000 - removed as u64);
    let shown = quota(&app, &reader).await;
    assert_eq!(
        (shown["keys"].clone(), shown["bytes"].clone()),
        (json!(keys), json!(bytes))
    );

    // With a budget of one microsecond, every step is a single page.
    let mut cursor = cursor;
    let mut steps = 0;
    loop {
        let (next, _, examined) = flush_step(&app, &cursor, 10, 1, 1_000_000).await;
        assert!(examined < 100, "a one-page step examined {examined}");
        steps += 1;
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    assert!(steps > 100, "{steps} steps for 2800 keys in pages of 10");
    assert_eq!(scanned(&app, &app.tenant).await, (0, 0));
    let shown = quota(&app, &reader).await;
    assert_eq!(
        (shown["keys"].clone(), shown["bytes"].clone()),
        (json!(0), json!(0))
    );
}
