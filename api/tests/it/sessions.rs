use deadpool_redis::redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app, unique};

async fn user_index(app: &crate::helpers::TestApp, user: &str) -> Vec<String> {
    let mut redis = app.raw_redis().await;
    let mut ids: Vec<String> = redis
        .smembers(format!("si:{{_platform}}:u:{user}"))
        .await
        .unwrap();
    ids.sort();
    ids
}

async fn tenant_index(app: &crate::helpers::TestApp, tenant: &str) -> Vec<String> {
    let mut redis = app.raw_redis().await;
    let mut ids: Vec<String> = redis
        .smembers(format!("si:{{_platform}}:t:{tenant}"))
        .await
        .unwrap();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_session_is_stored_read_and_deleted_with_its_indexes() {
    let app = spawn_app().await;
    let (sid, user) = (unique("s"), unique("u"));
    let body: Value = app
        .post_json(
            "/internal/cache/session/set",
            json!({"sessionId": sid, "userId": user, "tenantId": app.tenant, "data": {"role": "admin"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"sessionId": sid, "userId": user, "tenantId": app.tenant, "data": {"role": "admin"}, "ttl": 900})
    );
    assert_eq!(user_index(&app, &user).await, vec![sid.clone()]);
    assert_eq!(tenant_index(&app, &app.tenant).await, vec![sid.clone()]);

    for path in [
        format!("/internal/cache/session/get/{sid}"),
        format!("/internal/cache/session/{sid}"),
    ] {
        let body: Value = app
            .internal(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["userId"], json!(user));
        assert_eq!(body["data"], json!({"role": "admin"}));
        assert!((899..=900).contains(&body["ttl"].as_i64().unwrap()));
    }

    let body: Value = app
        .internal(
            Method::DELETE,
            &format!("/internal/cache/session/delete/{sid}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"deleted": true}));
    assert!(user_index(&app, &user).await.is_empty());
    assert!(tenant_index(&app, &app.tenant).await.is_empty());
    let again = app
        .internal(Method::DELETE, &format!("/internal/cache/session/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        json!({"deleted": false})
    );
    let missing = app
        .internal(Method::GET, &format!("/internal/cache/session/{sid}"))
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "KEY_NOT_FOUND").await;
}

#[tokio::test]
async fn sessions_ignore_the_tenant_header() {
    let app = spawn_app().await;
    let (sid, user) = (unique("s"), unique("u"));
    app.post_json(
        "/internal/cache/session",
        json!({"sessionId": sid, "userId": user, "tenantId": app.tenant}),
    )
    .await;
    let other_tenant = app
        .internal(Method::GET, &format!("/internal/cache/session/{sid}"))
        .header("X-Tenant-Id", unique("other"))
        .send()
        .await
        .unwrap();
    assert_eq!(other_tenant.status(), 200);
    let body: Value = other_tenant.json().await.unwrap();
    assert_eq!(body["data"], Value::Null);
}

#[tokio::test]
async fn touch_restarts_the_stored_ttl() {
    let app = spawn_app().await;
    let (sid, user) = (unique("s"), unique("u"));
    app.post_json(
        "/internal/cache/session/set",
        json!({"sessionId": sid, "userId": user, "tenantId": app.tenant, "ttl": 600}),
    )
    .await;
    let key = format!("s:{{_platform}}:{sid}");
    let mut redis = app.raw_redis().await;
    let () = redis.expire(&key, 10).await.unwrap();
    let body: Value = app
        .internal(Method::GET, &format!("/internal/cache/session/{sid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body["ttl"].as_i64().unwrap() <= 10);
    let body: Value = app
        .internal(
            Method::GET,
            &format!("/internal/cache/session/{sid}?touch=true"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!((599..=600).contains(&body["ttl"].as_i64().unwrap()));
    let index_ttl: i64 = redis
        .ttl(format!("si:{{_platform}}:u:{user}"))
        .await
        .unwrap();
    assert!(
        index_ttl >= 599,
        "the user index outlives the session: {index_ttl}"
    );
}

#[tokio::test]
async fn a_session_that_changes_hands_leaves_the_old_owners_index() {
    let app = spawn_app().await;
    let (sid, alice, bob) = (unique("s"), unique("alice"), unique("bob"));
    for user in [&alice, &bob] {
        let response = app
            .post_json(
                "/internal/cache/session/set",
                json!({"sessionId": sid, "userId": user, "tenantId": app.tenant}),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    assert!(user_index(&app, &alice).await.is_empty());
    assert_eq!(user_index(&app, &bob).await, vec![sid]);
}

#[tokio::test]
async fn a_session_without_expiry_keeps_its_indexes_forever() {
    let app = spawn_app().await;
    let (sid, user) = (unique("s"), unique("u"));
    let body: Value = app
        .post_json(
            "/internal/cache/session/set",
            json!({"sessionId": sid, "userId": user, "tenantId": app.tenant, "ttl": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["ttl"], -1);
    let mut redis = app.raw_redis().await;
    let ttl: i64 = redis
        .ttl(format!("si:{{_platform}}:u:{user}"))
        .await
        .unwrap();
    assert_eq!(ttl, -1);
}

#[tokio::test]
async fn invalid_sessions_are_refused() {
    let app = spawn_app().await;
    let cases = [
        (json!({"userId": "u", "tenantId": "t"}), "sessionId"),
        (json!({"sessionId": "s", "tenantId": "t"}), "userId"),
        (
            json!({"sessionId": "s", "userId": "u", "tenantId": "_x"}),
            "tenantId",
        ),
        (
            json!({"sessionId": "s", "userId": "u", "tenantId": "t", "ttl": -3}),
            "ttl",
        ),
        (
            json!({"sessionId": "", "userId": "u", "tenantId": "t"}),
            "sessionId",
        ),
        (
            json!({"sessionId": "s", "userId": 5, "tenantId": "t"}),
            "userId",
        ),
    ];
    for (body, field) in cases {
        let reply = assert_error(
            app.post_json("/internal/cache/session/set", body.clone())
                .await,
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(reply["details"]["field"], field, "{body}");
    }
    let reply = app
        .internal(Method::GET, "/internal/cache/session/s?touch=maybe")
        .send()
        .await
        .unwrap();
    assert_error(reply, 400, "VALIDATION_ERROR").await;
}
