//! Cron schedules: CRUD for admins, and one run per tick with two workers.

use std::collections::BTreeSet;
use std::time::Duration;

use cache_shared::api_keys::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app, unique};

#[tokio::test]
async fn two_workers_fire_each_tick_once() {
    let app = spawn_app().await;
    let first = app.spawn_worker();
    let second = app.spawn_worker();
    // Only an operator's schedules may fire more than once a minute.
    let admin = app.key(Role::Operator).await;
    let created = app
        .public(Method::POST, "/api/v1/schedules", &admin)
        .json(&json!({"name": "every second", "cron": "* * * * * *", "type": "collect_stats"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let schedule: Value = created.json().await.unwrap();
    let id = schedule["id"].as_str().unwrap().to_owned();
    assert!(schedule["nextRunAt"].is_string());

    let pattern = format!("schedule:{id}@%");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ticks: Vec<String> = loop {
        let rows: Vec<(String,)> =
            sqlx::query_as("select created_by from jobs where created_by like $1")
                .bind(&pattern)
                .fetch_all(&app.state.db)
                .await
                .unwrap();
        if rows.len() >= 4 {
            break rows.into_iter().map(|(t,)| t).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} runs",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let distinct: BTreeSet<&String> = ticks.iter().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");

    let paused: Value = app
        .public(Method::PUT, &format!("/api/v1/schedules/{id}"), &admin)
        .json(&json!({"cron": "* * * * * *", "type": "collect_stats", "enabled": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paused["enabled"], false);
    assert_eq!(paused["nextRunAt"], Value::Null);
    let listed: Value = app
        .public(Method::GET, &format!("/api/v1/schedules/{id}"), &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["lastJobId"].is_string());
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn schedules_are_validated_and_private_to_their_tenant() {
    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    for (body, field) in [
        (json!({"cron": "* * *", "type": "collect_stats"}), "cron"),
        (
            json!({"cron": "* * * * *", "timezone": "Mars/Base", "type": "collect_stats"}),
            "timezone",
        ),
        (json!({"cron": "* * * * *", "type": "stats_rollup"}), "type"),
        (
            json!({"cron": "* * * * *", "type": "flush", "params": {"pattern": "a", "namespace": "b"}}),
            "pattern",
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
    let created: Value = app
        .public(Method::POST, "/api/v1/schedules", &admin)
        .json(&json!({"cron": "0 3 * * *", "timezone": "Europe/Paris", "type": "preload", "params": {"items": [{"key": "k", "value": 1}]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    let other = app.key_for(&unique("t"), Role::Admin).await;
    let hidden = app
        .public(Method::GET, &format!("/api/v1/schedules/{id}"), &other)
        .send()
        .await
        .unwrap();
    assert_error(hidden, 404, "NOT_FOUND").await;
    let theirs: Value = app
        .public(Method::GET, "/api/v1/schedules", &other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["schedules"], json!([]));
    let deleted = app
        .public(Method::DELETE, &format!("/api/v1/schedules/{id}"), &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let again = app
        .public(Method::DELETE, &format!("/api/v1/schedules/{id}"), &admin)
        .send()
        .await
        .unwrap();
    assert_error(again, 404, "NOT_FOUND").await;
}
