//! The expiry header (see `cache_shared::codec`): every write path keeps it
//! equal to the key's expiry in Redis, so a read is one Redis command, and
//! values written before the header still read with their TTL.

use cache_shared::api_keys::Role;
use deadpool_redis::redis;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    PrivateRedis, TestApp, assert_error, json_of, settings, spawn_app, spawn_app_with, unique,
};

/// The expiry a stored value's header names (`Some(0)`: never), `None`
/// when it has no header.
fn header_of(stored: &[u8]) -> Option<i64> {
    match stored {
        [b'T', rest @ ..] if rest.len() > 8 => {
            let mut at = [0u8; 8];
            at.copy_from_slice(&rest[..8]);
            Some(i64::try_from(u64::from_be_bytes(at)).unwrap())
        }
        _ => None,
    }
}

/// Asserts that each key of `tenant` carries a header naming exactly the
/// expiry Redis holds for it.
async fn assert_headers_match(
    conn: &mut crate::helpers::RawRedis,
    tenant: &str,
    keys: &[&str],
    step: &str,
) {
    for key in keys {
        let redis_key = format!("c:{{{tenant}}}:{key}");
        let (stored, at): (Option<Vec<u8>>, i64) = redis::pipe()
            .get(&redis_key)
            .cmd("PEXPIRETIME")
            .arg(&redis_key)
            .query_async(conn)
            .await
            .unwrap();
        let stored = stored.unwrap_or_else(|| panic!("{step}: {key} is missing"));
        let header = header_of(&stored).unwrap_or_else(|| panic!("{step}: {key} has no header"));
        assert_eq!(
            header,
            at.max(0),
            "{step}: {key}'s header against PEXPIRETIME"
        );
    }
}

#[tokio::test]
async fn every_write_path_keeps_the_expiry_header_equal_to_the_keys_expiry() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let mut conn = app.raw_redis().await;
    let admin = app.key(Role::Admin).await;
    let tenant = app.tenant.clone();

    for (key, ttl) in [("a", json!(600)), ("b", json!(0)), ("c", Value::Null)] {
        let mut body = json!({"key": key, "value": {"k": key}});
        if !ttl.is_null() {
            body["ttl"] = ttl;
        }
        assert_eq!(
            app.post_json("/internal/cache/set", body).await.status(),
            200
        );
    }
    assert_headers_match(&mut conn, &tenant, &["a", "b", "c"], "set").await;

    let mset = json!({"items": [
        {"key": "d", "value": 1, "ttl": 30},
        {"key": "e", "value": 2, "ttl": 0},
        {"key": "a", "value": 3, "ttl": 90},
    ]});
    assert_eq!(
        app.post_json("/internal/cache/mset", mset).await.status(),
        200
    );
    assert_headers_match(&mut conn, &tenant, &["a", "b", "c", "d", "e"], "mset").await;

    for (key, ttl) in [("b", 45), ("a", 0)] {
        let expired = app
            .post_json("/internal/cache/expire", json!({"key": key, "ttl": ttl}))
            .await;
        assert_eq!(expired.status(), 200);
    }
    assert_headers_match(&mut conn, &tenant, &["a", "b"], "expire").await;

    for (key, query) in [("d", "?ttl=500"), ("e", "")] {
        let touched = app
            .public(
                Method::POST,
                &format!("/api/v1/cache/keys/{key}/touch{query}"),
                &admin,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(touched.status(), 200, "touch {key}");
    }
    assert_headers_match(&mut conn, &tenant, &["d", "e"], "touch").await;

    // Below the compression threshold when written; compressed on demand.
    let long = "x".repeat(500);
    let set = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "f", "value": long, "ttl": 200}),
        )
        .await;
    assert_eq!(set.status(), 200);
    let compressed: Value =
        json_of(app.public(Method::POST, "/api/v1/cache/keys/f/compress", &admin)).await;
    assert_eq!(compressed["compressed"], true, "{compressed}");
    // The tag and the quoted text: the header is not part of the value's size.
    assert_eq!(compressed["bytesBefore"], 503, "{compressed}");
    assert_headers_match(&mut conn, &tenant, &["f"], "compress").await;
    let read: Value = app.get("f").await.json().await.unwrap();
    assert_eq!(read["value"], long.as_str());

    let preload = app
        .public(Method::POST, "/api/v1/cache/preload", &admin)
        .json(&json!({"items": [
            {"key": "g", "value": "p", "ttl": 70},
            {"key": "h", "value": "q"},
        ]}));
    let job = app.run_public_job(&admin, preload).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_headers_match(&mut conn, &tenant, &["g", "h"], "preload").await;

    let backup = app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .json(&json!({"type": "backup"}));
    let backup = app.run_public_job(&admin, backup).await;
    assert_eq!(backup["status"], "succeeded", "{backup}");
    let target = unique("t");
    let operator = app.key(Role::Operator).await;
    let restore = app
        .public(
            Method::POST,
            &format!("/api/v1/jobs?tenant={target}"),
            &operator,
        )
        .json(&json!({"type": "restore", "params": {"backupId": backup["jobId"]}}));
    let restored = app.run_public_job(&operator, restore).await;
    assert_eq!(restored["status"], "succeeded", "{restored}");
    assert_eq!(restored["result"]["restored"], 8, "{restored}");
    let all = ["a", "b", "c", "d", "e", "f", "g", "h"];
    // Restored expiries are computed anew, so header and key agree again.
    assert_headers_match(&mut conn, &target, &all, "restore").await;
    assert_headers_match(&mut conn, &tenant, &all, "after every path").await;
    worker.stop().await;
}

/// `calls` of one command in `INFO commandstats` (0 when never called).
async fn calls(conn: &mut crate::helpers::RawRedis, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

async fn ttl_of(app: &TestApp, key: &str) -> (Value, i64) {
    let got = app.get(key).await;
    assert_eq!(got.status(), 200, "{key}");
    let got: Value = got.json().await.unwrap();
    (got["value"].clone(), got["ttl"].as_i64().unwrap())
}

#[tokio::test]
async fn a_read_is_one_redis_command_and_values_without_a_header_still_tell_their_ttl() {
    // A Redis of its own: its command counters see this test's reads only.
    let redis_server = PrivateRedis::start().await;
    let url = redis_server.url();
    let app = spawn_app_with(settings(&["--redis-url", &url])).await;
    let mut conn = app.raw_redis().await;
    let set = app
        .post_json(
            "/internal/cache/set",
            json!({"key": "new", "value": "n", "ttl": 100}),
        )
        .await;
    assert_eq!(set.status(), 200);
    // Written the way values were stored before the header existed.
    let legacy = format!("c:{{{}}}:old", app.tenant);
    let () = redis::cmd("SET")
        .arg(&legacy)
        .arg(br#"J"o""#)
        .arg("EX")
        .arg(50)
        .query_async(&mut conn)
        .await
        .unwrap();

    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..5 {
        let (value, ttl) = ttl_of(&app, "new").await;
        assert_eq!(value, "n");
        assert!((99..=100).contains(&ttl), "ttl {ttl}");
    }
    assert_eq!(calls(&mut conn, "get").await, 5);
    assert_eq!(calls(&mut conn, "ttl").await, 0, "the header gave the TTL");
    assert_eq!(calls(&mut conn, "pttl").await, 0);

    // Permission results too.
    let permission = format!("permission:u1:{}:doc:read", app.tenant);
    let stored = app
        .post_json(
            "/internal/cache/permission/set",
            json!({"key": permission, "result": {"allowed": true}, "ttl": 80}),
        )
        .await;
    assert_eq!(stored.status(), 200);
    let entry = format!("p:{{_platform}}:{permission}");
    let (raw, at): (Vec<u8>, i64) = redis::pipe()
        .get(&entry)
        .cmd("PEXPIRETIME")
        .arg(&entry)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        header_of(&raw),
        Some(at),
        "the entry's header names its expiry"
    );
    let read: Value = json_of(app.internal(
        Method::GET,
        &format!("/internal/cache/permission/get?key={permission}"),
    ))
    .await;
    assert_eq!(read["result"], json!({"allowed": true}));
    assert!((79..=80).contains(&read["ttl"].as_i64().unwrap()), "{read}");
    assert_eq!(calls(&mut conn, "get").await, 7, "one GET per read");
    assert_eq!(calls(&mut conn, "ttl").await, 0);

    let (value, ttl) = ttl_of(&app, "old").await;
    assert_eq!(value, "o");
    assert!((49..=50).contains(&ttl), "ttl {ttl}");
    assert_eq!(
        calls(&mut conn, "ttl").await,
        1,
        "asked Redis for the old value"
    );

    let both: Value = app
        .post_json(
            "/internal/cache/mget",
            json!({"keys": ["new", "old", "none"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let ttls: Vec<i64> = (0..2)
        .map(|i| both["items"][i]["ttl"].as_i64().unwrap_or(-99))
        .collect();
    assert!(
        (99..=100).contains(&ttls[0]) && (49..=50).contains(&ttls[1]),
        "{both}"
    );

    // Re-timing a value without a header leaves its bytes alone.
    let expired = app
        .post_json("/internal/cache/expire", json!({"key": "old", "ttl": 300}))
        .await;
    assert_eq!(expired.status(), 200);
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(&legacy)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, br#"J"o""#);
    let (value, ttl) = ttl_of(&app, "old").await;
    assert_eq!(value, "o");
    assert!((299..=300).contains(&ttl), "ttl {ttl}");
    // And it is accounted like any other value.
    let deleted = app
        .internal(Method::DELETE, "/internal/cache/delete/old")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_error(app.get("old").await, 404, "KEY_NOT_FOUND").await;
    app.stop().await;
}
