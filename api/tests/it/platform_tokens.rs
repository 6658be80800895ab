//! Platform tokens on the public plane (API.md §11), against fake auth and
//! RBAC services started here: verification, caching, revocation, roles from
//! the token or from RBAC, and failing closed (`503 AUTH_UNAVAILABLE`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cache_shared::api_keys::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, settings, spawn_app_with, unique, wait_until};

const OUTBOUND_TOKEN: &str = "cache-outbound-token";

/// How the fake services answer.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Mode {
    Normal = 0,
    ServerError = 1,
    Malformed = 2,
    /// Answers after longer than the api's deadline.
    Slow = 3,
}

/// A fake of the platform's auth and RBAC services: tokens it knows, the
/// `(userId, tenantId, action)` grants RBAC allows, and what it was asked.
#[derive(Default)]
struct Platform {
    tokens: Mutex<HashMap<String, Value>>,
    grants: Mutex<Vec<(String, String, String)>>,
    auth_mode: AtomicU8,
    rbac_mode: AtomicU8,
    verify_calls: AtomicU64,
    check_calls: AtomicU64,
    /// Every X-Service-Token presented to either service.
    presented: Mutex<Vec<String>>,
    /// Every RBAC question.
    questions: Mutex<Vec<Value>>,
}

impl Platform {
    fn grant_token(&self, token: &str, user: &str, tenant: &str, roles: &[&str]) {
        self.tokens.lock().unwrap().insert(
            token.to_owned(),
            json!({"valid": true, "userId": user, "tenantId": tenant, "roles": roles}),
        );
    }

    fn revoke(&self, token: &str) {
        self.tokens.lock().unwrap().remove(token);
    }

    fn allow(&self, user: &str, tenant: &str, action: &str) {
        self.grants
            .lock()
            .unwrap()
            .push((user.into(), tenant.into(), action.into()));
    }

    fn set_auth(&self, mode: Mode) {
        self.auth_mode.store(mode as u8, Ordering::SeqCst);
    }

    fn set_rbac(&self, mode: Mode) {
        self.rbac_mode.store(mode as u8, Ordering::SeqCst);
    }

    fn note(&self, headers: &HeaderMap) {
        let token = headers
            .get("x-service-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.presented.lock().unwrap().push(token);
    }
}

/// Answers per `mode`, or `None` to answer normally.
async fn faulty(mode: u8) -> Option<Response> {
    match mode {
        1 => Some((StatusCode::BAD_GATEWAY, "upstream down").into_response()),
        2 => Some((StatusCode::OK, "<html>not json</html>").into_response()),
        3 => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Some(axum::Json(json!({"valid": false, "allowed": false})).into_response())
        }
        _ => None,
    }
}

async fn verify(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    platform.verify_calls.fetch_add(1, Ordering::SeqCst);
    platform.note(&headers);
    if let Some(response) = faulty(platform.auth_mode.load(Ordering::SeqCst)).await {
        return response;
    }
    let token = body["token"].as_str().unwrap_or("");
    if token.starts_with("expired-") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let known = platform.tokens.lock().unwrap().get(token).cloned();
    axum::Json(known.unwrap_or_else(|| json!({"valid": false}))).into_response()
}

async fn check(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    platform.check_calls.fetch_add(1, Ordering::SeqCst);
    platform.note(&headers);
    platform.questions.lock().unwrap().push(body.clone());
    if let Some(response) = faulty(platform.rbac_mode.load(Ordering::SeqCst)).await {
        return response;
    }
    let asked = (
        body["userId"].as_str().unwrap_or("").to_owned(),
        body["tenantId"].as_str().unwrap_or("").to_owned(),
        body["action"].as_str().unwrap_or("").to_owned(),
    );
    let allowed = body["resource"] == "cache" && platform.grants.lock().unwrap().contains(&asked);
    axum::Json(json!({ "allowed": allowed })).into_response()
}

/// Starts the fake services on a free port; returns them and their base URL.
async fn start_platform() -> (Arc<Platform>, String) {
    let platform = Arc::new(Platform::default());
    let router = axum::Router::new()
        .route("/internal/auth/verify-token", axum::routing::post(verify))
        .route("/internal/permissions/check", axum::routing::post(check))
        .with_state(Arc::clone(&platform));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (platform, url)
}

async fn app_with(auth: &str, rbac: Option<&str>, extra: &[&str]) -> TestApp {
    let mut args = vec![
        "--auth-service-url",
        auth,
        "--outbound-service-token",
        OUTBOUND_TOKEN,
        "--auth-timeout-ms",
        "500",
    ];
    if let Some(rbac) = rbac {
        args.extend(["--rbac-service-url", rbac]);
    }
    args.extend_from_slice(extra);
    spawn_app_with(settings(&args)).await
}

fn put(app: &TestApp, token: &str, key: &str, value: Value) -> reqwest::RequestBuilder {
    app.public(Method::PUT, &format!("/api/v1/cache/keys/{key}"), token)
        .json(&json!({ "value": value }))
}

fn get(app: &TestApp, token: &str, key: &str) -> reqwest::RequestBuilder {
    app.public(Method::GET, &format!("/api/v1/cache/keys/{key}"), token)
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_platform_token_acts_for_its_user_and_tenant_with_its_best_role() {
    let (platform, url) = start_platform().await;
    let app = app_with(&url, None, &[]).await;
    let token = unique("tok");
    platform.grant_token(
        &token,
        "alice",
        &app.tenant,
        &["viewer", "writer", "reader"],
    );

    assert_eq!(
        status(put(&app, &token, "profile", json!({"n": 1}))).await,
        200
    );
    let read = get(&app, &token, "profile").send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.json::<Value>().await.unwrap()["value"],
        json!({"n": 1})
    );
    // The write landed in the token's tenant, seen from the internal plane.
    assert_eq!(app.get("profile").await.status(), 200);

    // Writer is the best of its roles that is ours: admin routes are refused.
    let flush = app
        .public(Method::POST, "/api/v1/cache/flush", &token)
        .send()
        .await
        .unwrap();
    assert_error(flush, 403, "FORBIDDEN").await;
    // Another tenant is an operator's business only.
    let other = app
        .public(
            Method::GET,
            "/api/v1/cache/keys/profile?tenant=other",
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_error(other, 403, "FORBIDDEN").await;

    // One verification served every request so far, presenting our token.
    assert_eq!(platform.verify_calls.load(Ordering::SeqCst), 1);
    assert!(
        platform
            .presented
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == OUTBOUND_TOKEN)
    );

    // The user is the actor of the operation log.
    let records = app.state.cache.stats().oplog().unwrap().take_batch();
    assert!(
        records
            .iter()
            .any(|r| r.actor.as_deref() == Some("user:alice") && r.operation == "set"),
        "{records:?}"
    );

    // Roles of the platform that are none of ours give no access.
    let viewer = unique("tok");
    platform.grant_token(&viewer, "carol", &app.tenant, &["viewer"]);
    assert_error(
        get(&app, &viewer, "profile").send().await.unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;

    // A schedule fires as its creator's API key: a platform token cannot own one.
    let admin = unique("tok");
    platform.grant_token(&admin, "ada", &app.tenant, &["admin"]);
    let schedule = app
        .public(Method::POST, "/api/v1/schedules", &admin)
        .json(&json!({"cron": "0 3 * * *", "type": "memory_analysis"}))
        .send()
        .await
        .unwrap();
    assert_error(schedule, 403, "FORBIDDEN").await;

    // Credentials come first: a bad ?tenant= without any is 401, not 400.
    let anonymous = app
        .client
        .get(app.url("/api/v1/cache/keys/k?tenant=not%20a%20tenant"))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, 401, "UNAUTHORIZED").await;

    // API keys keep working beside platform tokens.
    let key = app.key(Role::Reader).await;
    assert_eq!(status(get(&app, &key, "profile")).await, 200);
}

#[tokio::test]
async fn invalid_and_revoked_tokens_are_refused_within_the_cache_time() {
    let (platform, url) = start_platform().await;
    let app = app_with(&url, None, &["--auth-cache-seconds", "1"]).await;
    let token = unique("tok");
    platform.grant_token(&token, "alice", &app.tenant, &["reader"]);

    for unknown in [unique("nope"), unique("expired")] {
        let refused = get(&app, &unknown, "k").send().await.unwrap();
        assert_eq!(
            refused.headers()["www-authenticate"].to_str().unwrap(),
            "Bearer"
        );
        assert_error(refused, 401, "UNAUTHORIZED").await;
    }

    assert_eq!(status(get(&app, &token, "k")).await, 404);
    platform.revoke(&token);
    // Refused once the remembered answer is older than AUTH_CACHE_SECONDS.
    wait_until(Duration::from_secs(5), || async {
        status(get(&app, &token, "k")).await == 401
    })
    .await;
    // An invalid answer is remembered as well: asking again costs no call.
    let calls = platform.verify_calls.load(Ordering::SeqCst);
    assert_eq!(status(get(&app, &token, "k")).await, 401);
    assert_eq!(platform.verify_calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn concurrent_requests_with_a_new_token_share_one_verification() {
    let (platform, url) = start_platform().await;
    let app = app_with(&url, None, &[]).await;
    let token = unique("tok");
    platform.grant_token(&token, "dave", &app.tenant, &["reader"]);
    let reads = (0..32).map(|_| status(get(&app, &token, "missing")));
    let statuses = futures::future::join_all(reads).await;
    assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
    assert_eq!(platform.verify_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn rbac_decides_each_routes_role_and_its_answers_are_cached() {
    let (platform, url) = start_platform().await;
    let app = app_with(&url, Some(&url), &[]).await;
    let token = unique("tok");
    // The token's own roles would allow everything: RBAC decides instead.
    platform.grant_token(&token, "bob", &app.tenant, &["operator"]);
    platform.allow("bob", &app.tenant, "reader");

    assert_eq!(status(get(&app, &token, "k")).await, 404);
    assert_eq!(status(get(&app, &token, "k")).await, 404);
    let refused = put(&app, &token, "k", json!(1)).send().await.unwrap();
    let error = assert_error(refused, 403, "FORBIDDEN").await;
    assert!(
        error["message"].as_str().unwrap().contains("writer"),
        "{error}"
    );

    let questions = platform.questions.lock().unwrap().clone();
    // Reader is allowed, so the next role up is asked too (and refused).
    assert_eq!(
        questions,
        vec![
            json!({"userId": "bob", "tenantId": app.tenant, "resource": "cache", "action": "reader"}),
            json!({"userId": "bob", "tenantId": app.tenant, "resource": "cache", "action": "writer"}),
        ]
    );

    // A user RBAC allows more than a route needs acts with its highest role.
    let olga = unique("tok");
    platform.grant_token(&olga, "olga", &app.tenant, &[]);
    for role in ["reader", "writer", "admin"] {
        platform.allow("olga", &app.tenant, role);
    }
    let answer: Value = app
        .public(Method::GET, "/api/v1/cache/status", &olga)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["role"], "admin", "{answer}");

    platform.allow("bob", &app.tenant, "operator");
    // The writer refusal is remembered; asking for another tenant needs operator.
    assert_eq!(status(put(&app, &token, "k", json!(1))).await, 403);
    let other = format!("/api/v1/cache/keys/k?tenant={}", unique("other"));
    assert_eq!(status(app.public(Method::GET, &other, &token)).await, 404);
}

#[tokio::test]
async fn an_unreachable_failing_or_garbled_platform_is_503_never_an_open_door() {
    let (platform, url) = start_platform().await;
    let app = app_with(&url, Some(&url), &["--auth-cache-seconds", "0"]).await;
    let token = unique("tok");
    platform.grant_token(&token, "erin", &app.tenant, &["admin"]);
    platform.allow("erin", &app.tenant, "reader");
    assert_eq!(status(get(&app, &token, "k")).await, 404);

    for mode in [Mode::ServerError, Mode::Malformed, Mode::Slow] {
        platform.set_rbac(mode);
        let refused = get(&app, &token, "k").send().await.unwrap();
        assert_eq!(refused.headers()["retry-after"], "1");
        let error = assert_error(refused, 503, "AUTH_UNAVAILABLE").await;
        assert_eq!(error["details"]["retryable"], true);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("rbac"),
            "{error}"
        );
    }
    platform.set_rbac(Mode::Normal);

    for mode in [Mode::ServerError, Mode::Malformed, Mode::Slow] {
        platform.set_auth(mode);
        let error = assert_error(
            get(&app, &token, "k").send().await.unwrap(),
            503,
            "AUTH_UNAVAILABLE",
        )
        .await;
        assert!(
            error["message"].as_str().unwrap().contains("auth"),
            "{error}"
        );
    }
    // A failing service is retried before giving up (the design's count).
    let before = platform.verify_calls.load(Ordering::SeqCst);
    platform.set_auth(Mode::ServerError);
    assert_eq!(status(get(&app, &token, "k")).await, 503);
    assert_eq!(platform.verify_calls.load(Ordering::SeqCst) - before, 4);
    platform.set_auth(Mode::Normal);
    assert_eq!(status(get(&app, &token, "k")).await, 404);

    // Nothing listening at all.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let down = app_with(&closed, None, &[]).await;
    assert_error(
        get(&down, &token, "k").send().await.unwrap(),
        503,
        "AUTH_UNAVAILABLE",
    )
    .await;
    // API keys do not depend on the platform.
    let key = down.key(Role::Reader).await;
    assert_eq!(status(get(&down, &key, "k")).await, 404);

    // A user id the service's records cannot hold is a malformed answer.
    let long = unique("tok");
    platform.grant_token(&long, &"u".repeat(201), &app.tenant, &["reader"]);
    platform.allow(&"u".repeat(201), &app.tenant, "reader");
    let refused = get(&app, &long, "k").send().await.unwrap();
    assert_error(refused, 503, "AUTH_UNAVAILABLE").await;
}
