use deadpool_redis::redis::{self, AsyncCommands};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{assert_error, encode, settings, spawn_app, spawn_app_with, unique};

#[tokio::test]
async fn a_value_set_is_read_back_exactly_with_its_ttl() {
    let app = spawn_app().await;
    let value =
        json!({"name": "Ada", "n": 1.50, "big": 12345678901234567890u64, "list": [null, true]});
    let body: Value = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "user:1", "value": value, "ttl": 120}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"key": "user:1", "ttl": 120}));

    let response = app.get("user:1").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["key"], "user:1");
    assert_eq!(body["value"], value);
    let ttl = body["ttl"].as_i64().unwrap();
    assert!((119..=120).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn numbers_are_stored_exactly_as_sent() {
    let app = spawn_app().await;
    let response = app
        .internal(Method::POST, "/internal/cache/set")
        .header("content-type", "application/json")
        .body(r#"{"key":"n","value":[1.10, 1e400, 123456789012345678901234567890]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = app.get("n").await.text().await.unwrap();
    assert!(
        text.contains(r#""value":[1.10,1e400,123456789012345678901234567890]"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_key_is_key_not_found() {
    let app = spawn_app().await;
    let body = assert_error(app.get("absent").await, 404, "KEY_NOT_FOUND").await;
    assert_eq!(body["details"]["key"], "absent");
    assert_eq!(body["details"]["operation"], "get");
}

#[tokio::test]
async fn default_ttl_applies_and_zero_means_no_expiry() {
    let app = spawn_app().await;
    let body: Value = app.set("d", json!(1)).await.json().await.unwrap();
    assert_eq!(body["ttl"], 3600);
    let body: Value = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "p", "value": 1, "ttl": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["ttl"], -1);
    let body: Value = app.get("p").await.json().await.unwrap();
    assert_eq!(body["ttl"], -1);
}

#[tokio::test]
async fn delete_reports_whether_a_key_was_there() {
    let app = spawn_app().await;
    app.set("gone", json!("x")).await;
    for expected in [true, false] {
        let body: Value = app
            .internal(Method::DELETE, "/internal/cache/delete/gone")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body, json!({"key": "gone", "deleted": expected}));
    }
    assert_eq!(app.get("gone").await.status(), 404);
}

#[tokio::test]
async fn mget_answers_in_request_order_with_misses() {
    let app = spawn_app().await;
    app.set("a", json!(1)).await;
    app.set("c", json!({"x": 3})).await;
    let body: Value = app
        .post_json(
            "/internal/cache/mget",
            json!({"keys": ["c", "b", "a", "c"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let items = body["items"].as_array().unwrap();
    let summary: Vec<(String, bool, Value)> = items
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_owned(),
                i["found"].as_bool().unwrap(),
                i.get("value").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("c".into(), true, json!({"x": 3})),
            ("b".into(), false, Value::Null),
            ("a".into(), true, json!(1)),
            ("c".into(), true, json!({"x": 3})),
        ]
    );
    assert!(items[1].get("ttl").is_none());
    assert_eq!(items[0]["ttl"], 3600);
}

#[tokio::test]
async fn mset_stores_every_item_with_its_own_ttl() {
    let app = spawn_app().await;
    let body: Value = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [
                {"key": "m1", "value": 1, "ttl": 50},
                {"key": "m2", "value": [2], "ttl": 0},
                {"key": "m3", "value": "three"}
            ]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"stored": 3}));
    let mut ttls = Vec::new();
    for key in ["m1", "m2", "m3"] {
        let body: Value = app.get(key).await.json().await.unwrap();
        ttls.push(body["ttl"].as_i64().unwrap());
    }
    assert!((49..=50).contains(&ttls[0]));
    assert_eq!(ttls[1], -1);
    assert!((3599..=3600).contains(&ttls[2]));
}

#[tokio::test]
async fn mset_with_one_bad_item_stores_nothing() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [
                {"key": "ok1", "value": 1},
                {"key": "..", "value": 2},
                {"key": "ok2", "value": 3}
            ]}),
        )
        .await;
    let body = assert_error(response, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["details"]["field"], "items[1].key");
    assert_eq!(app.get("ok1").await.status(), 404);
    assert_eq!(app.get("ok2").await.status(), 404);
}

#[tokio::test]
async fn concurrent_readers_never_see_half_of_an_mset() {
    let app = spawn_app().await;
    let items: Vec<Value> = (0..200)
        .map(|i| json!({"key": format!("batch:{i}"), "value": i}))
        .collect();
    let keys: Vec<String> = (0..200).map(|i| format!("batch:{i}")).collect();
    let writer = app.post_json("/internal/cache/mset", json!({ "items": items }));
    let reader = async {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let body: Value = app
                .post_json("/internal/cache/mget", json!({ "keys": keys }))
                .await
                .json()
                .await
                .unwrap();
            let found = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["found"] == true)
                .count();
            seen.push(found);
        }
        seen
    };
    let (written, seen) = tokio::join!(writer, reader);
    assert_eq!(written.status(), 200);
    assert!(
        seen.iter().all(|&n| n == 0 || n == 200),
        "a reader saw a partial batch: {seen:?}"
    );
}

#[tokio::test]
async fn exists_counts_distinct_keys_found() {
    let app = spawn_app().await;
    app.set("e1", json!(1)).await;
    let body: Value = app
        .post_json(
            "/internal/cache/exists",
            json!({"keys": ["e1", "e2", "e1"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"count": 1, "exists": {"e1": true, "e2": false}})
    );
}

#[tokio::test]
async fn expire_sets_and_removes_expiry() {
    let app = spawn_app().await;
    app.set("x", json!(1)).await;
    let body: Value = app
        .post_json("/internal/cache/expire", json!({"key": "x", "ttl": 30}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"key": "x", "updated": true}));
    let ttl = app.get("x").await.json::<Value>().await.unwrap()["ttl"]
        .as_i64()
        .unwrap();
    assert!((29..=30).contains(&ttl));

    let body: Value = app
        .post_json("/internal/cache/expire", json!({"key": "x", "ttl": 0}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["updated"], true);
    assert_eq!(app.get("x").await.json::<Value>().await.unwrap()["ttl"], -1);

    let body: Value = app
        .post_json("/internal/cache/expire", json!({"key": "nope", "ttl": 30}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"key": "nope", "updated": false}));
}

#[tokio::test]
async fn tenants_never_see_each_others_keys() {
    let app = spawn_app().await;
    let other = unique("t");
    app.set("shared-name", json!("mine")).await;
    let as_other = |method: Method, path: &str| {
        app.client
            .request(method, app.url(path))
            .header("X-Service-Token", crate::helpers::TOKEN_A)
            .header("X-Tenant-Id", &other)
    };
    let response = as_other(Method::GET, "/internal/cache/get/shared-name")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = as_other(Method::POST, "/internal/cache/exists")
        .json(&json!({"keys": ["shared-name"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["count"], 0);
    let body: Value = as_other(Method::DELETE, "/internal/cache/delete/shared-name")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["deleted"], false);
    // Without X-Tenant-Id the caller is the platform: a namespace of its own.
    let platform = app
        .client
        .get(app.url("/internal/cache/get/shared-name"))
        .header("X-Service-Token", crate::helpers::TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(platform.status(), 404);
    assert_eq!(app.get("shared-name").await.status(), 200);
}

#[tokio::test]
async fn tenant_ids_that_prefix_each_other_stay_apart() {
    let app = spawn_app().await;
    let t1 = unique("p");
    let t10 = format!("{t1}0");
    let set = |tenant: &str, key: &str| {
        app.internal(Method::POST, "/internal/cache/set")
            .header("X-Tenant-Id", tenant)
            .json(&json!({"key": key, "value": tenant}))
            .send()
    };
    set(&t1, "0:k").await.unwrap();
    set(&t10, ":k").await.unwrap();
    for (tenant, key) in [(&t1, "0:k"), (&t10, ":k")] {
        let body: Value = app
            .internal(Method::GET, &format!("/internal/cache/get/{}", encode(key)))
            .header("X-Tenant-Id", tenant.as_str())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["value"], json!(tenant), "{tenant} {key}");
    }
}

#[tokio::test]
async fn glob_characters_in_keys_are_literal() {
    let app = spawn_app().await;
    for key in [
        "a*",
        "ab",
        "a?",
        "[a]",
        "a\\b",
        "*",
        "x/y",
        "{t}:z",
        "with space",
    ] {
        assert_eq!(app.set(key, json!(key)).await.status(), 200, "{key}");
    }
    for key in [
        "a*",
        "ab",
        "a?",
        "[a]",
        "a\\b",
        "*",
        "x/y",
        "{t}:z",
        "with space",
    ] {
        let body: Value = app.get(key).await.json().await.unwrap();
        assert_eq!(body["key"], key);
        assert_eq!(body["value"], key);
    }
    let body: Value = app
        .internal(
            Method::DELETE,
            &format!("/internal/cache/delete/{}", encode("*")),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["deleted"], true);
    assert_eq!(app.get("a*").await.status(), 200);
    assert_eq!(app.get("ab").await.status(), 200);
}

#[tokio::test]
async fn large_compressible_values_are_stored_compressed() {
    let app = spawn_app().await;
    let text = "compressible ".repeat(500);
    app.set("big", json!(text)).await;
    let mut redis = app.raw_redis().await;
    let stored: Vec<u8> = redis
        .get(format!("c:{{{}}}:big", app.tenant))
        .await
        .unwrap();
    // Behind the expiry header (`T` + 8 bytes).
    assert_eq!(stored[0], b'T', "expiry header");
    assert_eq!(stored[9], b'j', "JSON+LZ4 tag");
    assert!(
        stored.len() < text.len() / 4,
        "{} bytes stored",
        stored.len()
    );
    let body: Value = app.get("big").await.json().await.unwrap();
    assert_eq!(body["value"], json!(text));

    app.set("small", json!("tiny")).await;
    let stored: Vec<u8> = redis
        .get(format!("c:{{{}}}:small", app.tenant))
        .await
        .unwrap();
    assert_eq!(&stored[9..], b"J\"tiny\"");
}

#[tokio::test]
async fn raw_bytes_values_read_back_as_base64() {
    let app = spawn_app().await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let codec = cache_shared::codec::Codec::new(1024);
    let stored = codec.encode(&cache_shared::codec::Value::Bytes(bytes.clone().into()));
    let mut redis = app.raw_redis().await;
    let () = redis::cmd("SET")
        .arg(format!("c:{{{}}}:blob", app.tenant))
        .arg(stored)
        .query_async(&mut redis)
        .await
        .unwrap();
    let body: Value = app.get("blob").await.json().await.unwrap();
    assert_eq!(body["encoding"], "base64");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(body["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, bytes);
}

#[tokio::test]
async fn an_mget_answer_is_bounded_by_its_total_bytes() {
    let app = spawn_app_with(settings(&["--mget-max-bytes", "100"])).await;
    let sixty = "x".repeat(57); // "J" + the quoted string: 60 stored bytes
    for key in ["a", "b"] {
        assert_eq!(app.set(key, json!(sixty)).await.status(), 200);
    }
    let one = app
        .post_json("/internal/cache/mget", json!({"keys": ["a", "missing"]}))
        .await;
    assert_eq!(one.status(), 200);
    let both = app
        .post_json("/internal/cache/mget", json!({"keys": ["a", "b"]}))
        .await;
    let error = assert_error(both, 413, "PAYLOAD_TOO_LARGE").await;
    assert_eq!(error["details"]["limit"], 100);
    assert!(
        error["message"].as_str().unwrap().contains("120 bytes"),
        "{error}"
    );
}
