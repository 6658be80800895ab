//! Namespaces (API.md §10): the design's five for every tenant, admins'
//! changes on record and seen by every instance, TTL jitter and exact TTLs,
//! the longest prefix, compression and access patterns.

use cache_shared::api_keys::Role;
use deadpool_redis::redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_error, encode, json_of, settings, spawn_app, spawn_app_with, wait_until,
};

const NAMESPACES: &str = "/api/v1/cache/namespaces";

async fn create(app: &TestApp, admin: &str, body: Value) -> reqwest::Response {
    app.public(Method::POST, NAMESPACES, admin)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn change(app: &TestApp, admin: &str, prefix: &str, body: Value) -> reqwest::Response {
    app.public(
        Method::PUT,
        &format!("{NAMESPACES}/{}", encode(prefix)),
        admin,
    )
    .json(&body)
    .send()
    .await
    .unwrap()
}

/// Remaining milliseconds of `key` of the app's tenant, as Redis holds them.
async fn pttl(app: &TestApp, key: &str) -> i64 {
    let mut redis = app.raw_redis().await;
    redis
        .pttl(format!("c:{{{}}}:{key}", app.tenant))
        .await
        .unwrap()
}

async fn set_internal(app: &TestApp, body: Value) -> Value {
    let response = app.post_json("/internal/cache/set", body.clone()).await;
    assert_eq!(response.status(), 200, "{body}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn every_tenant_starts_with_the_design_namespaces_and_admins_change_their_own() {
    let app = spawn_app().await;
    let (reader, admin) = (app.key(Role::Reader).await, app.key(Role::Admin).await);
    let listed: Value = json_of(app.public(Method::GET, NAMESPACES, &reader)).await;
    let by_prefix = |list: &Value, prefix: &str| {
        list["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|ns| ns["prefix"] == prefix)
            .cloned()
    };
    let design = [
        ("session:", 900, 10_000, "evict_lru"),
        ("permission:", 300, 0, "evict_lru"),
        ("user:", 3600, 5_000, "evict_lru"),
        ("api:", 300, 20_000, "evict_lfu"),
        ("config:", 1800, 1_000, "evict_lru"),
    ];
    assert_eq!(listed["namespaces"].as_array().unwrap().len(), 5);
    for (prefix, ttl, max_keys, over_limit) in design {
        let ns = by_prefix(&listed, prefix).unwrap_or_else(|| panic!("{prefix} missing"));
        assert_eq!(
            (
                &ns["ttl"],
                &ns["maxKeys"],
                &ns["overLimit"],
                &ns["ttlJitter"]
            ),
            (
                &json!(ttl),
                &json!(max_keys),
                &json!(over_limit),
                &json!(0.1)
            ),
            "{prefix}"
        );
        assert_eq!(ns["access"], "read_write");
    }

    assert_error(
        create(&app, &reader, json!({"prefix": "cart:"})).await,
        403,
        "FORBIDDEN",
    )
    .await;
    let created = create(
        &app,
        &admin,
        json!({"prefix": "cart:", "maxKeys": 10, "overLimit": "reject"}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(
        (&created["ttl"], &created["ttlJitter"], &created["maxKeys"]),
        (&json!(3600), &json!(0.1), &json!(10))
    );
    assert_error(
        create(&app, &admin, json!({"prefix": "cart:"})).await,
        409,
        "CONFLICT",
    )
    .await;

    let changed: Value = change(&app, &admin, "cart:", json!({"ttl": 60}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&changed["ttl"], &changed["maxKeys"]),
        (&json!(60), &json!(10))
    );
    let read: Value =
        json_of(app.public(Method::GET, &format!("{NAMESPACES}/cart%3A"), &reader)).await;
    assert_eq!(read, changed);
    // Another tenant's admin neither sees nor changes this tenant's namespace.
    let stranger = app.key_for(&crate::helpers::unique("t"), Role::Admin).await;
    for request in [
        app.public(Method::GET, &format!("{NAMESPACES}/cart%3A"), &stranger),
        app.public(
            Method::GET,
            &format!("{NAMESPACES}/cart%3A/stats"),
            &stranger,
        ),
        app.public(Method::PUT, &format!("{NAMESPACES}/cart%3A"), &stranger)
            .json(&json!({"ttl": 1})),
        app.public(Method::DELETE, &format!("{NAMESPACES}/cart%3A"), &stranger),
    ] {
        assert_error(request.send().await.unwrap(), 404, "NOT_FOUND").await;
    }
    let session_changed = change(&app, &admin, "session:", json!({"ttlJitter": 0})).await;
    assert_eq!(session_changed.status(), 200);

    for (body, field) in [
        (json!({"ttlJitter": 0.9}), "ttlJitter"),
        (json!({"ttl": -1}), "ttl"),
        (json!({"overLimit": "fifo"}), "overLimit"),
        (json!({"prefix": "other:"}), "prefix"),
        (json!({"encrypted": true}), "encrypted"),
        (json!({"color": "red"}), "color"),
    ] {
        let error = assert_error(
            change(&app, &admin, "cart:", body.clone()).await,
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(error["details"]["field"], field, "{body}");
    }
    assert_error(
        change(&app, &admin, "nothing:", json!({"ttl": 1})).await,
        404,
        "NOT_FOUND",
    )
    .await;

    let deleted = app
        .public(Method::DELETE, &format!("{NAMESPACES}/cart%3A"), &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let gone = app
        .public(Method::GET, &format!("{NAMESPACES}/cart%3A"), &reader)
        .send()
        .await
        .unwrap();
    assert_error(gone, 404, "NOT_FOUND").await;
    let after: Value = json_of(app.public(Method::GET, NAMESPACES, &reader)).await;
    assert_eq!(after["namespaces"].as_array().unwrap().len(), 5);
    assert_eq!(by_prefix(&after, "session:").unwrap()["ttlJitter"], 0.0);

    // Another tenant still has the design's namespaces, untouched.
    let other = app
        .key_for(&crate::helpers::unique("t"), Role::Reader)
        .await;
    let theirs: Value = json_of(app.public(Method::GET, NAMESPACES, &other)).await;
    assert_eq!(by_prefix(&theirs, "session:").unwrap()["ttlJitter"], 0.1);
    assert!(by_prefix(&theirs, "cart:").is_none());

    let (recorded,): (i64,) = sqlx::query_as(
        "select count(*) from admin_actions where tenant_id = $1 and action = 'namespaces'",
    )
    .bind(&app.tenant)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(
        recorded, 4,
        "create, two changes and the delete are on record"
    );
}

#[tokio::test]
async fn writes_take_the_ttl_of_their_longest_prefix_with_jitter_unless_exact_or_given() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    let vip = create(
        &app,
        &admin,
        json!({"prefix": "user:vip:", "ttl": 1000, "ttlJitter": 0}),
    )
    .await;
    assert_eq!(vip.status(), 201);

    // 40 keys written together in `user:` (3600 s ± 10%) do not expire together.
    let mut expiries = Vec::new();
    for i in 0..40 {
        let answer = set_internal(&app, json!({"key": format!("user:{i}"), "value": i})).await;
        let ttl = answer["ttl"].as_i64().unwrap();
        assert!((3240..=3960).contains(&ttl), "ttl {ttl} outside 3600 ± 10%");
        let left = pttl(&app, &format!("user:{i}")).await;
        assert!((3_239_000..=3_960_000).contains(&left), "{left} ms");
        expiries.push(left / 1000);
    }
    expiries.sort_unstable();
    expiries.dedup();
    assert!(expiries.len() > 20, "expiries not spread: {expiries:?}");

    let exact = set_internal(&app, json!({"key": "user:x", "value": 1, "exactTtl": true})).await;
    assert_eq!(exact["ttl"], 3600);
    assert!(pttl(&app, "user:x").await > 3_599_000);
    let longest = set_internal(&app, json!({"key": "user:vip:1", "value": 1})).await;
    assert_eq!(
        longest["ttl"], 1000,
        "the longest prefix wins, and its jitter is 0"
    );
    let given = set_internal(&app, json!({"key": "user:given", "value": 1, "ttl": 5})).await;
    assert_eq!(given["ttl"], 5);
    let outside = set_internal(&app, json!({"key": "misc:1", "value": 1})).await;
    assert_eq!(
        outside["ttl"], 3600,
        "outside every namespace: CACHE_DEFAULT_TTL"
    );
    assert!(pttl(&app, "misc:1").await > 3_599_000);

    // Batches and the public plane follow the same rules.
    let mset = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [{"key": "session:a", "value": 1}, {"key": "user:vip:b", "value": 2}]}),
        )
        .await;
    assert_eq!(mset.status(), 200);
    let session = pttl(&app, "session:a").await;
    assert!((809_000..=990_000).contains(&session), "{session}");
    assert!((999_000..=1_000_000).contains(&pttl(&app, "user:vip:b").await));
    let writer = app.key(Role::Writer).await;
    let put: Value = json_of(
        app.public(Method::PUT, "/api/v1/cache/keys/user%3Avip%3Ap", &writer)
            .json(&json!({"value": 1})),
    )
    .await;
    assert_eq!(put["ttl"], 1000);
}

#[tokio::test]
async fn a_change_made_through_one_instance_applies_on_another_after_its_refresh() {
    let app = spawn_app().await;
    let mut other = spawn_app().await;
    other.tenant = app.tenant.clone();
    let admin = app.key(Role::Admin).await;
    let before = set_internal(&other, json!({"key": "cart:1", "value": 1})).await;
    assert_eq!(before["ttl"], 3600);

    let created = create(
        &app,
        &admin,
        json!({"prefix": "cart:", "ttl": 77, "ttlJitter": 0}),
    )
    .await;
    assert_eq!(created.status(), 201);
    // The instance that took the change applies it at once ...
    let here = set_internal(&app, json!({"key": "cart:2", "value": 1})).await;
    assert_eq!(here["ttl"], 77);
    // ... the other at its next refresh round (every 2 s).
    cache_api::limits_refresh::refresh(&other.state, "test-instances").await;
    let there = set_internal(&other, json!({"key": "cart:3", "value": 1})).await;
    assert_eq!(there["ttl"], 77);
}

#[tokio::test]
async fn access_patterns_refuse_public_writes_or_reads_and_compression_follows_the_namespace() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    let writer = app.key(Role::Writer).await;
    let readonly = change(&app, &admin, "config:", json!({"access": "read_only"})).await;
    assert_eq!(readonly.status(), 200);
    let writeonly = create(
        &app,
        &admin,
        json!({"prefix": "audit:", "access": "write_only"}),
    )
    .await;
    assert_eq!(writeonly.status(), 201);

    // The platform's services (internal plane) write read-only namespaces.
    set_internal(
        &app,
        json!({"key": "config:flags", "value": {"dark": true}}),
    )
    .await;
    let key_path = |key: &str| format!("/api/v1/cache/keys/{}", encode(key));
    let read = app
        .public(Method::GET, &key_path("config:flags"), &writer)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    for refused in [
        app.public(Method::PUT, &key_path("config:flags"), &writer)
            .json(&json!({"value": 1})),
        app.public(Method::DELETE, &key_path("config:flags"), &writer),
        app.public(
            Method::POST,
            &format!("{}/expire", key_path("config:flags")),
            &writer,
        )
        .json(&json!({"ttl": 5})),
        app.public(
            Method::POST,
            &format!("{}/touch", key_path("config:flags")),
            &writer,
        )
        .json(&json!({"ttl": 5})),
        app.public(Method::GET, &key_path("audit:1"), &writer),
        app.public(
            Method::GET,
            &format!("{}/ttl", key_path("audit:1")),
            &writer,
        ),
    ] {
        let error = assert_error(refused.send().await.unwrap(), 403, "FORBIDDEN").await;
        assert!(
            error["message"].as_str().unwrap().contains("namespace"),
            "{error}"
        );
    }
    let touched = app
        .public(
            Method::POST,
            &format!("{}/touch", key_path("config:flags")),
            &writer,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(touched.status(), 200, "a touch without ttl is a read");
    let wrote = app
        .public(Method::PUT, &key_path("audit:1"), &writer)
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrote.status(), 200);

    // Compression: on above the threshold by default, off where the namespace says so.
    let plain = create(
        &app,
        &admin,
        json!({"prefix": "blob:", "compression": false}),
    )
    .await;
    assert_eq!(plain.status(), 201);
    let big = "abc".repeat(2000);
    set_internal(&app, json!({"key": "blob:1", "value": big})).await;
    set_internal(&app, json!({"key": "user:1", "value": big})).await;
    let mut redis = app.raw_redis().await;
    let tag = async |redis: &mut crate::helpers::RawRedis, key: &str| {
        let head: Vec<u8> = redis
            .getrange(format!("c:{{{}}}:{key}", app.tenant), 9, 9)
            .await
            .unwrap();
        head[0]
    };
    assert_eq!(tag(&mut redis, "blob:1").await, b'J');
    assert_eq!(tag(&mut redis, "user:1").await, b'j');
    let back: Value = app.get("blob:1").await.json().await.unwrap();
    assert_eq!(back["value"], json!(big));
}

async fn stats(app: &TestApp, key: &str, prefix: &str) -> Value {
    json_of(app.public(
        Method::GET,
        &format!("{NAMESPACES}/{}/stats", encode(prefix)),
        key,
    ))
    .await
}

#[tokio::test]
async fn a_namespace_that_rejects_refuses_writes_beyond_max_keys_and_its_stats_count_them() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    let created = create(
        &app,
        &admin,
        json!({"prefix": "cart:", "maxKeys": 3, "overLimit": "reject"}),
    )
    .await;
    assert_eq!(created.status(), 201);
    for i in 1..=3 {
        set_internal(&app, json!({"key": format!("cart:{i}"), "value": "item"})).await;
    }
    let refused = app.set("cart:4", json!("item")).await;
    let error = assert_error(refused, 507, "QUOTA_EXCEEDED").await;
    assert_eq!(
        (
            &error["details"]["limit"],
            &error["details"]["quota"],
            &error["details"]["usage"]
        ),
        (&json!("namespace.maxKeys"), &json!(3), &json!(3))
    );
    assert_eq!(app.get("cart:4").await.status(), 404, "nothing stored");
    // Overwriting is no new key; keys outside the namespace are not counted.
    set_internal(&app, json!({"key": "cart:1", "value": "changed"})).await;
    set_internal(&app, json!({"key": "other:1", "value": 1})).await;
    let batch = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [{"key": "misc:a", "value": 1}, {"key": "cart:5", "value": 1}]}),
        )
        .await;
    assert_error(batch, 507, "QUOTA_EXCEEDED").await;
    assert_eq!(
        app.get("misc:a").await.status(),
        404,
        "a batch is all or nothing"
    );

    let reader = app.key(Role::Reader).await;
    assert_eq!(app.get("cart:1").await.status(), 200);
    assert_eq!(app.get("cart:9").await.status(), 404);
    let figures = stats(&app, &reader, "cart:").await;
    assert_eq!(
        (
            &figures["keys"],
            &figures["maxKeys"],
            &figures["hits"],
            &figures["misses"]
        ),
        (&json!(3), &json!(3), &json!(1), &json!(2)),
        "{figures}"
    );
    // Keys are "cart:N" (6 bytes) and values the envelope of "item"/"changed".
    let expected_bytes = 3 * 6 + (1 + 9) + 2 * (1 + 6);
    assert_eq!(figures["bytes"], expected_bytes, "{figures}");
    assert_eq!(figures["hitRate"].as_f64().unwrap().round(), 33.0);

    // A delete frees a place; an expiry does too.
    let deleted = app
        .internal(Method::DELETE, "/internal/cache/delete/cart%3A1")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    set_internal(&app, json!({"key": "cart:4", "value": "item", "ttl": 1})).await;
    assert_error(app.set("cart:6", json!(1)).await, 507, "QUOTA_EXCEEDED").await;
    let reader2 = reader.clone();
    wait_until(std::time::Duration::from_secs(15), || {
        let app = &app;
        let reader = reader2.clone();
        async move { stats(app, &reader, "cart:").await["keys"] == 2 }
    })
    .await;
    assert_eq!(app.set("cart:6", json!(1)).await.status(), 200);
    let unknown = app
        .public(
            Method::GET,
            &format!("{NAMESPACES}/nothing%3A/stats"),
            &reader,
        )
        .send()
        .await
        .unwrap();
    assert_error(unknown, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn a_namespace_over_max_keys_is_trimmed_of_its_least_recently_used_keys() {
    // A Redis of its own: the usage recount (any worker's, after any test's
    // namespace change) reads every key, which refreshes Redis's idle
    // clocks; here it runs once, before the keys are read.
    let own = crate::helpers::PrivateRedis::start().await;
    let app = spawn_app_with(settings(&["--redis-url", &own.url()])).await;
    let admin = app.key(Role::Admin).await;
    let reader = app.key(Role::Reader).await;
    let created = create(
        &app,
        &admin,
        json!({"prefix": "feed:", "maxKeys": 5, "overLimit": "evict_lru"}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let _keep_longer = create(&app, &admin, json!({"prefix": "feed:pinned:"})).await;
    set_internal(&app, json!({"key": "feed:pinned:1", "value": 1})).await;
    // The recount the namespace changes asked for runs now, then no more.
    let recounting = app.spawn_worker();
    let mut redis = app.raw_redis().await;
    wait_until(std::time::Duration::from_secs(30), || {
        let mut redis = redis.clone();
        async move {
            redis
                .exists::<_, bool>(cache_shared::quota::COUNTED_MARKER)
                .await
                .unwrap()
        }
    })
    .await;
    recounting.stop().await;
    for i in 0..10 {
        set_internal(&app, json!({"key": format!("feed:{i}"), "value": i})).await;
    }
    assert_eq!(
        stats(&app, &reader, "feed:").await["keys"],
        10,
        "accepted beyond the limit"
    );
    // Redis's idle clock counts seconds: wait until the writes are idle, then
    // read half of them, which makes the other half the least recently used.
    let first = format!("c:{{{}}}:feed:0", app.tenant);
    wait_until(std::time::Duration::from_secs(10), || {
        let mut redis = redis.clone();
        let first = first.clone();
        async move {
            let idle: i64 = deadpool_redis::redis::cmd("OBJECT")
                .arg("IDLETIME")
                .arg(&first)
                .query_async(&mut redis)
                .await
                .unwrap();
            idle >= 2
        }
    })
    .await;
    for i in 5..10 {
        assert_eq!(app.get(&format!("feed:{i}")).await.status(), 200);
    }
    let worker = app.spawn_worker();
    wait_until(std::time::Duration::from_secs(30), || {
        let app = &app;
        let reader = reader.clone();
        async move { stats(app, &reader, "feed:").await["keys"] == 5 }
    })
    .await;
    worker.stop().await;
    for i in 0..10 {
        let exists: bool = redis
            .exists(format!("c:{{{}}}:feed:{i}", app.tenant))
            .await
            .unwrap();
        assert_eq!(exists, i >= 5, "feed:{i}");
    }
    assert_eq!(
        app.get("feed:pinned:1").await.status(),
        200,
        "another namespace's key stays"
    );
}

#[tokio::test]
async fn keys_written_before_their_namespace_existed_are_counted_by_the_recount() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    let reader = app.key(Role::Reader).await;
    for i in 0..3 {
        set_internal(&app, json!({"key": format!("old:{i}"), "value": i})).await;
    }
    let created = create(&app, &admin, json!({"prefix": "old:"})).await;
    assert_eq!(created.status(), 201);
    assert_eq!(stats(&app, &reader, "old:").await["keys"], 0);
    let done = cache_shared::quota::reconcile(
        app.state.cache.redis(),
        app.state.cache.namespaces(),
        1000,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(done.namespaces >= 1, "{done:?}");
    let figures = stats(&app, &reader, "old:").await;
    assert_eq!(figures["keys"], 3, "{figures}");
    assert_eq!(figures["bytes"], 3 * (5 + 2), "{figures}");
}

#[tokio::test]
async fn a_tenant_has_at_most_a_hundred_namespaces() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    // The design's five, and 95 more.
    for i in 0..95 {
        let created = create(&app, &admin, json!({"prefix": format!("n{i}:")})).await;
        assert_eq!(created.status(), 201, "namespace {i}");
    }
    let refused = create(&app, &admin, json!({"prefix": "one-more:"})).await;
    let error = assert_error(refused, 400, "VALIDATION_ERROR").await;
    assert!(
        error["message"].as_str().unwrap().contains("100"),
        "{error}"
    );
    let listed: Value = json_of(app.public(Method::GET, NAMESPACES, &admin)).await;
    assert_eq!(listed["namespaces"].as_array().unwrap().len(), 100);
}
