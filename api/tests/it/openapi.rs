//! The OpenAPI document covers every route of the contract, and every route
//! it documents is served.

use std::collections::BTreeSet;

use cache_api::routes::policy;
use cache_shared::api_keys::Role;
use serde_json::Value;

use crate::helpers::{TOKEN_A, spawn_app};

/// Every route of API.md §4–§6 (aliases included).
const CONTRACT: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/ready"),
    ("get", "/api/v1/cache/health"),
    ("get", "/api/v1/cache/ping"),
    ("get", "/internal/cache/get/{key}"),
    ("post", "/internal/cache/set"),
    ("delete", "/internal/cache/delete/{key}"),
    ("post", "/internal/cache/mget"),
    ("post", "/internal/cache/mset"),
    ("post", "/internal/cache/exists"),
    ("post", "/internal/cache/expire"),
    ("post", "/internal/cache/session/set"),
    ("post", "/internal/cache/session"),
    ("get", "/internal/cache/session/get/{id}"),
    ("get", "/internal/cache/session/{id}"),
    ("delete", "/internal/cache/session/delete/{id}"),
    ("delete", "/internal/cache/session/{id}"),
    ("post", "/internal/cache/session/cleanup"),
    ("post", "/internal/cache/permission/set"),
    ("post", "/internal/cache/permission"),
    ("get", "/internal/cache/permission/get"),
    ("delete", "/internal/cache/permission/invalidate"),
    ("get", "/internal/cache/metrics"),
    ("get", "/internal/cache/health"),
    ("post", "/internal/cache/collect-stats"),
    ("get", "/internal/cache/jobs/{id}"),
    ("get", "/api/v1/cache/keys/{key}"),
    ("put", "/api/v1/cache/keys/{key}"),
    ("delete", "/api/v1/cache/keys/{key}"),
    ("post", "/api/v1/cache/keys/{key}/expire"),
    ("get", "/api/v1/cache/keys/{key}/ttl"),
    ("post", "/api/v1/cache/keys/{key}/touch"),
    ("post", "/api/v1/cache/keys/exists"),
    ("get", "/api/v1/cache/info"),
    ("get", "/api/v1/cache/memory"),
    ("post", "/api/v1/cache/flush"),
    ("post", "/api/v1/cache/preload"),
    ("get", "/api/v1/cache/connections"),
    ("put", "/api/v1/cache/connections/config"),
    ("get", "/api/v1/cache/memory/analyze"),
    ("post", "/api/v1/cache/memory/analyze"),
    ("post", "/api/v1/cache/compress/{pattern}"),
    ("post", "/api/v1/cache/keys/{key}/compress"),
    ("post", "/api/v1/cache/eviction/policy"),
    ("get", "/api/v1/cache/hotkeys"),
    ("get", "/api/v1/cache/performance"),
    ("get", "/api/v1/cache/namespaces"),
    ("post", "/api/v1/cache/namespaces"),
    ("get", "/api/v1/cache/namespaces/{prefix}"),
    ("put", "/api/v1/cache/namespaces/{prefix}"),
    ("delete", "/api/v1/cache/namespaces/{prefix}"),
    ("get", "/api/v1/cache/namespaces/{prefix}/stats"),
    ("get", "/api/v1/cache/events"),
    ("get", "/internal/cache/events"),
    ("get", "/api/v1/cache/stats"),
    ("get", "/api/v1/cache/metrics"),
    ("get", "/api/v1/cache/latency"),
    ("get", "/api/v1/cache/throughput"),
    ("get", "/api/v1/cache/status"),
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{id}"),
    ("delete", "/api/v1/jobs/{id}"),
    ("post", "/api/v1/schedules"),
    ("get", "/api/v1/schedules"),
    ("get", "/api/v1/schedules/{id}"),
    ("put", "/api/v1/schedules/{id}"),
    ("delete", "/api/v1/schedules/{id}"),
    ("get", "/api/v1/admin/keys"),
    ("post", "/api/v1/admin/keys"),
    ("delete", "/api/v1/admin/keys/{id}"),
    ("get", "/api/v1/admin/tenants/{tenant}/limits"),
    ("put", "/api/v1/admin/tenants/{tenant}/limits"),
];

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                ops.insert((method.clone(), path.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn the_document_and_the_routes_match_exactly() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
    let ops = documented(&doc);

    let contract: BTreeSet<(String, String)> = CONTRACT
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let missing: Vec<_> = contract.difference(&ops).collect();
    assert!(
        missing.is_empty(),
        "contract routes without an OpenAPI entry: {missing:?}"
    );
    let extra: Vec<_> = ops.difference(&contract).collect();
    assert!(
        extra.is_empty(),
        "documented routes outside the contract: {extra:?}"
    );

    // Every public route has a role, and every role entry is documented.
    for (method, path) in ops.iter().filter(|(_, p)| p.starts_with("/api/v1/")) {
        let open = ["/api/v1/cache/health", "/api/v1/cache/ping"].contains(&path.as_str());
        let listed = policy::ROUTES
            .iter()
            .any(|(m, r, _)| m.eq_ignore_ascii_case(method) && r == path);
        assert!(
            open || listed,
            "{method} {path} has no role in the policy table"
        );
    }
    for (m, r, _) in policy::ROUTES {
        assert!(
            ops.contains(&(m.to_lowercase(), (*r).to_owned())),
            "{m} {r} undocumented"
        );
    }

    // Every documented operation is served: never "no such route" nor 405.
    let operator = app.key(Role::Operator).await;
    for (method, path) in &ops {
        let concrete = path
            .replace("{key}", "openapi-probe")
            .replace("{pattern}", "openapi-probe*")
            .replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV");
        let response = app
            .client
            .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
            .header("X-Service-Token", TOKEN_A)
            .header("X-Tenant-Id", &app.tenant)
            .bearer_auth(&operator)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert_ne!(status, 405, "{method} {path}");
        if status == 404 {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(
                body["message"], "no such route",
                "{method} {path} is not served"
            );
        }
    }

    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200, "/docs leads to the page");
}

/// The `/docs` page as a person sees it, on a machine without internet:
/// headless Chromium that can resolve no host but the api's loads the page,
/// and the page it renders lists the routes of the document. (Chromium is
/// Debian's `chromium`, installed by `scripts/test`.)
#[tokio::test]
async fn the_docs_page_renders_the_routes_without_internet() {
    let app = spawn_app().await;
    let profile = tempfile_dir();
    let output = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            // Every host name fails to resolve: only the api is reachable.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            // Time for the page's scripts to fetch /openapi.json and render.
            "--virtual-time-budget=20000",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            &app.url("/docs/"),
        ])
        .kill_on_drop(true)
        .output()
        .await
        .expect("chromium is installed (scripts/test installs Debian's chromium)");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout);
    let said = || {
        format!(
            "chromium said: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            &dom[..dom.len().min(2000)]
        )
    };
    // The document's title, rendered by the page's scripts (the page's own
    // HTML does not hold it).
    assert!(dom.contains(">cache-service"), "no title; {}", said());
    // Each operation is rendered with its path.
    for path in [
        "/internal/cache/get/{key}",
        "/api/v1/cache/keys/{key}",
        "/api/v1/jobs",
    ] {
        assert!(
            dom.contains(&format!("data-path=\"{path}\"")),
            "the rendered /docs page does not show {path}; {}",
            said()
        );
    }
}

/// A fresh directory for one browser profile.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(crate::helpers::unique("chromium-profile"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
