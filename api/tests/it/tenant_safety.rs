//! No path from one tenant to another: every way of starting a job (the
//! per-type routes, `POST /api/v1/jobs`, schedules at creation, on `PUT` and
//! at every firing) applies the same role and tenant rules.

use std::time::Duration;

use cache_shared::api_keys::Role;
use cache_shared::db::backups;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, json_of, spawn_app, unique, wait_until};

/// A completed backup of `tenant`, written straight into PostgreSQL.
async fn backup_of(app: &TestApp, tenant: &str) -> String {
    let id = ulid::Ulid::new().to_string();
    backups::begin(&app.state.db, &id, tenant).await.unwrap();
    backups::add(
        &app.state.db,
        &id,
        &[backups::BackupEntry {
            cache_key: "secret".into(),
            value: b"J\"theirs\"".to_vec(),
            expires_at: None,
        }],
    )
    .await
    .unwrap();
    backups::finish(&app.state.db, &id).await.unwrap();
    id
}

/// What an admin of one tenant must never start, with the answer it gets.
fn out_of_bounds(foreign_backup: &str, foreign_tenant: &str) -> Vec<(Value, u16, &'static str)> {
    vec![
        (
            json!({"type": "flush", "params": {"wholeServer": true}}),
            403,
            "FORBIDDEN",
        ),
        (
            json!({"type": "backup", "params": {"file": "/tmp/all.ndjson"}}),
            403,
            "FORBIDDEN",
        ),
        (
            json!({"type": "restore", "params": {"file": "/etc/hostname"}}),
            403,
            "FORBIDDEN",
        ),
        (
            json!({"type": "restore", "params": {"backupId": foreign_backup}}),
            404,
            "NOT_FOUND",
        ),
        (
            json!({"type": "preload", "params": {"backupId": foreign_backup}}),
            404,
            "NOT_FOUND",
        ),
        (
            json!({"type": "session_cleanup", "params": {"tenantId": foreign_tenant}}),
            403,
            "FORBIDDEN",
        ),
    ]
}

async fn count_jobs(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("select count(*) from jobs where tenant_id = $1")
        .bind(&app.tenant)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn an_admin_can_neither_start_nor_schedule_jobs_beyond_its_tenant() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    let other = unique("t");
    let foreign_backup = backup_of(&app, &other).await;
    let harmless: Value = json_of(
        app.public(Method::POST, "/api/v1/schedules", &admin)
            .json(&json!({"cron": "0 3 * * *", "type": "flush"})),
    )
    .await;
    let harmless_id = harmless["id"].as_str().unwrap().to_owned();

    for (job, status, code) in out_of_bounds(&foreign_backup, &other) {
        let started = app
            .public(Method::POST, "/api/v1/jobs", &admin)
            .json(&job)
            .send()
            .await
            .unwrap();
        assert_error(started, status, code).await;

        let mut schedule = job.clone();
        schedule["cron"] = json!("0 0 1 1 *");
        let created = app
            .public(Method::POST, "/api/v1/schedules", &admin)
            .json(&schedule)
            .send()
            .await
            .unwrap();
        let error = assert_error(created, status, code).await;
        assert_eq!(error["details"]["operation"], "schedules.create", "{job}");

        let replaced = app
            .public(
                Method::PUT,
                &format!("/api/v1/schedules/{harmless_id}"),
                &admin,
            )
            .json(&schedule)
            .send()
            .await
            .unwrap();
        assert_error(replaced, status, code).await;
    }
    // The per-type route refuses the same flush.
    let flush = app
        .public(Method::POST, "/api/v1/cache/flush", &admin)
        .json(&json!({"wholeServer": true}))
        .send()
        .await
        .unwrap();
    assert_error(flush, 403, "FORBIDDEN").await;

    assert_eq!(count_jobs(&app).await, 0, "a refused job was recorded");
    let (stored,): (i64,) = sqlx::query_as("select count(*) from schedules where tenant_id = $1")
        .bind(&app.tenant)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the harmless schedule exists");
    let kept: Value = json_of(app.public(
        Method::GET,
        &format!("/api/v1/schedules/{harmless_id}"),
        &admin,
    ))
    .await;
    assert_eq!(kept["type"], "flush");
    assert_eq!(kept["params"], json!({}), "a refused PUT changed it");
}

#[tokio::test]
async fn an_operator_may_still_do_what_an_admin_may_not() {
    let app = spawn_app().await;
    let operator = app.key(Role::Operator).await;
    let other = unique("t");
    let foreign_backup = backup_of(&app, &other).await;
    for schedule in [
        json!({"cron": "0 0 1 1 *", "type": "restore", "params": {"backupId": foreign_backup}}),
        json!({"cron": "0 0 1 1 *", "type": "flush", "params": {"wholeServer": true}}),
        json!({"cron": "*/10 * * * * *", "type": "flush"}),
    ] {
        let created = app
            .public(Method::POST, "/api/v1/schedules", &operator)
            .json(&schedule)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{schedule}");
    }
}

#[tokio::test]
async fn schedules_of_non_operators_fire_at_most_once_a_minute_and_hold_no_control_characters() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    for (body, field) in [
        (json!({"cron": "* * * * * *", "type": "flush"}), "cron"),
        (json!({"cron": "*/30 * * * * *", "type": "flush"}), "cron"),
        (json!({"cron": "* * * * *\u{0}", "type": "flush"}), "cron"),
        (json!({"cron": "1,".repeat(300), "type": "flush"}), "cron"),
        (
            json!({"cron": "* * * * *", "type": "flush", "name": "a\u{0}b"}),
            "name",
        ),
        (
            json!({"cron": "* * * * *", "type": "flush", "name": "n".repeat(256)}),
            "name",
        ),
        (
            json!({"cron": "* * * * *", "type": "flush", "timezone": "UTC\u{0}"}),
            "timezone",
        ),
    ] {
        let response = app
            .public(Method::POST, "/api/v1/schedules", &admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        let error = assert_error(response, 400, "VALIDATION_ERROR").await;
        assert_eq!(error["details"]["field"], field, "{body}");
    }
    let minutely = app
        .public(Method::POST, "/api/v1/schedules", &admin)
        .json(&json!({"cron": "30 * * * * *", "type": "flush"}))
        .send()
        .await
        .unwrap();
    assert_eq!(minutely.status(), 201);
}

/// Makes a schedule due now, as if its tick had come.
async fn make_due(app: &TestApp, id: &str) {
    sqlx::query("update schedules set next_run_at = now() - interval '1 second' where id = $1")
        .bind(id)
        .execute(&app.state.db)
        .await
        .unwrap();
}

async fn schedule(app: &TestApp, key: &str, id: &str) -> Value {
    app.public(Method::GET, &format!("/api/v1/schedules/{id}"), key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_schedule_stops_firing_once_its_creator_key_is_revoked() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    // Reads the schedule after the admin key is gone.
    let operator = app.key(Role::Operator).await;
    let created: Value = json_of(
        app.public(Method::POST, "/api/v1/schedules", &admin)
            .json(&json!({"cron": "0 0 1 1 *", "type": "flush", "params": {"namespace": "tmp:"}})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["disabledReason"], Value::Null);
    let worker = app.spawn_worker();

    // While the key is valid, a due tick fires as that key, in its tenant.
    make_due(&app, &id).await;
    wait_until(Duration::from_secs(20), || async {
        schedule(&app, &operator, &id).await["lastJobId"].is_string()
    })
    .await;
    let fired = schedule(&app, &operator, &id).await;
    let job_id = fired["lastJobId"].as_str().unwrap();
    let (tenant,): (String,) = sqlx::query_as("select tenant_id from jobs where id = $1")
        .bind(job_id)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(tenant, app.tenant);

    // Revoked: the next due tick disables it, saying why, and starts nothing.
    let key_id = cache_shared::db::api_keys::find_by_hash(
        &app.state.db,
        &cache_shared::api_keys::digest(&admin),
    )
    .await
    .unwrap()
    .unwrap()
    .id;
    cache_shared::db::api_keys::revoke(&app.state.db, &key_id)
        .await
        .unwrap();
    let jobs_before = count_jobs(&app).await;
    make_due(&app, &id).await;
    wait_until(Duration::from_secs(20), || async {
        schedule(&app, &operator, &id).await["enabled"] == false
    })
    .await;
    let disabled = schedule(&app, &operator, &id).await;
    let reason = disabled["disabledReason"].as_str().unwrap();
    assert!(reason.contains("revoked"), "{reason}");
    assert_eq!(disabled["nextRunAt"], Value::Null);
    assert_eq!(disabled["lastJobId"], fired["lastJobId"]);
    assert_eq!(
        count_jobs(&app).await,
        jobs_before,
        "a revoked key's tick fired"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_schedule_whose_job_is_no_longer_allowed_is_disabled_at_its_tick() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    let created: Value = json_of(
        app.public(Method::POST, "/api/v1/schedules", &admin)
            .json(&json!({"cron": "0 0 1 1 *", "type": "flush"})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    // Rows written before these rules, or edited behind the api's back.
    sqlx::query(
        "update schedules set params = '{\"wholeServer\": true}', \
             next_run_at = now() - interval '1 second' where id = $1",
    )
    .bind(&id)
    .execute(&app.state.db)
    .await
    .unwrap();
    let worker = app.spawn_worker();
    wait_until(Duration::from_secs(20), || async {
        schedule(&app, &admin, &id).await["enabled"] == false
    })
    .await;
    let disabled = schedule(&app, &admin, &id).await;
    let reason = disabled["disabledReason"].as_str().unwrap();
    assert!(reason.contains("operator"), "{reason}");
    assert_eq!(count_jobs(&app).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn public_session_cleanup_acts_in_the_callers_tenant_only() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let admin = app.key(Role::Admin).await;
    let other = unique("t");
    let alice = unique("alice");
    let (mine, theirs, bobs) = (unique("s"), unique("s"), unique("s"));
    app.new_session(&mine, &alice, &app.tenant).await;
    app.new_session(&theirs, &alice, &other).await;
    app.new_session(&bobs, &unique("bob"), &other).await;

    let refused = app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .json(&json!({"type": "session_cleanup", "params": {"tenantId": other}}))
        .send()
        .await
        .unwrap();
    assert_error(refused, 403, "FORBIDDEN").await;

    let request = app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .json(&json!({"type": "session_cleanup", "params": {"userId": alice}}));
    let job = app.run_public_job(&admin, request).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["revoked"], 1, "{job}");
    assert!(!app.session_exists(&mine).await);
    assert!(
        app.session_exists(&theirs).await,
        "alice's session in another tenant was revoked"
    );

    // All of the caller's tenant's sessions, none of the other's.
    let request = app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .json(&json!({"type": "session_cleanup"}));
    let job = app.run_public_job(&admin, request).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(app.session_exists(&theirs).await);
    assert!(app.session_exists(&bobs).await);
    worker.stop().await;
}
