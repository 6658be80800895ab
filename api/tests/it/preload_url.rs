//! Preloads from a URL: a local NDJSON server, the allow-list and redirects.

use std::net::SocketAddr;

use axum::response::Redirect;
use axum::routing::get;
use cache_shared::api_keys::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, settings, spawn_app_with};

/// An NDJSON server: three good lines, a bad one, a blank one, and redirects.
async fn ndjson_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = concat!(
        "{\"key\":\"u:1\",\"value\":{\"n\":1}}\n",
        "{\"key\":\"u:2\",\"value\":[2],\"ttl\":120}\n",
        "not json\n",
        "\n",
        "{\"key\":\"u:3\",\"value\":\"three\"}"
    );
    let app = axum::Router::new()
        .route("/items.ndjson", get(move || async move { body }))
        .route(
            "/hop",
            get(|| async { Redirect::temporary("/items.ndjson") }),
        )
        .route(
            "/away",
            get(|| async { Redirect::temporary("http://127.0.0.2:9/items.ndjson") }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn preload(app: &TestApp, key: &str, url: &str) -> reqwest::Response {
    app.public(Method::POST, "/api/v1/cache/preload", key)
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap()
}

async fn finished(app: &TestApp, key: &str, accepted: reqwest::Response) -> Value {
    assert_eq!(accepted.status(), 202);
    let accepted: Value = accepted.json().await.unwrap();
    app.wait_public_job(key, accepted["statusUrl"].as_str().unwrap())
        .await
}

#[tokio::test]
async fn a_preload_reads_an_allowed_ndjson_url_and_counts_bad_lines() {
    let server = ndjson_server().await;
    let allowed = server.to_string();
    let app = spawn_app_with(settings(&["--preload-allowed-hosts", &allowed])).await;
    let worker = app.spawn_worker_with(&["--preload-allowed-hosts", &allowed]);
    let admin = app.key(Role::Admin).await;

    let job = finished(
        &app,
        &admin,
        preload(&app, &admin, &format!("http://{server}/items.ndjson")).await,
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"loaded": 3, "skipped": 1}));
    let two: Value = app
        .public(Method::GET, "/api/v1/cache/keys/u:2", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(two["value"], json!([2]));
    assert!(two["ttl"].as_i64().unwrap() <= 120);

    // A redirect to an allowed host is followed; one elsewhere fails the job.
    let hop = finished(
        &app,
        &admin,
        preload(&app, &admin, &format!("http://{server}/hop")).await,
    )
    .await;
    assert_eq!(hop["result"]["loaded"], 3, "{hop}");
    let away = finished(
        &app,
        &admin,
        preload(&app, &admin, &format!("http://{server}/away")).await,
    )
    .await;
    assert_eq!(away["status"], "failed");
    assert!(
        away["error"].as_str().unwrap().contains("redirect refused"),
        "{away}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn urls_off_the_list_or_not_http_are_refused_at_submission() {
    let app = spawn_app_with(settings(&["--preload-allowed-hosts", "data.example.com"])).await;
    let admin = app.key(Role::Admin).await;
    for url in [
        "http://127.0.0.1/items",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/x",
        "file:///etc/passwd",
        "ftp://data.example.com/x",
        "http://data.example.com.evil.net/x",
        "not a url",
    ] {
        let body = assert_error(preload(&app, &admin, url).await, 400, "VALIDATION_ERROR").await;
        assert_eq!(body["details"]["field"], "url", "{url}");
    }
    let both = app
        .public(Method::POST, "/api/v1/cache/preload", &admin)
        .json(&json!({"url": "http://data.example.com/x", "items": []}))
        .send()
        .await
        .unwrap();
    assert_error(both, 400, "VALIDATION_ERROR").await;
    // With no list at all, URL preloads are off.
    let closed = crate::helpers::spawn_app().await;
    let key = closed.key(Role::Admin).await;
    assert_error(
        preload(&closed, &key, "http://data.example.com/x").await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
}

#[tokio::test]
async fn url_credentials_are_used_but_never_shown() {
    let server = ndjson_server().await;
    let allowed = server.to_string();
    let app = spawn_app_with(settings(&["--preload-allowed-hosts", &allowed])).await;
    let worker = app.spawn_worker_with(&["--preload-allowed-hosts", &allowed]);
    let admin = app.key(Role::Admin).await;
    for (path, status) in [("items.ndjson", "succeeded"), ("missing", "failed")] {
        let url = format!("http://reader:s3cret-pass@{server}/{path}");
        let job = finished(&app, &admin, preload(&app, &admin, &url).await).await;
        assert_eq!(job["status"], status, "{job}");
        let shown = job.to_string();
        assert!(!shown.contains("s3cret-pass"), "{shown}");
        assert_eq!(job["params"]["url"], format!("http://{server}/{path}"));
        let (stored,): (Value,) = sqlx::query_as("select params from jobs where id = $1")
            .bind(job["jobId"].as_str().unwrap())
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        assert!(!stored.to_string().contains("s3cret-pass"), "{stored}");
    }
    worker.stop().await;
}
