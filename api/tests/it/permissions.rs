use deadpool_redis::redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app, unique};

async fn set(app: &TestApp, key: &str, result: Value) -> reqwest::Response {
    app.post_json(
        "/internal/cache/permission/set",
        json!({"key": key, "result": result}),
    )
    .await
}

async fn invalidate(app: &TestApp, query: &str) -> u64 {
    let body: Value = app
        .internal(
            Method::DELETE,
            &format!("/internal/cache/permission/invalidate?{query}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["invalidated"].as_u64().unwrap()
}

async fn exists(app: &TestApp, key: &str) -> bool {
    app.internal(
        Method::GET,
        &format!("/internal/cache/permission/get?key={key}"),
    )
    .send()
    .await
    .unwrap()
    .status()
        == 200
}

#[tokio::test]
async fn a_permission_is_read_by_key_or_by_parts() {
    let app = spawn_app().await;
    let (user, tenant) = (unique("u"), unique("t"));
    let key = format!("permission:{user}:{tenant}:doc:read");
    let body: Value = set(&app, &key, json!({"allowed": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"key": key, "ttl": 300}));
    for query in [
        format!("key={key}"),
        format!("userId={user}&tenantId={tenant}&resource=doc&action=read"),
    ] {
        let body: Value = app
            .internal(
                Method::GET,
                &format!("/internal/cache/permission/get?{query}"),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["key"], json!(key));
        assert_eq!(body["result"], json!({"allowed": true}));
        assert!((299..=300).contains(&body["ttl"].as_i64().unwrap()));
    }
    let alias = app
        .post_json(
            "/internal/cache/permission",
            json!({"key": key, "result": false, "ttl": 60}),
        )
        .await;
    assert_eq!(alias.json::<Value>().await.unwrap()["ttl"], 60);
    let missing = app
        .internal(
            Method::GET,
            &format!("/internal/cache/permission/get?key=permission:{user}:{tenant}:doc:write"),
        )
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "KEY_NOT_FOUND").await;
}

#[tokio::test]
async fn malformed_permission_keys_are_refused() {
    let app = spawn_app().await;
    for key in [
        "permission:u:t:doc",
        "perm:u:t:doc:read",
        "permission::t:doc:read",
        "permission:u:t:doc:",
        "user:1",
    ] {
        let body = assert_error(set(&app, key, json!(true)).await, 400, "VALIDATION_ERROR").await;
        assert_eq!(body["details"]["field"], "key");
    }
    let response = app
        .internal(
            Method::GET,
            "/internal/cache/permission/get?userId=u&tenantId=t",
        )
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "VALIDATION_ERROR").await;
    let response = app
        .internal(Method::DELETE, "/internal/cache/permission/invalidate")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "VALIDATION_ERROR").await;
}

#[tokio::test]
async fn invalidation_by_user_tenant_or_both_drops_exactly_those_entries() {
    let app = spawn_app().await;
    let (u1, u2, t1, t2) = (unique("u"), unique("u"), unique("t"), unique("t"));
    let key = |u: &str, t: &str, r: &str| format!("permission:{u}:{t}:{r}:read");
    for (u, t, r) in [
        (&u1, &t1, "a"),
        (&u1, &t1, "b"),
        (&u1, &t2, "a"),
        (&u2, &t1, "a"),
        (&u2, &t2, "a"),
    ] {
        assert_eq!(set(&app, &key(u, t, r), json!(true)).await.status(), 200);
    }

    assert_eq!(
        invalidate(&app, &format!("userId={u1}&tenantId={t1}")).await,
        2
    );
    assert!(!exists(&app, &key(&u1, &t1, "a")).await);
    assert!(exists(&app, &key(&u1, &t2, "a")).await);
    assert!(exists(&app, &key(&u2, &t1, "a")).await);

    assert_eq!(invalidate(&app, &format!("tenantId={t2}")).await, 2);
    assert!(!exists(&app, &key(&u2, &t2, "a")).await);
    assert!(exists(&app, &key(&u2, &t1, "a")).await);

    assert_eq!(invalidate(&app, &format!("userId={u2}")).await, 1);
    assert_eq!(
        invalidate(&app, &format!("key={}", key(&u2, &t1, "a"))).await,
        0
    );

    // Every index is empty now: nothing stale is left to scan or count.
    let mut redis = app.raw_redis().await;
    for index in [
        format!("pi:{{_platform}}:u:{u1}"),
        format!("pi:{{_platform}}:u:{u2}"),
        format!("pi:{{_platform}}:t:{t1}"),
        format!("pi:{{_platform}}:t:{t2}"),
    ] {
        let n: u64 = redis.scard(&index).await.unwrap();
        assert_eq!(n, 0, "{index}");
    }
}

#[tokio::test]
async fn invalidating_one_key_leaves_its_neighbours() {
    let app = spawn_app().await;
    let (u, t) = (unique("u"), unique("t"));
    let read = format!("permission:{u}:{t}:doc:read");
    let write = format!("permission:{u}:{t}:doc:write");
    set(&app, &read, json!(true)).await;
    set(&app, &write, json!(false)).await;
    assert_eq!(invalidate(&app, &format!("key={read}")).await, 1);
    assert!(!exists(&app, &read).await);
    assert!(exists(&app, &write).await);
    let mut redis = app.raw_redis().await;
    let members: Vec<String> = redis
        .smembers(format!("pi:{{_platform}}:u:{u}"))
        .await
        .unwrap();
    assert_eq!(members, vec![write]);
}
