//! The public plane: API keys, roles, tenant scoping and the key routes.

use cache_api::routes::policy;
use cache_shared::api_keys::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, encode, settings, spawn_app, spawn_app_with, unique};

/// A request body good enough to get past validation on each route.
fn body_for(method: &str, route: &str, eviction_policy: &str) -> Option<Value> {
    match (method, route) {
        ("PUT", "/api/v1/cache/connections/config") => Some(json!({"commandTimeoutMs": 1000})),
        // The policy Redis already has: the matrix must not change the server.
        ("POST", "/api/v1/cache/eviction/policy") => Some(json!({"policy": eviction_policy})),
        ("POST", "/api/v1/cache/memory/analyze") => Some(json!({})),
        ("PUT", "/api/v1/cache/keys/{key}") => Some(json!({"value": 1})),
        ("POST", "/api/v1/cache/keys/{key}/expire") => Some(json!({"ttl": 60})),
        ("POST", "/api/v1/cache/keys/{key}/touch") => Some(json!({})),
        ("POST", "/api/v1/cache/keys/exists") => Some(json!({"keys": ["k"]})),
        ("POST", "/api/v1/cache/flush") => Some(json!({"namespace": "none-such:"})),
        ("POST", "/api/v1/cache/preload") => Some(json!({"items": [{"key": "p", "value": 1}]})),
        ("POST", "/api/v1/jobs") => Some(json!({"type": "collect_stats", "params": {}})),
        ("POST", "/api/v1/schedules") | ("PUT", "/api/v1/schedules/{id}") => Some(
            json!({"cron": "0 0 1 1 *", "type": "collect_stats", "params": {}, "enabled": false}),
        ),
        ("POST", "/api/v1/admin/keys") => Some(json!({"tenant": "matrix", "role": "reader"})),
        _ => None,
    }
}

fn concrete(route: &str) -> String {
    route
        .replace("{key}", "k")
        .replace("{pattern}", "none-such*")
        .replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
}

#[tokio::test]
async fn every_route_allows_exactly_the_roles_it_should() {
    let app = spawn_app().await;
    let mut raw = app.raw_redis().await;
    let policy: Vec<String> = deadpool_redis::redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut raw)
        .await
        .unwrap();
    for role in Role::ALL {
        let key = app.key(role).await;
        for &(method, route, required) in policy::ROUTES {
            let mut request = app.public(method.parse().unwrap(), &concrete(route), &key);
            if let Some(body) = body_for(method, route, &policy[1]) {
                request = request.json(&body);
            }
            let status = request.send().await.unwrap().status().as_u16();
            if role.allows(required) {
                assert!(
                    ![401, 403].contains(&status),
                    "{role} refused on {method} {route}: {status}"
                );
            } else {
                assert_eq!(status, 403, "{role} on {method} {route}");
            }
        }
    }
}

#[tokio::test]
async fn missing_and_unknown_keys_are_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let bare = app
        .client
        .get(app.url("/api/v1/cache/keys/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.headers()["www-authenticate"], "Bearer");
    assert_error(bare, 401, "UNAUTHORIZED").await;
    let unknown = app
        .public(Method::GET, "/api/v1/cache/keys/k", "csk_not-a-real-key")
        .send()
        .await
        .unwrap();
    assert_error(unknown, 401, "UNAUTHORIZED").await;
    // Routing first: an unknown path is 404 even without credentials.
    let nowhere = app
        .client
        .get(app.url("/api/v1/cache/nowhere"))
        .send()
        .await
        .unwrap();
    assert_error(nowhere, 404, "NOT_FOUND").await;
    let wrong_method = app
        .client
        .patch(app.url("/api/v1/cache/keys/k"))
        .send()
        .await
        .unwrap();
    assert_error(wrong_method, 405, "METHOD_NOT_ALLOWED").await;
}

#[tokio::test]
async fn a_revoked_key_stops_working() {
    let app = spawn_app_with(settings(&["--api-key-cache-seconds", "0"])).await;
    let operator = app.key(Role::Operator).await;
    let created: Value = app
        .public(Method::POST, "/api/v1/admin/keys", &operator)
        .json(&json!({"tenant": app.tenant, "role": "reader", "name": "short-lived"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();
    let ok = app
        .public(Method::GET, "/api/v1/jobs", key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let listed: Value = app
        .public(Method::GET, "/api/v1/admin/keys", &operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = listed.to_string();
    assert!(text.contains(created["id"].as_str().unwrap()));
    assert!(!text.contains(key), "a listing shows a secret");

    let revoked = app
        .public(
            Method::DELETE,
            &format!("/api/v1/admin/keys/{}", created["id"].as_str().unwrap()),
            &operator,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.json::<Value>().await.unwrap()["revoked"], true);
    let refused = app
        .public(Method::GET, "/api/v1/jobs", key)
        .send()
        .await
        .unwrap();
    assert_error(refused, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn values_are_stored_read_and_expired_for_the_keys_tenant() {
    let app = spawn_app().await;
    let key = app.key(Role::Writer).await;
    let put: Value = app
        .public(Method::PUT, "/api/v1/cache/keys/user:1", &key)
        .json(&json!({"value": {"n": 1}, "ttl": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(put, json!({"key": "user:1", "ttl": 100}));
    // The same namespace as the internal plane with X-Tenant-Id.
    let internal: Value = app.get("user:1").await.json().await.unwrap();
    assert_eq!(internal["value"], json!({"n": 1}));

    let ttl: Value = app
        .public(Method::GET, "/api/v1/cache/keys/user:1/ttl", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!((99..=100).contains(&ttl["ttl"].as_i64().unwrap()));
    let touched: Value = app
        .public(Method::POST, "/api/v1/cache/keys/user:1/touch", &key)
        .json(&json!({"ttl": 500}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(touched["touched"], true);
    assert!((499..=500).contains(&touched["ttl"].as_i64().unwrap()));
    let absent: Value = app
        .public(Method::POST, "/api/v1/cache/keys/none/touch", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        absent,
        json!({"key": "none", "touched": false, "ttl": null})
    );
    let expired: Value = app
        .public(Method::POST, "/api/v1/cache/keys/user:1/expire", &key)
        .json(&json!({"ttl": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(expired["updated"], true);
    let exists: Value = app
        .public(Method::POST, "/api/v1/cache/keys/exists", &key)
        .json(&json!({"keys": ["user:1", "user:2"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        exists,
        json!({"count": 1, "exists": {"user:1": true, "user:2": false}})
    );
    let missing_ttl = app
        .public(Method::GET, "/api/v1/cache/keys/user:2/ttl", &key)
        .send()
        .await
        .unwrap();
    assert_error(missing_ttl, 404, "KEY_NOT_FOUND").await;
}

#[tokio::test]
async fn raw_bytes_round_trip() {
    let app = spawn_app().await;
    let key = app.key(Role::Writer).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let put = app
        .public(Method::PUT, "/api/v1/cache/keys/blob?ttl=60", &key)
        .header("Content-Type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.json::<Value>().await.unwrap(),
        json!({"key": "blob", "ttl": 60})
    );
    let raw = app
        .public(Method::GET, "/api/v1/cache/keys/blob", &key)
        .header("Accept", "application/octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["content-type"], "application/octet-stream");
    assert_eq!(raw.bytes().await.unwrap().to_vec(), bytes);
    let as_json: Value = app
        .public(Method::GET, "/api/v1/cache/keys/blob", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(as_json["encoding"], "base64");
    // A JSON value read as bytes is its compact text.
    app.public(Method::PUT, "/api/v1/cache/keys/doc", &key)
        .json(&json!({"value": {"a": [1, 2]}}))
        .send()
        .await
        .unwrap();
    let text = app
        .public(Method::GET, "/api/v1/cache/keys/doc", &key)
        .header("Accept", "application/octet-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, r#"{"a":[1,2]}"#);
    let bad_ttl = app
        .public(Method::PUT, "/api/v1/cache/keys/blob?ttl=-4", &key)
        .header("Content-Type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(bad_ttl, 400, "VALIDATION_ERROR").await;
}

#[tokio::test]
async fn odd_key_paths_stay_literal_keys_of_the_callers_tenant() {
    let app = spawn_app().await;
    let key = app.key(Role::Writer).await;
    for name in ["a/b", "x%2Fy", "*", "a?", "[x]", "...", "c:{other}:k"] {
        let path = format!("/api/v1/cache/keys/{}", encode(name));
        let put = app
            .public(Method::PUT, &path, &key)
            .json(&json!({"value": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200, "{name}");
        let got: Value = app
            .public(Method::GET, &path, &key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["key"], name);
        assert_eq!(got["value"], name);
        let mut raw = app.raw_redis().await;
        let exists: bool = deadpool_redis::redis::cmd("EXISTS")
            .arg(format!("c:{{{}}}:{name}", app.tenant))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(exists, "{name} not stored under the caller's tenant");
    }
}

async fn put(app: &TestApp, key: &str, name: &str, value: Value) {
    let response = app
        .public(Method::PUT, &format!("/api/v1/cache/keys/{name}"), key)
        .json(&json!({ "value": value }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn tenants_whose_ids_prefix_each_other_never_meet() {
    let app = spawn_app().await;
    let t1 = unique("p");
    let t10 = format!("{t1}0");
    let k1 = app.key_for(&t1, Role::Admin).await;
    let k10 = app.key_for(&t10, Role::Admin).await;
    put(&app, &k1, "0:x", json!("t1")).await;
    put(&app, &k10, ":x", json!("t10")).await;
    let from_t10 = app
        .public(Method::GET, "/api/v1/cache/keys/0:x", &k10)
        .send()
        .await
        .unwrap();
    assert_eq!(from_t10.status(), 404);
    let from_t1 = app
        .public(Method::GET, "/api/v1/cache/keys/:x", &k1)
        .send()
        .await
        .unwrap();
    assert_eq!(from_t1.status(), 404);
    // A non-operator cannot name another tenant; an operator can.
    let forbidden = app
        .public(
            Method::GET,
            &format!("/api/v1/cache/keys/0:x?tenant={t1}"),
            &k10,
        )
        .send()
        .await
        .unwrap();
    assert_error(forbidden, 403, "FORBIDDEN").await;
    let operator = app.key(Role::Operator).await;
    let seen: Value = app
        .public(
            Method::GET,
            &format!("/api/v1/cache/keys/0:x?tenant={t1}"),
            &operator,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["value"], "t1");
}

#[tokio::test]
async fn jobs_are_listed_cancelled_and_hidden_from_other_tenants() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    let accepted = app
        .public(Method::POST, "/api/v1/cache/flush", &admin)
        .json(&json!({"pattern": "session:*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let accepted: Value = accepted.json().await.unwrap();
    let id = accepted["jobId"].as_str().unwrap();
    assert_eq!(accepted["statusUrl"], format!("/api/v1/jobs/{id}"));
    assert_eq!(accepted["type"], "flush");

    let listed: Value = app
        .public(Method::GET, "/api/v1/jobs?type=flush&status=queued", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["jobId"], id);
    assert_eq!(listed["jobs"][0]["params"], json!({"pattern": "session:*"}));

    let other = app.key_for(&unique("t"), Role::Admin).await;
    let hidden = app
        .public(Method::GET, &format!("/api/v1/jobs/{id}"), &other)
        .send()
        .await
        .unwrap();
    assert_error(hidden, 404, "NOT_FOUND").await;
    let not_yours = app
        .public(Method::DELETE, &format!("/api/v1/jobs/{id}"), &other)
        .send()
        .await
        .unwrap();
    assert_error(not_yours, 404, "NOT_FOUND").await;

    // No worker runs in this test: the job is still queued and cancels at once.
    let cancelled: Value = app
        .public(Method::DELETE, &format!("/api/v1/jobs/{id}"), &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let again = app
        .public(Method::DELETE, &format!("/api/v1/jobs/{id}"), &admin)
        .send()
        .await
        .unwrap();
    assert_error(again, 409, "CONFLICT").await;

    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "status=done",
        "type=stats_rollup",
    ] {
        let response = app
            .public(Method::GET, &format!("/api/v1/jobs?{bad}"), &admin)
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "VALIDATION_ERROR").await;
    }
    let only_operators = app
        .public(Method::POST, "/api/v1/cache/flush", &admin)
        .json(&json!({"wholeServer": true}))
        .send()
        .await
        .unwrap();
    assert_error(only_operators, 403, "FORBIDDEN").await;
}

#[tokio::test]
async fn a_preload_writes_its_items_and_refuses_bad_ones_up_front() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let admin = app.key(Role::Admin).await;
    let items: Vec<Value> = (0..2500)
        .map(|i| json!({"key": format!("pre:{i}"), "value": {"i": i}, "ttl": 600}))
        .collect();
    let accepted: Value = app
        .public(Method::POST, "/api/v1/cache/preload", &admin)
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = app
        .wait_public_job(&admin, accepted["statusUrl"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"loaded": 2500, "skipped": 0}));
    assert_eq!(job["progress"], json!({"done": 2500, "total": 2500}));
    // The record counts inline items; the items themselves travel in the queue.
    assert_eq!(job["params"], json!({"itemCount": 2500}));
    let got: Value = app
        .public(Method::GET, "/api/v1/cache/keys/pre:2499", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["value"], json!({"i": 2499}));

    // The generic endpoint takes the same job, whatever the order of its fields.
    let generic = app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .header("Content-Type", "application/json")
        .body(r#"{"params": {"items": [{"key": "via-jobs", "value": [1]}]}, "type": "preload"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(generic.status(), 202);
    let unknown = app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .json(&json!({"type": "stats_rollup", "params": {}}))
        .send()
        .await
        .unwrap();
    let body = assert_error(unknown, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["details"]["field"], "type");

    let bad = app
        .public(Method::POST, "/api/v1/cache/preload", &admin)
        .json(&json!({"items": [{"key": "ok", "value": 1}, {"key": "..", "value": 2}]}))
        .send()
        .await
        .unwrap();
    let body = assert_error(bad, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["details"]["field"], "items[1].key");
    worker.stop().await;
}
