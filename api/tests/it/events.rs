//! Invalidation events (API.md §10): a tenant's changes as Server-Sent
//! Events, in order, never another tenant's, resumable with Last-Event-ID.

use std::time::Duration;

use cache_shared::api_keys::Role;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    PrivateRedis, TOKEN_A, TestApp, assert_error, settings, spawn_app, spawn_app_with, unique,
};

/// One event as a client reads it.
#[derive(Debug, Clone)]
struct Seen {
    id: Option<String>,
    event: String,
    data: Value,
}

/// An open event stream and what it has read so far.
pub(crate) struct Events {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Events {
    pub(crate) async fn open(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), failing after 10 s.
    async fn next(&mut self) -> Seen {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if event.is_empty() {
                    continue;
                }
                return Seen {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                };
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream stays open")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `n` events as (op, key).
    pub(crate) async fn take(&mut self, n: usize) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        for _ in 0..n {
            let event = self.next().await;
            seen.push((event.event, event.data["key"].as_str().unwrap().to_owned()));
        }
        seen
    }
}

pub(crate) fn internal_events(app: &TestApp, tenant: &str) -> reqwest::RequestBuilder {
    app.client
        .get(app.url("/internal/cache/events"))
        .header("X-Service-Token", TOKEN_A)
        .header("X-Tenant-Id", tenant)
}

pub(crate) fn pair(op: &str, key: &str) -> (String, String) {
    (op.to_owned(), key.to_owned())
}

#[tokio::test]
async fn a_tenants_changes_arrive_in_order_without_values_and_never_cross_tenants() {
    let app = spawn_app().await;
    let other = unique("t");
    let mut mine = Events::open(internal_events(&app, &app.tenant)).await;
    let mut theirs = Events::open(internal_events(&app, &other)).await;

    assert_eq!(
        app.set("user:1", json!({"secret": "s3cr3t"}))
            .await
            .status(),
        200
    );
    let other_set = app
        .client
        .post(app.url("/internal/cache/set"))
        .header("X-Service-Token", TOKEN_A)
        .header("X-Tenant-Id", &other)
        .json(&json!({"key": "theirs:1", "value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(other_set.status(), 200);
    let expired = app
        .post_json(
            "/internal/cache/expire",
            json!({"key": "user:1", "ttl": 100}),
        )
        .await;
    assert_eq!(expired.status(), 200);
    let mset = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [{"key": "a", "value": 1}, {"key": "b", "value": 2}]}),
        )
        .await;
    assert_eq!(mset.status(), 200);
    let deleted = app
        .internal(Method::DELETE, "/internal/cache/delete/user%3A1")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);

    let first = mine.next().await;
    assert_eq!(first.event, "set");
    assert_eq!(first.data["key"], "user:1");
    assert_eq!(first.data["op"], "set");
    assert!(
        first.data["at"].as_str().unwrap().ends_with('Z'),
        "{:?}",
        first.data
    );
    assert!(
        first.data.get("value").is_none(),
        "never values: {:?}",
        first.data
    );
    assert!(!first.data.to_string().contains("s3cr3t"));
    assert!(first.id.is_some());
    assert_eq!(
        mine.take(4).await,
        vec![
            pair("expire", "user:1"),
            pair("set", "a"),
            pair("set", "b"),
            pair("delete", "user:1")
        ]
    );
    // The other tenant saw its own change only.
    assert_eq!(theirs.take(1).await, vec![pair("set", "theirs:1")]);
    assert_eq!(app.set("last", json!(1)).await.status(), 200);
    assert_eq!(mine.take(1).await, vec![pair("set", "last")]);
}

#[tokio::test]
async fn a_stream_filters_by_prefix_and_resumes_after_a_disconnect_or_says_reset() {
    let app = spawn_app().await;
    let reader = app.key(Role::Reader).await;
    let public = |query: &str| {
        app.public(
            Method::GET,
            &format!("/api/v1/cache/events{query}"),
            &reader,
        )
    };
    let too_long = public(&format!("?prefix={}", "p".repeat(513)));
    let error = assert_error(too_long.send().await.unwrap(), 400, "VALIDATION_ERROR").await;
    assert_eq!(error["details"]["field"], "prefix");
    let mut users = Events::open(public("?prefix=user%3A")).await;
    for key in ["user:1", "order:1", "user:2", "user:3"] {
        assert_eq!(app.set(key, json!(1)).await.status(), 200);
    }
    let one = users.next().await;
    assert_eq!(one.data["key"], "user:1");
    let two = users.next().await;
    assert_eq!(two.data["key"], "user:2", "order:1 is not under the prefix");
    drop(users);

    // Changes while disconnected are replayed from the last id seen.
    assert_eq!(app.set("user:4", json!(1)).await.status(), 200);
    let mut resumed =
        Events::open(public("?prefix=user%3A").header("Last-Event-ID", two.id.clone().unwrap()))
            .await;
    assert_eq!(
        resumed.take(2).await,
        vec![pair("set", "user:3"), pair("set", "user:4")]
    );
    assert_eq!(app.set("user:5", json!(1)).await.status(), 200);
    assert_eq!(resumed.take(1).await, vec![pair("set", "user:5")]);
    drop(resumed);

    // Beyond the buffer: the client is told to start over.
    for i in 0..1300 {
        assert_eq!(app.set(&format!("bulk:{i}"), json!(i)).await.status(), 200);
    }
    let mut late = Events::open(public("").header("Last-Event-ID", one.id.unwrap())).await;
    assert_eq!(late.next().await.event, "reset");
    let mut unknown = Events::open(public("").header("Last-Event-ID", "not-an-id")).await;
    assert_eq!(unknown.next().await.event, "reset");
}

#[tokio::test]
async fn expirations_and_flushes_are_events_too() {
    // A Redis of its own: one worker at a time forwards expirations, and
    // other tests' workers come and go.
    let own = PrivateRedis::start().await;
    let app = spawn_app_with(settings(&["--redis-url", &own.url()])).await;
    let worker = app.spawn_worker();
    let admin = app.key(Role::Admin).await;
    let mut events = Events::open(internal_events(&app, &app.tenant)).await;
    let short = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "brief", "value": 1, "ttl": 1}),
        )
        .await;
    assert_eq!(short.status(), 200);
    assert_eq!(events.take(1).await, vec![pair("set", "brief")]);
    // Redis reports the expiry (the worker forwards it) within its expiry cycle.
    assert_eq!(events.take(1).await, vec![pair("expired", "brief")]);

    let flush = app
        .public(Method::POST, "/api/v1/cache/flush", &admin)
        .json(&json!({"namespace": "user:"}))
        .send()
        .await
        .unwrap();
    assert_eq!(flush.status(), 202);
    let body: Value = flush.json().await.unwrap();
    let job = app
        .wait_public_job(&admin, body["statusUrl"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(events.take(1).await, vec![pair("flush", "user:*")]);

    // A flush of every tenant (an operator's, on this test's own Redis)
    // reaches every tenant listened to.
    let operator = app.key(Role::Operator).await;
    let everything = app
        .public(Method::POST, "/api/v1/cache/flush", &operator)
        .json(&json!({"wholeServer": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(everything.status(), 202);
    let body: Value = everything.json().await.unwrap();
    let job = app
        .wait_public_job(&operator, body["statusUrl"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(events.take(1).await, vec![pair("flush", "*")]);
    worker.stop().await;
}
