use reqwest::Method;
use serde_json::json;

use crate::helpers::{TOKEN_A, TOKEN_B, assert_error, spawn_app};

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
    let args = crate::helpers::settings(&["--internal-service-token", ""]);
    let app = crate::helpers::spawn_app_with(args).await;
    let response = app
        .client
        .get(app.url("/internal/cache/get/k"))
        .header("X-Service-Token", "")
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "UNAUTHORIZED").await;
}
