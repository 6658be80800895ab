use futures::stream;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{assert_error, settings, spawn_app, spawn_app_with};

#[tokio::test]
async fn key_length_limits_are_inclusive() {
    let app = spawn_app().await;
    let longest = "k".repeat(512);
    assert_eq!(app.set(&longest, json!(1)).await.status(), 200);
    assert_eq!(app.get(&longest).await.status(), 200);
    let too_long = "k".repeat(513);
    let body = assert_error(app.set(&too_long, json!(1)).await, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["details"]["field"], "key");
    assert_error(app.get(&too_long).await, 400, "VALIDATION_ERROR").await;
    // 512 bytes, not characters: 171 three-byte characters are 513 bytes.
    assert_error(
        app.set(&"€".repeat(171), json!(1)).await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
}

#[tokio::test]
async fn keys_with_control_characters_or_dot_segments_are_refused() {
    let app = spawn_app().await;
    for key in ["", "a\nb", "tab\t", "nul\u{0}", "del\u{7f}", ".", ".."] {
        assert_error(app.set(key, json!(1)).await, 400, "VALIDATION_ERROR").await;
    }
    assert_error(app.get("a\nb").await, 400, "VALIDATION_ERROR").await;
    // Clients resolve "." and ".." in paths, so a dot key is sent encoded; the
    // URL standard treats %2E like a dot too, hence the mixed form "%2E.".
    for path in [
        "/internal/cache/get/.%2E%2E",
        "/internal/cache/get/%2E%2E%2E",
    ] {
        let response = app.internal(Method::GET, path).send().await.unwrap();
        assert_eq!(
            response.status(),
            404,
            "'...' is a valid, absent key: {path}"
        );
    }
}

#[tokio::test]
async fn ttl_forms_outside_the_contract_are_refused() {
    let app = spawn_app().await;
    for ttl in [
        json!(-1),
        json!(1.5),
        json!(1.0),
        json!("60"),
        json!(31_536_001),
        json!(true),
    ] {
        let response = app
            .post_json(
                "/internal/cache/set",
                json!({"key": "k", "value": 1, "ttl": ttl}),
            )
            .await;
        let body = assert_error(response, 400, "VALIDATION_ERROR").await;
        assert_eq!(body["details"]["field"], "ttl", "{ttl}");
    }
    let ok = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "k", "value": 1, "ttl": 31_536_000}),
        )
        .await;
    assert_eq!(ok.status(), 200);
    let response = app
        .post_json("/internal/cache/expire", json!({"key": "k", "ttl": -5}))
        .await;
    assert_error(response, 400, "VALIDATION_ERROR").await;
    let response = app
        .post_json("/internal/cache/expire", json!({"key": "k"}))
        .await;
    assert_error(response, 400, "VALIDATION_ERROR").await;
    let response = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [{"key": "a", "value": 1, "ttl": -1}]}),
        )
        .await;
    let body = assert_error(response, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["details"]["field"], "items[0].ttl");
}

#[tokio::test]
async fn values_up_to_the_limit_are_stored_and_larger_ones_refused() {
    let app = spawn_app_with(settings(&["--max-value-bytes", "100"])).await;
    // A JSON string of 98 characters is 100 bytes of compact JSON.
    let exact = "x".repeat(98);
    assert_eq!(app.set("fits", json!(exact)).await.status(), 200);
    let over = "x".repeat(99);
    let body = assert_error(app.set("over", json!(over)).await, 413, "PAYLOAD_TOO_LARGE").await;
    assert_eq!(body["details"]["limit"], 100);
    assert_eq!(app.get("over").await.status(), 404);
    // Whitespace does not count: the size is that of compact JSON.
    let spaced = format!(
        r#"{{"key":"spaced","value":[ {} ]}}"#,
        vec!["1"; 40].join(" , ")
    );
    let response = app
        .internal(Method::POST, "/internal/cache/set")
        .header("content-type", "application/json")
        .body(spaced)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [{"key": "a", "value": 1}, {"key": "b", "value": over}]}),
        )
        .await;
    assert_error(response, 413, "PAYLOAD_TOO_LARGE").await;
    assert_eq!(app.get("a").await.status(), 404);
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_even_when_chunked() {
    let app = spawn_app_with(settings(&["--max-body-bytes", "1000"])).await;
    let big = json!({"key": "k", "value": "y".repeat(2000)});
    assert_error(
        app.post_json("/internal/cache/set", big.clone()).await,
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    let text = big.to_string();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = text
        .as_bytes()
        .chunks(100)
        .map(|c| Ok(c.to_vec()))
        .collect();
    // A client of its own: the server answers before the body has all
    // arrived and then closes the connection, which must not be the one
    // the next request of the test's client is sent on.
    let response = reqwest::Client::new()
        .post(app.url("/internal/cache/set"))
        .header("X-Service-Token", crate::helpers::TOKEN_A)
        .header("X-Tenant-Id", &app.tenant)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "PAYLOAD_TOO_LARGE").await;
    assert_eq!(app.get("k").await.status(), 404);
}

#[tokio::test]
async fn batches_over_a_thousand_keys_are_refused() {
    let app = spawn_app().await;
    let keys: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    for path in ["/internal/cache/mget", "/internal/cache/exists"] {
        let body = assert_error(
            app.post_json(path, json!({ "keys": keys })).await,
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(body["details"]["field"], "keys");
    }
    let items: Vec<Value> = keys.iter().map(|k| json!({"key": k, "value": 1})).collect();
    assert_error(
        app.post_json("/internal/cache/mset", json!({ "items": items }))
            .await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
    let exactly: Vec<String> = keys[..1000].to_vec();
    let response = app
        .post_json("/internal/cache/mget", json!({ "keys": exactly }))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn malformed_json_and_wrong_types_name_the_field() {
    let app = spawn_app().await;
    let send = |body: &'static str| {
        app.internal(Method::POST, "/internal/cache/set")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (r#"{"key":"a","value":1"#, "body"),
        ("", "body"),
        ("not json", "body"),
        (r#"{"key":"a","value":1} trailing"#, "body"),
        (r#"{"key":5,"value":1}"#, "key"),
        (r#"{"value":1}"#, "key"),
        (r#"{"key":"a"}"#, "value"),
        (r#"{"key":"a","value":1,"tll":5}"#, "tll"),
        (r#""text""#, "body"),
        (r#"[1,2]"#, "[0]"),
    ];
    for (body, field) in cases {
        let reply = assert_error(send(body).await.unwrap(), 400, "VALIDATION_ERROR").await;
        assert_eq!(reply["details"]["field"], field, "{body}");
    }
    let reply = assert_error(
        app.post_json("/internal/cache/mget", json!({"keys": ["a", 7]}))
            .await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(reply["details"]["field"], "keys[1]");
    let reply = assert_error(
        app.post_json(
            "/internal/cache/mset",
            json!({"items": [{"key": "a", "value": 1}, {"key": ["x"], "value": 1}]}),
        )
        .await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(reply["details"]["field"], "items[1].key");
}

#[tokio::test]
async fn a_non_json_content_type_is_unsupported() {
    let app = spawn_app().await;
    let response = app
        .internal(Method::POST, "/internal/cache/set")
        .header("content-type", "text/plain")
        .body(r#"{"key":"a","value":1}"#)
        .send()
        .await
        .unwrap();
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE").await;
}

#[tokio::test]
async fn invalid_tenant_headers_are_refused() {
    let app = spawn_app().await;
    for tenant in ["_platform", "_x", "a b", "a:b", "a{b}", &"t".repeat(65)] {
        let response = app
            .client
            .get(app.url("/internal/cache/get/k"))
            .header("X-Service-Token", crate::helpers::TOKEN_A)
            .header("X-Tenant-Id", tenant)
            .send()
            .await
            .unwrap();
        let body = assert_error(response, 400, "VALIDATION_ERROR").await;
        assert_eq!(body["details"]["field"], "X-Tenant-Id", "{tenant}");
    }
}

#[tokio::test]
async fn path_segments_that_are_not_utf8_are_refused() {
    let app = spawn_app().await;
    let response = app
        .internal(Method::GET, "/internal/cache/get/%FF%FE")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "VALIDATION_ERROR").await;
}

#[tokio::test]
async fn numeric_query_parameters_outside_their_range_are_refused_by_name() {
    let app = spawn_app().await;
    let reader = app.key(cache_shared::api_keys::Role::Reader).await;
    for (path, field, fine) in [
        ("/api/v1/cache/latency?window=", "window", "15"),
        ("/api/v1/cache/hotkeys?limit=", "limit", "64"),
        ("/api/v1/cache/hotkeys?window=", "window", "10080"),
        ("/api/v1/jobs?limit=", "limit", "500"),
    ] {
        let ok = app
            .public(Method::GET, &format!("{path}{fine}"), &reader)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{path}{fine}");
        for bad in ["0", "100000", "-1", "two", ""] {
            let refused = app
                .public(Method::GET, &format!("{path}{bad}"), &reader)
                .send()
                .await
                .unwrap();
            let body = assert_error(refused, 400, "VALIDATION_ERROR").await;
            assert_eq!(body["details"]["field"], field, "{path}{bad}");
        }
    }
    app.stop().await;
}
