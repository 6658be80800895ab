//! Tenant limits (API.md §9): operators set them over HTTP; rates, active
//! jobs and the in-flight bound refuse cheaply, and only whom they concern.

use std::time::Duration;

use cache_shared::api_keys::Role;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::{
    TOKEN_A, TestApp, assert_error, json_of, settings, spawn_app, spawn_app_with, unique,
    wait_until,
};

async fn put_limits(app: &TestApp, operator: &str, tenant: &str, body: Value) -> reqwest::Response {
    app.public(
        Method::PUT,
        &format!("/api/v1/admin/tenants/{tenant}/limits"),
        operator,
    )
    .json(&body)
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn operators_read_and_change_any_tenants_limits_and_the_change_is_on_record() {
    let app = spawn_app().await;
    let operator = app.key(Role::Operator).await;
    let tenant = unique("t");
    let path = format!("/api/v1/admin/tenants/{tenant}/limits");
    let defaults: Value = json_of(app.public(Method::GET, &path, &operator)).await;
    assert_eq!(
        defaults,
        json!({"tenantId": tenant, "maxKeys": 100_000, "maxBytes": 209_715_200,
               "requestsPerSecond": 0, "burst": 0, "maxActiveJobs": 20})
    );
    let changed = put_limits(
        &app,
        &operator,
        &tenant,
        json!({"maxKeys": 10, "requestsPerSecond": 50}),
    )
    .await;
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["maxKeys"], 10);
    assert_eq!(changed["requestsPerSecond"], 50);
    assert_eq!(changed["burst"], 100, "an unset burst follows the rate");
    assert_eq!(changed["maxBytes"], 209_715_200);

    // A subset keeps the rest; null returns a field to the default.
    let reset: Value = put_limits(&app, &operator, &tenant, json!({"maxKeys": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reset["maxKeys"], 100_000);
    assert_eq!(reset["requestsPerSecond"], 50);
    let read: Value = json_of(app.public(Method::GET, &path, &operator)).await;
    assert_eq!(read, reset);

    for (body, field) in [
        (json!({"maxKeys": -1}), "maxKeys"),
        (json!({"burst": "many"}), "burst"),
        (json!({"maxKey": 1}), "maxKey"),
    ] {
        let refused = put_limits(&app, &operator, &tenant, body.clone()).await;
        let error = assert_error(refused, 400, "VALIDATION_ERROR").await;
        assert_eq!(error["details"]["field"], field, "{body}");
    }
    let bad_tenant = app
        .public(
            Method::GET,
            "/api/v1/admin/tenants/_platform/limits",
            &operator,
        )
        .send()
        .await
        .unwrap();
    assert_error(bad_tenant, 400, "VALIDATION_ERROR").await;
    let admin = app.key(Role::Admin).await;
    let refused = put_limits(&app, &admin, &app.tenant, json!({"maxKeys": 0})).await;
    assert_error(refused, 403, "FORBIDDEN").await;

    let (recorded,): (i64,) = sqlx::query_as(
        "select count(*) from admin_actions where tenant_id = $1 and action = 'tenant_limits'",
    )
    .bind(&tenant)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(recorded, 2, "each change is recorded");
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_on_both_planes_and_others_do_not() {
    let app = spawn_app().await;
    let operator = app.key(Role::Operator).await;
    let reader = app.key(Role::Reader).await;
    let changed = put_limits(
        &app,
        &operator,
        &app.tenant,
        json!({"requestsPerSecond": 1, "burst": 3}),
    )
    .await;
    assert_eq!(changed.status(), 200);
    let statuses = {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let got = app
                .public(Method::GET, "/api/v1/cache/keys/nothing", &reader)
                .send()
                .await
                .unwrap();
            statuses.push(got.status().as_u16());
        }
        statuses
    };
    assert_eq!(statuses, vec![404, 404, 404], "the burst passes");
    let limited = app
        .public(Method::GET, "/api/v1/cache/keys/nothing", &reader)
        .send()
        .await
        .unwrap();
    let headers = limited.headers().clone();
    let error = assert_error(limited, 429, "RATE_LIMITED").await;
    assert_eq!(error["details"]["retryable"], true);
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(headers["ratelimit-limit"], "1");
    assert_eq!(headers["ratelimit-remaining"], "0");
    // The internal plane shares the tenant's bucket.
    let internal = app.get("nothing").await;
    assert_error(internal, 429, "RATE_LIMITED").await;

    // Not rate-limited: jobs, management, other tenants.
    let status = app
        .public(Method::GET, "/api/v1/cache/status", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    for _ in 0..20 {
        let other = app
            .client
            .get(app.url("/internal/cache/get/nothing"))
            .header("X-Service-Token", TOKEN_A)
            .header("X-Tenant-Id", unique("t"))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404);
    }
    // An unauthenticated flood spends nothing of the tenant's rate.
    let stranger = app
        .client
        .get(app.url("/internal/cache/get/nothing"))
        .header("X-Service-Token", "wrong")
        .header("X-Tenant-Id", &app.tenant)
        .send()
        .await
        .unwrap();
    assert_error(stranger, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn a_tenant_at_its_active_job_limit_gets_429_until_one_finishes() {
    let app = spawn_app().await;
    let operator = app.key(Role::Operator).await;
    let admin = app.key(Role::Admin).await;
    put_limits(&app, &operator, &app.tenant, json!({"maxActiveJobs": 2})).await;
    let flush = || {
        app.public(Method::POST, "/api/v1/cache/flush", &admin)
            .json(&json!({"namespace": "x:"}))
    };
    for _ in 0..2 {
        assert_eq!(flush().send().await.unwrap().status(), 202);
    }
    let refused = flush().send().await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_error(refused, 429, "RATE_LIMITED").await;
    // Another tenant is not held back by this one.
    let theirs = app.key_for(&unique("t"), Role::Admin).await;
    let other = app
        .public(Method::POST, "/api/v1/cache/flush", &theirs)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202);
    // Once the queued jobs run, the tenant may start more.
    let worker = app.spawn_worker();
    wait_until(Duration::from_secs(20), || async {
        flush().send().await.unwrap().status() == 202
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_request_is_a_conflict() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    let post = |body: Value| {
        app.public(Method::POST, "/api/v1/jobs", &admin)
            .header("Idempotency-Key", "nightly")
            .json(&body)
    };
    let first: Value = post(json!({"type": "flush", "params": {"namespace": "a:"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replay: Value = post(json!({"type": "flush", "params": {"namespace": "a:"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["jobId"], replay["jobId"]);
    for other in [
        json!({"type": "flush", "params": {"namespace": "b:"}}),
        json!({"type": "memory_analysis"}),
    ] {
        let conflict = post(other).send().await.unwrap();
        assert_error(conflict, 409, "CONFLICT").await;
    }
}

/// Opens a request whose body never finishes: it stays in flight.
async fn stalled_request(app: &TestApp) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /internal/cache/set HTTP/1.1\r\nHost: x\r\nX-Service-Token: {TOKEN_A}\r\n\
         X-Tenant-Id: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        app.tenant
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// A GET of key `k` on a connection of its own, so that it may land on any
/// serving thread.
async fn fresh_get(app: &TestApp) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .get(app.url("/internal/cache/get/k"))
        .header("X-Service-Token", TOKEN_A)
        .header("X-Tenant-Id", &app.tenant)
        .send()
        .await
}

#[tokio::test]
async fn beyond_the_in_flight_bound_the_api_refuses_at_once_and_recovers_alone() {
    let app = spawn_app_with(settings(&["--max-in-flight-requests", "2"])).await;
    let stalled = [stalled_request(&app).await, stalled_request(&app).await];
    // Both stalled requests are admitted before the next one is refused
    // (asked on fresh connections, so each may land on any serving thread).
    let seen = std::sync::Mutex::new(Vec::new());
    let status_of_fresh_get = || async {
        let status = fresh_get(&app)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        seen.lock().unwrap().push(status);
        status
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while status_of_fresh_get().await != 503 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let seen = seen.lock().unwrap();
        panic!(
            "never refused; statuses seen: {:?}",
            &seen[seen.len().saturating_sub(20)..]
        )
    });
    let refused = fresh_get(&app).await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    let error = assert_error(refused, 503, "OVERLOADED").await;
    assert_eq!(error["details"]["retryable"], true);
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_ne!(health.status(), 503, "health is never refused for load");

    drop(stalled);
    wait_until(Duration::from_secs(10), || async {
        app.get("k").await.status() == 404
    })
    .await;
}

#[tokio::test]
async fn the_in_flight_bound_is_the_instances_across_its_serving_threads() {
    let app = spawn_app_with(settings(&[
        "--max-in-flight-requests",
        "2",
        "--api-threads",
        "4",
        "--body-read-timeout-ms",
        "60000",
    ]))
    .await;
    // Eight stalled requests, spread by the kernel over the four serving
    // threads' accept loops: two are admitted, six refused at once.
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut stream = stalled_request(&app).await;
        let refused = std::sync::Arc::clone(&refused);
        readers.push(tokio::spawn(async move {
            let mut answer = Vec::new();
            while let Ok(read) = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut answer).await {
                if read == 0 {
                    break;
                }
                if String::from_utf8_lossy(&answer).contains("OVERLOADED") {
                    refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
            }
        }));
    }
    wait_until(Duration::from_secs(10), || async {
        refused.load(std::sync::atomic::Ordering::SeqCst) == 6
    })
    .await;
    // The two admitted ones still hold the instance's bound, whichever
    // thread a new connection lands on.
    for _ in 0..8 {
        let fresh = fresh_get(&app).await.unwrap();
        assert_error(fresh, 503, "OVERLOADED").await;
    }
    assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 6);
    for reader in readers {
        reader.abort();
    }
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_refused() {
    let app = spawn_app_with(settings(&["--body-read-timeout-ms", "300"])).await;
    let mut stream = stalled_request(&app).await;
    let mut answer = Vec::new();
    let read_answer = async {
        while !String::from_utf8_lossy(&answer).contains("retryable") {
            let read = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut answer)
                .await
                .unwrap();
            if read == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_answer)
        .await
        .expect("answered before the client gave up");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("REQUEST_TIMEOUT"), "{text}");
}

#[tokio::test]
async fn one_tenants_jobs_never_hold_every_worker_slot() {
    let own = crate::helpers::PrivateRedis::start().await;
    let app = spawn_app_with(settings(&["--redis-url", &own.url()])).await;
    let other = app.key_for(&unique("t"), Role::Admin).await;
    let admin = app.key(Role::Admin).await;
    // Slow flushes: 1000 keys each at 500 keys/s.
    let seed = |tenant_key: &str, namespace: &str| {
        let items: Vec<Value> = (0..1000)
            .map(|i| json!({"key": format!("{namespace}{i}"), "value": i}))
            .collect();
        app.public(Method::POST, "/api/v1/cache/preload", tenant_key)
            .json(&json!({"items": items}))
    };
    let worker = app.spawn_worker_with(&[
        "--worker-concurrency",
        "2",
        "--worker-tenant-slots",
        "1",
        "--flush-batch-size",
        "10",
        "--flush-max-keys-per-second",
        "500",
    ]);
    for namespace in ["a:", "b:", "c:"] {
        let loaded = app.run_public_job(&admin, seed(&admin, namespace)).await;
        assert_eq!(loaded["status"], "succeeded", "{loaded}");
    }
    let loaded = app.run_public_job(&other, seed(&other, "z:")).await;
    assert_eq!(loaded["status"], "succeeded", "{loaded}");

    let flush = |key: &str, namespace: &str| {
        app.public(Method::POST, "/api/v1/cache/flush", key)
            .json(&json!({"namespace": namespace}))
    };
    let mut mine = Vec::new();
    for namespace in ["a:", "b:", "c:"] {
        let accepted = json_of(flush(&admin, namespace)).await;
        mine.push(accepted["jobId"].as_str().unwrap().to_owned());
    }
    let accepted = json_of(flush(&other, "z:")).await;
    let theirs = accepted["jobId"].as_str().unwrap().to_owned();

    // While they run, the first tenant never has two flushes running, and
    // the other tenant's flush finishes before the first tenant's last one.
    // One query per look: a consistent snapshot of every job's status (a
    // query per job could see one finish and the next start in between).
    let statuses = || {
        let app = &app;
        let ids: Vec<String> = mine.iter().chain([&theirs]).cloned().collect();
        async move {
            let rows: Vec<(String, String)> =
                sqlx::query_as("select id, status from jobs where id = any($1)")
                    .bind(ids)
                    .fetch_all(&app.state.db)
                    .await
                    .unwrap();
            rows.into_iter()
                .collect::<std::collections::HashMap<String, String>>()
        }
    };
    let theirs_done_first = std::sync::atomic::AtomicBool::new(false);
    let theirs_done_first = &theirs_done_first;
    wait_until(Duration::from_secs(60), || async {
        let now = statuses().await;
        let of = |id: &String| now.get(id).map_or("", String::as_str);
        let running = mine.iter().filter(|id| of(id) == "running").count();
        let finished = mine.iter().filter(|id| of(id) == "succeeded").count();
        assert!(running <= 1, "{running} flushes of one tenant ran at once");
        if of(&theirs) == "succeeded" && finished < 3 {
            theirs_done_first.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        finished == 3
    })
    .await;
    assert!(
        theirs_done_first.load(std::sync::atomic::Ordering::Relaxed),
        "the other tenant's flush waited for all of the first tenant's"
    );
    worker.stop().await;
}
