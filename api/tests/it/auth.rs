use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    CuttablePostgres, TOKEN_A, TOKEN_B, assert_error, settings, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn internal_routes_need_a_service_token() {
    let app = spawn_app().await;
    let routes = [
        (Method::GET, "/internal/cache/get/k"),
        (Method::POST, "/internal/cache/set"),
        (Method::DELETE, "/internal/cache/delete/k"),
        (Method::POST, "/internal/cache/mget"),
        (Method::POST, "/internal/cache/mset"),
        (Method::POST, "/internal/cache/exists"),
        (Method::POST, "/internal/cache/expire"),
        (Method::POST, "/internal/cache/session/set"),
        (Method::GET, "/internal/cache/session/get/s"),
        (Method::DELETE, "/internal/cache/session/delete/s"),
        (Method::POST, "/internal/cache/permission/set"),
        (Method::GET, "/internal/cache/permission/get?key=a"),
        (
            Method::DELETE,
            "/internal/cache/permission/invalidate?userId=u",
        ),
        (Method::GET, "/internal/cache/metrics"),
        (Method::GET, "/internal/cache/health"),
    ];
    for (method, path) in routes {
        let missing = app
            .client
            .request(method.clone(), app.url(path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let body = assert_error(missing, 401, "UNAUTHORIZED").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("X-Service-Token")
        );
        let wrong = app
            .client
            .request(method, app.url(path))
            .header("X-Service-Token", format!("{TOKEN_A}x"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_error(wrong, 401, "UNAUTHORIZED").await;
    }
}

#[tokio::test]
async fn both_rotated_tokens_are_accepted() {
    let app = spawn_app().await;
    for token in [TOKEN_A, TOKEN_B] {
        let response = app
            .client
            .post(app.url("/internal/cache/set"))
            .header("X-Service-Token", token)
            .header("X-Tenant-Id", &app.tenant)
            .json(&json!({"key": token, "value": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{token}");
    }
}

#[tokio::test]
async fn routing_comes_before_authentication() {
    let app = spawn_app().await;
    for (method, path, status, code) in [
        (Method::GET, "/internal/cache/nope", 404, "NOT_FOUND"),
        (Method::GET, "/nope", 404, "NOT_FOUND"),
        (
            Method::PUT,
            "/internal/cache/set",
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::POST,
            "/internal/cache/get/k",
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (Method::DELETE, "/health", 405, "METHOD_NOT_ALLOWED"),
    ] {
        let bare = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_error(bare, status, code).await;
        let with_token = app.internal(method, path).send().await.unwrap();
        assert_error(with_token, status, code).await;
    }
}

#[tokio::test]
async fn without_configured_tokens_the_internal_plane_refuses_everyone() {
    let args = settings(&["--internal-service-token", ""]);
    let app = spawn_app_with(args).await;
    let response = app
        .client
        .get(app.url("/internal/cache/get/k"))
        .header("X-Service-Token", "")
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn random_bearer_tokens_neither_evict_valid_keys_nor_reach_postgres_beyond_a_budget() {
    use cache_api::key_cache::FAILED_AUTH_BUDGET;
    use cache_shared::api_keys::Role;

    let app = spawn_app().await;
    let reader = app.key(Role::Reader).await;
    let status = |key: String| {
        let app = &app;
        async move {
            app.public(Method::GET, "/api/v1/cache/keys/k", &key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(reader.clone()).await, 404, "the valid key works");
    let before = app.state.key_cache.queries();
    let mut refused = Vec::new();
    for chunk in 0..20 {
        let answers = futures::future::join_all(
            (0..100).map(|i| status(format!("csk_random-{chunk}-{i}-{}", ulid::Ulid::new()))),
        )
        .await;
        refused.extend(answers);
    }
    let unauthorized = refused.iter().filter(|s| **s == 401).count();
    let limited = refused.iter().filter(|s| **s == 429).count();
    assert_eq!(unauthorized + limited, refused.len(), "{refused:?}");
    assert!(
        limited > 1000,
        "the address's budget ran out: {limited} limited"
    );
    let queries = app.state.key_cache.queries() - before;
    assert!(
        queries <= u64::from(FAILED_AUTH_BUDGET) + 100,
        "{queries} PostgreSQL lookups for 2000 unknown tokens"
    );
    // The valid key, remembered, still answers from the same address.
    assert_eq!(status(reader).await, 404);
    assert!(app.state.key_cache.known_keys() >= 1);
}

#[tokio::test]
async fn while_postgres_is_down_recently_seen_keys_keep_working_and_others_fail_closed() {
    use cache_shared::api_keys::Role;

    let base = spawn_app().await;
    let reader = base.key(Role::Reader).await;
    let unseen = base.key(Role::Reader).await;
    let relay = CuttablePostgres::start().await;
    let url = relay.url_for(&base.database_url);
    let app = spawn_app_with(settings(&[
        "--database-url",
        &url,
        // Every request looks the key up: only the stale window can answer.
        "--api-key-cache-seconds",
        "0",
        "--api-key-stale-seconds",
        "300",
    ]))
    .await;
    let get = |key: String| {
        let app = &app;
        async move {
            app.public(Method::GET, "/api/v1/cache/keys/k", &key)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(get(reader.clone()).await.status(), 404);
    relay.cut();
    assert_eq!(
        get(reader).await.status(),
        404,
        "seen recently: still served"
    );
    let unknown = get(unseen).await;
    assert_error(unknown, 503, "STORE_UNAVAILABLE").await;
}
