//! Service identities on the internal plane (API.md §11): named tokens
//! (rotated, reloaded from a file), scopes, and the name in records and
//! metrics.

use clap::Parser;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, assert_error, scrape, settings, spawn_app_with};

fn as_service(app: &TestApp, token: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client
        .request(method, app.url(path))
        .header("X-Service-Token", token)
        .header("X-Tenant-Id", &app.tenant)
}

#[tokio::test]
async fn named_services_are_known_by_name_limited_to_their_scopes_and_reloaded() {
    let dir = tempfile_dir();
    let file = dir.join("tokens");
    std::fs::write(&file, "reports:rep-1\n").unwrap();
    let app = spawn_app_with(settings(&[
        "--internal-service-tokens",
        "billing:bill-old,billing:bill-new,rbac:rbac-1",
        "--internal-service-tokens-file",
        file.to_str().unwrap(),
        "--internal-service-scopes",
        "rbac:permission|metrics",
    ]))
    .await;
    let set = |token: &str| {
        as_service(&app, token, Method::POST, "/internal/cache/set")
            .json(&json!({"key": "k", "value": 1}))
    };
    // Both of a service's tokens work (rotation); the anonymous list still does.
    for token in ["bill-old", "bill-new", "rep-1", crate::helpers::TOKEN_A] {
        assert_eq!(set(token).send().await.unwrap().status(), 200, "{token}");
    }
    assert_error(set("bill-older").send().await.unwrap(), 401, "UNAUTHORIZED").await;

    // rbac may use the permission routes and nothing else.
    let error = assert_error(set("rbac-1").send().await.unwrap(), 403, "FORBIDDEN").await;
    assert!(
        error["message"].as_str().unwrap().contains("rbac"),
        "{error}"
    );
    let permission = as_service(
        &app,
        "rbac-1",
        Method::POST,
        "/internal/cache/permission/set",
    )
    .json(&json!({"key": format!("permission:u1:{}:doc:read", app.tenant), "result": true}))
    .send()
    .await
    .unwrap();
    assert_eq!(permission.status(), 200);
    let session = as_service(
        &app,
        "rbac-1",
        Method::GET,
        "/internal/cache/session/get/s1",
    )
    .send()
    .await
    .unwrap();
    assert_error(session, 403, "FORBIDDEN").await;

    // The name is in the operation log and the metrics.
    let records = app.state.cache.stats().oplog().unwrap().take_batch();
    let actors: Vec<&str> = records.iter().filter_map(|r| r.actor.as_deref()).collect();
    assert!(
        actors.contains(&"billing") && actors.contains(&"reports"),
        "{actors:?}"
    );
    let metrics = scrape(&app).await;
    assert!(
        metrics.contains(r#"cache_internal_calls_total{service="billing"} 2"#)
            && metrics.contains(r#"cache_internal_calls_total{service="rbac"} 3"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("internal_calls"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Rotating the file's token: after a reload (SIGHUP) the new one works
    // and the old one is refused; counts carry over.
    std::fs::write(&file, "reports:rep-2\n").unwrap();
    app.state.services.reload().unwrap();
    assert_eq!(set("rep-2").send().await.unwrap().status(), 200);
    assert_error(set("rep-1").send().await.unwrap(), 401, "UNAUTHORIZED").await;
    // A broken file keeps what was loaded.
    std::fs::write(&file, "no colon here\n").unwrap();
    assert!(app.state.services.reload().is_err());
    assert_eq!(set("rep-2").send().await.unwrap().status(), 200);
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(crate::helpers::unique("identities"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn malformed_identities_stop_start_up_naming_the_variable() {
    for (flag, value) in [
        ("--internal-service-tokens", "billing"),
        ("--internal-service-scopes", "rbac:everything"),
    ] {
        let error =
            cache_api::cli::Cli::try_parse_from(["cache-api", flag, value]).expect_err("refused");
        assert_eq!(error.exit_code(), 2);
        let variable = flag[2..].to_uppercase().replace('-', "_");
        assert!(error.to_string().contains(&variable), "{error}");
    }
}
