//! Protection of callers' databases (API.md §10): negative entries against
//! penetration, leases against stampedes.

use std::time::Duration;

use cache_shared::api_keys::Role;
use deadpool_redis::redis::AsyncCommands;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_error, encode, json_of, settings, spawn_app, spawn_app_with, wait_until,
};

fn lease_get(app: &TestApp, key: &str, wait_ms: u64) -> reqwest::RequestBuilder {
    app.internal(
        Method::GET,
        &format!(
            "/internal/cache/get/{}?lease=true&leaseWaitMs={wait_ms}",
            encode(key)
        ),
    )
}

#[tokio::test]
async fn a_negative_entry_answers_404_negative_and_counts_apart_from_misses() {
    let app = spawn_app().await;
    let stored = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "user:404", "negative": true}),
        )
        .await;
    assert_eq!(stored.status(), 200);
    let stored: Value = stored.json().await.unwrap();
    assert_eq!(stored["ttl"], 60, "negative entries default to 60 s");
    let mut redis = app.raw_redis().await;
    let left: i64 = redis
        .pttl(format!("c:{{{}}}:user:404", app.tenant))
        .await
        .unwrap();
    assert!((59_000..=60_000).contains(&left), "{left}");

    let error = assert_error(app.get("user:404").await, 404, "KEY_NOT_FOUND").await;
    assert_eq!(error["details"]["negative"], true);
    let miss = assert_error(app.get("user:nothing").await, 404, "KEY_NOT_FOUND").await;
    assert!(miss["details"].get("negative").is_none(), "{miss}");

    // Batches: not found, not existing.
    let mget: Value = app
        .post_json("/internal/cache/mget", json!({"keys": ["user:404"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mget["items"][0]["found"], false);
    let exists: Value = app
        .post_json("/internal/cache/exists", json!({"keys": ["user:404"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(exists["count"], 0);

    // The public plane: PUT {"negative": true} with a TTL; a value and
    // "negative" together are refused.
    let writer = app.key(Role::Writer).await;
    let put: Value = json_of(
        app.public(Method::PUT, "/api/v1/cache/keys/order%3A9", &writer)
            .json(&json!({"negative": true, "ttl": 5})),
    )
    .await;
    assert_eq!(put["ttl"], 5);
    let refused = app
        .public(Method::PUT, "/api/v1/cache/keys/order%3A9", &writer)
        .json(&json!({"negative": true, "value": 1}))
        .send()
        .await
        .unwrap();
    assert_error(refused, 400, "VALIDATION_ERROR").await;
    let public = app
        .public(Method::GET, "/api/v1/cache/keys/order%3A9", &writer)
        .send()
        .await
        .unwrap();
    let error = assert_error(public, 404, "KEY_NOT_FOUND").await;
    assert_eq!(error["details"]["negative"], true);

    let stats: Value = json_of(app.public(Method::GET, "/api/v1/cache/stats", &writer)).await;
    assert_eq!(stats["live"]["negativeHits"], 3, "{stats}");
    assert_eq!(stats["live"]["misses"], 1, "{stats}");

    // A real value replaces the negative entry.
    assert_eq!(
        app.set("user:404", json!({"name": "now here"}))
            .await
            .status(),
        200
    );
    assert_eq!(app.get("user:404").await.status(), 200);
}

#[tokio::test]
async fn concurrent_lease_misses_give_one_holder_and_the_others_get_what_it_wrote() {
    let app = spawn_app().await;
    let mut reads: FuturesUnordered<_> = (0..50)
        .map(|_| async { lease_get(&app, "report:1", 3000).send().await.unwrap() })
        .collect();
    // The holder is answered at once; everyone else waits for its value.
    let first = reads.next().await.unwrap();
    let holder = assert_error(first, 404, "KEY_NOT_FOUND").await;
    let token = holder["details"]["lease"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 32);
    let set = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "report:1", "value": {"rows": 42}, "lease": token}),
        )
        .await;
    assert_eq!(set.status(), 200);
    let mut served = 0;
    while let Some(answer) = reads.next().await {
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["value"], json!({"rows": 42}));
        served += 1;
    }
    assert_eq!(served, 49);

    // The token is spent: the key exists now.
    let again = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "report:1", "value": 0, "lease": token}),
        )
        .await;
    assert_error(again, 409, "CONFLICT").await;
    let kept: Value = app.get("report:1").await.json().await.unwrap();
    assert_eq!(
        kept["value"],
        json!({"rows": 42}),
        "a stale token stores nothing"
    );
}

#[tokio::test]
async fn a_lease_ends_with_a_delete_a_write_or_its_ttl_and_waiters_give_up_in_time() {
    let app = spawn_app_with(settings(&["--lease-ttl-ms", "300"])).await;
    let grant = async |key: &str| -> String {
        let error = assert_error(
            lease_get(&app, key, 0).send().await.unwrap(),
            404,
            "KEY_NOT_FOUND",
        )
        .await;
        error["details"]["lease"].as_str().unwrap().to_owned()
    };
    let set_with = async |key: &str, token: &str| {
        app.post_json(
            "/internal/cache/set",
            json!({"key": key, "value": "loaded", "lease": token}),
        )
        .await
    };

    // A token is good for its own tenant's key only.
    let token = grant("mine").await;
    let stranger = app
        .client
        .post(app.url("/internal/cache/set"))
        .header("X-Service-Token", crate::helpers::TOKEN_A)
        .header("X-Tenant-Id", crate::helpers::unique("t"))
        .json(&json!({"key": "mine", "value": "theirs", "lease": token}))
        .send()
        .await
        .unwrap();
    assert_error(stranger, 409, "CONFLICT").await;
    assert_eq!(set_with("mine", &token).await.status(), 200);

    // Held: another reader waits its leaseWaitMs and is told it is leased.
    let token = grant("a").await;
    let waiter = assert_error(
        lease_get(&app, "a", 50).send().await.unwrap(),
        404,
        "KEY_NOT_FOUND",
    )
    .await;
    assert_eq!(waiter["details"]["leased"], true);
    assert!(waiter["details"].get("lease").is_none());
    // Deleted meanwhile: the lease ends.
    let deleted = app
        .internal(Method::DELETE, "/internal/cache/delete/a")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_error(set_with("a", &token).await, 409, "CONFLICT").await;
    assert_eq!(app.get("a").await.status(), 404);

    // Written meanwhile by someone else: the slow loader does not overwrite it.
    let token = grant("b").await;
    assert_eq!(app.set("b", json!("newer")).await.status(), 200);
    assert_error(set_with("b", &token).await, 409, "CONFLICT").await;
    let kept: Value = app.get("b").await.json().await.unwrap();
    assert_eq!(kept["value"], "newer");

    // Expired: a crashed holder never blocks the key; its old token is refused.
    let token = grant("c").await;
    let mut redis = app.raw_redis().await;
    let lease_key = format!("l:{{{}}}:c", app.tenant);
    wait_until(Duration::from_secs(5), || {
        let mut redis = redis.clone();
        let lease_key = lease_key.clone();
        async move { !redis.exists::<_, bool>(&lease_key).await.unwrap() }
    })
    .await;
    let fresh = grant("c").await;
    assert_ne!(fresh, token);
    assert_error(set_with("c", &token).await, 409, "CONFLICT").await;
    assert_eq!(set_with("c", &fresh).await.status(), 200);
    let _: () = redis.del(&lease_key).await.unwrap();

    let too_long = lease_get(&app, "d", 5001).send().await.unwrap();
    let error = assert_error(too_long, 400, "VALIDATION_ERROR").await;
    assert_eq!(error["details"]["field"], "leaseWaitMs");
    let hit = lease_get(&app, "c", 0).send().await.unwrap();
    assert_eq!(hit.status(), 200, "a hit answers as usual");
}

#[tokio::test]
async fn reads_ask_for_a_refresh_more_often_the_nearer_expiry_and_the_longer_the_value_took() {
    let app = spawn_app().await;
    // Computing took far longer than the TTL left: nearly every read asks
    // (P = exp(-60 000 / 1 000 000) = 0.94 per read).
    let slow = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "report:slow", "value": 1, "ttl": 60, "computeMs": 1_000_000}),
        )
        .await;
    assert_eq!(slow.status(), 200);
    // Quick to compute, an hour left: P = exp(-3 600 000 / 100) = 0.
    assert_eq!(app.set("report:quick", json!(1)).await.status(), 200);
    let mut asked = 0;
    for _ in 0..50 {
        let answer = app.get("report:slow").await;
        let header = answer.headers().get("x-cache-refresh").is_some();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["refresh"] == true, header, "{body}");
        asked += usize::from(header);
        let quick = app.get("report:quick").await;
        assert!(quick.headers().get("x-cache-refresh").is_none());
        let body: Value = quick.json().await.unwrap();
        assert!(body.get("refresh").is_none(), "{body}");
    }
    assert!(asked >= 35, "only {asked} of 50 reads asked for a refresh");
    let refused = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "report:x", "value": 1, "computeMs": 3_600_001}),
        )
        .await;
    let error = assert_error(refused, 400, "VALIDATION_ERROR").await;
    assert_eq!(error["details"]["field"], "computeMs");
    // The compute time is not part of the value.
    let value: Value = app.get("report:slow").await.json().await.unwrap();
    assert_eq!(value["value"], 1);

    // A hot key the rollups want kept loaded is asked earlier: with 2 s
    // left and the default 100 ms, P = exp(-20) per read; hinted, exp(-2).
    sqlx::query(
        "insert into cache_hotkeys (tenant_id, cache_key, window_start, window_minutes, \
             should_preload) values ($1, 'report:hot', now(), 5, true)",
    )
    .bind(&app.tenant)
    .execute(&app.state.db)
    .await
    .unwrap();
    cache_api::limits_refresh::reload_hints(&app.state).await;
    for key in ["report:hot", "report:cold"] {
        let set = app
            .post_json(
                "/internal/cache/set",
                json!({"key": key, "value": 1, "ttl": 2}),
            )
            .await;
        assert_eq!(set.status(), 200);
    }
    let (mut hot, mut cold) = (0, 0);
    for _ in 0..100 {
        hot += usize::from(
            app.get("report:hot")
                .await
                .headers()
                .contains_key("x-cache-refresh"),
        );
        cold += usize::from(
            app.get("report:cold")
                .await
                .headers()
                .contains_key("x-cache-refresh"),
        );
    }
    assert!(hot > 0 && cold == 0, "hinted {hot}, not hinted {cold}");
}
