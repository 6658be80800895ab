//! Encryption at rest (API.md §11): values of encrypted namespaces are
//! unreadable in Redis and in backups, readable through the api, readable
//! after a key rotation, and after the `reencrypt` job with the old key
//! removed; a value whose key is gone is a clear error, never garbage.

use base64::Engine;
use cache_shared::api_keys::Role;
use deadpool_redis::redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, settings, spawn_app_with};

const SECRET: &str = "4111-1111-1111-1111";

fn data_key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// An api with these data keys (`id:byte`, the first seals) on `tenant`.
async fn app_with_keys(keys: &[(&str, u8)], tenant: Option<&str>, extra: &[&str]) -> TestApp {
    let keys: Vec<String> = keys
        .iter()
        .map(|(id, byte)| format!("{id}:{}", data_key(*byte)))
        .collect();
    let keys = keys.join(",");
    let mut args = vec!["--data-encryption-keys", keys.as_str()];
    args.extend_from_slice(extra);
    let mut app = spawn_app_with(settings(&args)).await;
    if let Some(tenant) = tenant {
        app.tenant = tenant.to_owned();
        cache_api::limits_refresh::refresh(&app.state, "test-encryption").await;
    }
    app
}

async fn raw(app: &TestApp, key: &str) -> Vec<u8> {
    let mut redis = app.raw_redis().await;
    let stored: Option<Vec<u8>> = redis
        .get(format!("c:{{{}}}:{key}", app.tenant))
        .await
        .unwrap();
    stored.expect("the key is in Redis")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn value_of(app: &TestApp, key: &str) -> Value {
    let answer = app.get(key).await;
    assert_eq!(answer.status(), 200, "{key}");
    answer.json::<Value>().await.unwrap()["value"].clone()
}

async fn encrypted_namespace(app: &TestApp, prefix: &str) {
    let admin = app.key(Role::Admin).await;
    let created = app
        .public(Method::POST, "/api/v1/cache/namespaces", &admin)
        .json(&json!({"prefix": prefix, "encrypted": true, "compressionMinBytes": 16}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.json::<Value>().await.unwrap()["encrypted"], true);
}

#[tokio::test]
async fn encrypted_values_are_unreadable_in_redis_and_readable_through_the_api() {
    let app = app_with_keys(&[("k1", 1)], None, &[]).await;
    encrypted_namespace(&app, "card:").await;
    let card = json!({"pan": SECRET, "note": "x".repeat(200)});
    assert_eq!(app.set("card:1", card.clone()).await.status(), 200);
    assert_eq!(
        app.set("plain:1", json!({"pan": SECRET})).await.status(),
        200
    );

    let sealed = raw(&app, "card:1").await;
    assert!(!contains(&sealed, SECRET) && !contains(&sealed, "xxxx"));
    assert!(contains(&sealed, "k1"), "the key id is in the envelope");
    assert!(
        contains(&raw(&app, "plain:1").await, SECRET),
        "other values stay plain"
    );

    assert_eq!(value_of(&app, "card:1").await, card);
    let reader = app.key(Role::Reader).await;
    let public = app
        .public(Method::GET, "/api/v1/cache/keys/card:1", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(public.json::<Value>().await.unwrap()["value"], card);
    let batch = app
        .post_json(
            "/internal/cache/mset",
            json!({"items": [{"key": "card:2", "value": 2}]}),
        )
        .await;
    assert_eq!(batch.status(), 200);
    assert!(!contains(&raw(&app, "card:2").await, "J2"));
    let mget = app
        .post_json(
            "/internal/cache/mget",
            json!({"keys": ["card:1", "card:2"]}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(mget["items"][0]["value"], card, "{mget}");
    assert_eq!(mget["items"][1]["value"], 2, "{mget}");
    // Seals are counted per key, so a key is rotated before its bound.
    let metrics = crate::helpers::scrape(&app).await;
    assert_eq!(
        crate::helpers::sample(&metrics, r#"cache_values_sealed_total{key="k1"}"#),
        2.0
    );
}

#[tokio::test]
async fn keys_rotate_and_reencrypt_retires_the_old_key() {
    let old = app_with_keys(&[("k1", 1)], None, &[]).await;
    encrypted_namespace(&old, "pii:").await;
    for n in 0..5 {
        assert_eq!(
            old.set(&format!("pii:{n}"), json!({"ssn": SECRET, "n": n}))
                .await
                .status(),
            200
        );
    }
    let tenant = old.tenant.clone();
    // Another tenant's value under the old key: no job of this tenant touches it.
    let neighbour = app_with_keys(&[("k1", 1)], None, &[]).await;
    encrypted_namespace(&neighbour, "pii:").await;
    assert_eq!(
        neighbour
            .set("pii:n", json!({"ssn": SECRET}))
            .await
            .status(),
        200
    );

    // The new key seals; the old one still opens.
    let rotated = app_with_keys(&[("k2", 2), ("k1", 1)], Some(&tenant), &[]).await;
    assert_eq!(value_of(&rotated, "pii:0").await["n"], 0);
    assert_eq!(
        rotated
            .set("pii:new", json!({"ssn": SECRET}))
            .await
            .status(),
        200
    );
    assert!(contains(&raw(&rotated, "pii:new").await, "k2"));

    // Without the old key: a clear error naming it, never garbage.
    let new_only = app_with_keys(&[("k2", 2)], Some(&tenant), &[]).await;
    assert_eq!(value_of(&new_only, "pii:new").await["ssn"], SECRET);
    let error = assert_error(new_only.get("pii:0").await, 500, "INTERNAL_ERROR").await;
    assert!(
        error["message"].as_str().unwrap().contains("'k1'"),
        "{error}"
    );

    // reencrypt, run by a worker holding both keys, rewrites what k1 sealed.
    let keys = format!("k2:{},k1:{}", data_key(2), data_key(1));
    let _worker = rotated.spawn_worker_with(&["--data-encryption-keys", &keys]);
    let admin = rotated.key(Role::Admin).await;
    let job = rotated
        .run_public_job(
            &admin,
            rotated
                .public(Method::POST, "/api/v1/jobs", &admin)
                .json(&json!({"type": "reencrypt", "params": {}})),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["rotated"], 5, "{job}");
    assert_eq!(job["result"]["unreadable"], 0, "{job}");
    for n in 0..5 {
        let stored = raw(&new_only, &format!("pii:{n}")).await;
        assert!(contains(&stored, "k2") && !contains(&stored, SECRET));
        assert_eq!(value_of(&new_only, &format!("pii:{n}")).await["n"], n);
    }
    assert!(
        contains(&raw(&neighbour, "pii:n").await, "k1"),
        "another tenant's value is left as it was"
    );
    // TTLs were kept.
    let ttl = value_of_ttl(&new_only, "pii:0").await;
    assert!(ttl > 0, "{ttl}");

    // Run again: nothing left to do.
    let again = rotated
        .run_public_job(
            &admin,
            rotated
                .public(Method::POST, "/api/v1/jobs", &admin)
                .json(&json!({"type": "reencrypt", "params": {"pattern": "pii:*"}})),
        )
        .await;
    assert_eq!(again["result"]["rotated"], 0, "{again}");
    assert_eq!(again["result"]["unchanged"], 6, "{again}");
}

async fn value_of_ttl(app: &TestApp, key: &str) -> i64 {
    app.get(key).await.json::<Value>().await.unwrap()["ttl"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn backups_of_encrypted_values_stay_encrypted_and_restore_readable() {
    let app = app_with_keys(&[("k1", 1)], None, &[]).await;
    encrypted_namespace(&app, "vault:").await;
    assert_eq!(
        app.set("vault:a", json!({"secret": SECRET})).await.status(),
        200
    );
    // Plain when saved; its namespace becomes encrypted before the restore.
    assert_eq!(
        app.set("later:a", json!({"secret": SECRET})).await.status(),
        200
    );
    let keys = format!("k1:{}", data_key(1));
    let _worker = app.spawn_worker_with(&["--data-encryption-keys", &keys]);
    let admin = app.key(Role::Admin).await;
    let backup = app
        .run_public_job(
            &admin,
            app.public(Method::POST, "/api/v1/jobs", &admin)
                .json(&json!({"type": "backup", "params": {}})),
        )
        .await;
    assert_eq!(backup["status"], "succeeded", "{backup}");
    let backup_id = backup["result"]["backupId"].as_str().unwrap().to_owned();
    let saved: Vec<u8> = sqlx::query_scalar(
        "select value from backup_entries where backup_id = $1 and cache_key = 'vault:a'",
    )
    .bind(&backup_id)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert!(!contains(&saved, SECRET) && contains(&saved, "k1"));

    let mut redis = app.raw_redis().await;
    for key in ["vault:a", "later:a"] {
        let _: () = redis
            .del(format!("c:{{{}}}:{key}", app.tenant))
            .await
            .unwrap();
    }
    let created = app
        .public(Method::POST, "/api/v1/cache/namespaces", &admin)
        .json(&json!({"prefix": "later:", "encrypted": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let restore = app
        .run_public_job(
            &admin,
            app.public(Method::POST, "/api/v1/jobs", &admin)
                .json(&json!({"type": "restore", "params": {"backupId": backup_id}})),
        )
        .await;
    assert_eq!(restore["status"], "succeeded", "{restore}");
    assert!(!contains(&raw(&app, "later:a").await, SECRET));
    assert_eq!(value_of(&app, "later:a").await["secret"], SECRET);
    assert!(!contains(&raw(&app, "vault:a").await, SECRET));
    assert_eq!(value_of(&app, "vault:a").await["secret"], SECRET);
}

#[tokio::test]
async fn sessions_and_permissions_are_sealed_with_encrypt_platform_data() {
    let app = app_with_keys(&[("k1", 1)], None, &["--encrypt-platform-data", "true"]).await;
    let sid = crate::helpers::unique("sid");
    let created = app
        .post_json(
            "/internal/cache/session/set",
            json!({"sessionId": sid, "userId": "u1", "tenantId": app.tenant, "data": {"token": SECRET}}),
        )
        .await;
    assert_eq!(created.status(), 200);
    let mut redis = app.raw_redis().await;
    let fields: Vec<Vec<u8>> = redis.hvals(format!("s:{{_platform}}:{sid}")).await.unwrap();
    assert!(!fields.is_empty());
    assert!(
        !contains(&fields.concat(), SECRET),
        "the session holds its data in clear"
    );
    let read = app
        .internal(Method::GET, &format!("/internal/cache/session/{sid}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(read["data"]["token"], SECRET, "{read}");

    let key = format!(
        "permission:u1:{}:doc:{}",
        app.tenant,
        crate::helpers::unique("d")
    );
    let set = app
        .post_json(
            "/internal/cache/permission/set",
            json!({"key": key, "result": {"why": SECRET}}),
        )
        .await;
    assert_eq!(set.status(), 200);
    let read = app
        .internal(Method::GET, "/internal/cache/permission/get")
        .query(&[("key", &key)])
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["result"]["why"], SECRET);
    let stored: Vec<u8> = redis.get(format!("p:{{_platform}}:{key}")).await.unwrap();
    assert!(!stored.is_empty() && !contains(&stored, SECRET));
}

#[tokio::test]
async fn platform_data_is_sealed_and_rotated_by_an_operators_reencrypt() {
    // A Redis of its own: the platform walk covers every session in it.
    let redis = crate::helpers::PrivateRedis::start().await;
    let url = redis.url();
    let plain = app_with_keys(&[("k1", 1)], None, &["--redis-url", &url]).await;
    let sid = crate::helpers::unique("sid");
    let session = json!({"sessionId": sid, "userId": "u1", "tenantId": plain.tenant,
                         "data": {"token": SECRET}});
    assert_eq!(
        plain
            .post_json("/internal/cache/session/set", session)
            .await
            .status(),
        200
    );
    let permission = format!("permission:u1:{}:doc:read", plain.tenant);
    let set = plain
        .post_json(
            "/internal/cache/permission/set",
            json!({"key": permission, "result": SECRET}),
        )
        .await;
    assert_eq!(set.status(), 200);
    let mut raw = plain.raw_redis().await;
    let dump = async |raw: &mut crate::helpers::RawRedis| {
        let data: Vec<u8> = raw
            .hget(format!("s:{{_platform}}:{sid}"), "d")
            .await
            .unwrap();
        let result: Vec<u8> = raw
            .get(format!("p:{{_platform}}:{permission}"))
            .await
            .unwrap();
        [data, result].concat()
    };
    assert!(contains(&dump(&mut raw).await, SECRET), "plain before");

    let args = [
        "--redis-url",
        url.as_str(),
        "--encrypt-platform-data",
        "true",
    ];
    let sealing = app_with_keys(&[("k2", 2), ("k1", 1)], Some(&plain.tenant), &args).await;
    let keys = format!("k2:{},k1:{}", data_key(2), data_key(1));
    let _worker = sealing.spawn_worker_with(&[
        "--data-encryption-keys",
        &keys,
        "--encrypt-platform-data",
        "true",
    ]);
    let start = |key: &str| {
        sealing
            .public(Method::POST, "/api/v1/jobs", key)
            .json(&json!({"type": "reencrypt", "params": {"platform": true}}))
    };
    let admin = sealing.key(Role::Admin).await;
    assert_error(start(&admin).send().await.unwrap(), 403, "FORBIDDEN").await;
    let operator = sealing.key(Role::Operator).await;
    let job = sealing.run_public_job(&operator, start(&operator)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["sealed"], 2, "{job}");
    assert!(!contains(&dump(&mut raw).await, SECRET), "sealed after");

    // Readable with the new key alone.
    let new_only = app_with_keys(&[("k2", 2)], Some(&plain.tenant), &args).await;
    let read = new_only
        .internal(Method::GET, &format!("/internal/cache/session/{sid}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(read["data"]["token"], SECRET, "{read}");
    let read = new_only
        .internal(Method::GET, "/internal/cache/permission/get")
        .query(&[("key", &permission)])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(read["result"], SECRET, "{read}");
}
