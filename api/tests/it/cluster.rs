//! The service on a Redis Cluster (`REDIS_MODE=cluster`): a loopback
//! cluster of 3 primaries and 3 replicas per test, tenants chosen so their
//! keys live on different primaries, and what is stored read back from the
//! nodes themselves.

use std::time::Duration;

use cache_shared::api_keys::Role;
use deadpool_redis::redis::{self, AsyncCommands};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Tenant ids whose keys live on `count` different primaries of `cluster`.
async fn tenants_on_every_primary(cluster: &TestCluster, count: usize) -> Vec<(String, u16)> {
    let mut found: Vec<(String, u16)> = Vec::new();
    while found.len() < count {
        let tenant = unique("t");
        let owner = cluster.owner_of(&format!("c:{{{tenant}}}:x")).await;
        if !found.iter().any(|(_, port)| *port == owner) {
            found.push((tenant, owner));
        }
    }
    found
}

fn internal(app: &TestApp, tenant: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client
        .request(method, app.url(path))
        .header("X-Service-Token", TOKEN_A)
        .header("X-Tenant-Id", tenant)
}

async fn ok_json(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let body: Value = response.json().await.expect("JSON");
    assert!(status.is_success(), "{status}: {body}");
    body
}

#[tokio::test]
async fn the_internal_plane_works_across_the_primaries_of_a_cluster() {
    let cluster = TestCluster::start(3, 1).await;
    let app = spawn_app_with(cluster_settings(&cluster, &[])).await;
    let tenants = tenants_on_every_primary(&cluster, 3).await;
    for (tenant, owner) in &tenants {
        let set = ok_json(
            internal(&app, tenant, Method::POST, "/internal/cache/set")
                .json(&json!({"key": "user:1", "value": {"tenant": tenant}, "ttl": 60})),
        )
        .await;
        assert_eq!(set["ttl"], 60);
        // Stored on the primary owning the tenant's slot, nowhere else.
        let mut node = cluster.node(*owner).await;
        let exists: bool = node.exists(format!("c:{{{tenant}}}:user:1")).await.unwrap();
        assert!(exists, "on its primary {owner}");
        let got = ok_json(internal(
            &app,
            tenant,
            Method::GET,
            "/internal/cache/get/user:1",
        ))
        .await;
        assert_eq!(got["value"]["tenant"], tenant.as_str());
        assert!(got["ttl"].as_i64().unwrap() > 50);

        let items: Vec<Value> = (0..20)
            .map(|i| json!({"key": format!("k{i}"), "value": i}))
            .collect();
        let stored = ok_json(
            internal(&app, tenant, Method::POST, "/internal/cache/mset")
                .json(&json!({ "items": items })),
        )
        .await;
        assert_eq!(stored["stored"], 20);
        let keys: Vec<String> = (0..21).map(|i| format!("k{i}")).collect();
        let read = ok_json(
            internal(&app, tenant, Method::POST, "/internal/cache/mget")
                .json(&json!({ "keys": keys })),
        )
        .await;
        let items = read["items"].as_array().unwrap();
        assert_eq!(items.len(), 21);
        assert_eq!(items[7]["value"], 7);
        assert_eq!(items[20]["found"], false);
        let exists = ok_json(
            internal(&app, tenant, Method::POST, "/internal/cache/exists")
                .json(&json!({"keys": ["k1", "nope"]})),
        )
        .await;
        assert_eq!(exists["count"], 1);
        let expire = ok_json(
            internal(&app, tenant, Method::POST, "/internal/cache/expire")
                .json(&json!({"key": "k1", "ttl": 5})),
        )
        .await;
        assert_eq!(expire["updated"], true);
        let deleted = ok_json(internal(
            &app,
            tenant,
            Method::DELETE,
            "/internal/cache/delete/k2",
        ))
        .await;
        assert_eq!(deleted["deleted"], true);
    }
    // Sessions and permissions (the platform namespace, one slot).
    let (tenant, _) = &tenants[0];
    let sid = unique("sid");
    ok_json(
        internal(&app, tenant, Method::POST, "/internal/cache/session/set")
            .json(&json!({"sessionId": sid, "userId": "alice", "tenantId": tenant})),
    )
    .await;
    let session = ok_json(internal(
        &app,
        tenant,
        Method::GET,
        &format!("/internal/cache/session/{sid}"),
    ))
    .await;
    assert_eq!(session["userId"], "alice");
    ok_json(
        internal(&app, tenant, Method::POST, "/internal/cache/permission/set")
            .json(&json!({"key": format!("permission:alice:{tenant}:doc:read"), "result": true})),
    )
    .await;
    let invalidated = ok_json(internal(
        &app,
        tenant,
        Method::DELETE,
        &format!("/internal/cache/permission/invalidate?userId=alice&tenantId={tenant}"),
    ))
    .await;
    assert_eq!(invalidated["invalidated"], 1);
    // The per-tenant usage the quota keeps is right on every primary.
    for (tenant, _) in &tenants {
        let key = app.key_for(tenant, Role::Admin).await;
        let memory = ok_json(app.public(Method::GET, "/api/v1/cache/memory", &key)).await;
        assert_eq!(memory["quota"]["keys"], 20, "{memory}");
    }
}

#[tokio::test]
async fn health_reports_every_node_of_the_cluster() {
    let cluster = TestCluster::start(3, 1).await;
    let app = spawn_app_with(cluster_settings(&cluster, &[])).await;
    let _worker = app.spawn_worker();
    // Replicas announce themselves a moment after the cluster forms, and
    // each node learns of the others by gossip: wait for a view with all.
    let seen = std::sync::Mutex::new(Value::Null);
    wait_until(Duration::from_secs(15), || async {
        let health = json_of(app.client.get(app.url("/health"))).await;
        let nodes = health["checks"]["redis"]["nodes"].as_array().cloned();
        let settled = health["status"] == "ok"
            && nodes.is_some_and(|nodes| {
                nodes.iter().filter(|n| n["role"] == "replica").count() == 3
                    && nodes.iter().all(|n| n["status"] == "up")
            });
        *seen.lock().unwrap() = health;
        settled
    })
    .await;
    let health = seen.into_inner().unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    let nodes = health["checks"]["redis"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6, "{health}");
    let primaries: Vec<&Value> = nodes
        .iter()
        .filter(|n| n["role"] == "primary" && n["slots"] != 0)
        .collect();
    assert_eq!(primaries.len(), 3);
    assert_eq!(
        primaries
            .iter()
            .map(|n| n["slots"].as_u64().unwrap())
            .sum::<u64>(),
        16_384
    );
    for port in cluster.ports() {
        assert!(
            nodes
                .iter()
                .any(|n| n["address"] == format!("127.0.0.1:{port}") && n["status"] == "up"),
            "{port} in {health}"
        );
    }
    let ready = json_of(app.client.get(app.url("/ready"))).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["nodes"].as_array().map(Vec::len), Some(6), "{ready}");
    // Metrics label each node by its address.
    assert_eq!(app.set("k", json!(1)).await.status(), 200);
    let owner = cluster.owner_of(&format!("c:{{{}}}:k", app.tenant)).await;
    let metrics = scrape(&app).await;
    for primary in &primaries {
        let address = primary["address"].as_str().unwrap();
        let up = format!("cache_redis_node_up{{node=\"{address}\",role=\"primary\"}}");
        assert_eq!(sample(&metrics, &up), 1.0);
        let memory = format!("cache_redis_node_memory_bytes{{node=\"{address}\"}}");
        assert!(sample(&metrics, &memory) > 0.0);
    }
    let keys = format!("cache_redis_node_keys{{node=\"127.0.0.1:{owner}\"}}");
    assert!(sample(&metrics, &keys) >= 1.0, "{metrics}");
}

#[tokio::test]
async fn jobs_walk_the_primary_of_a_tenant_or_every_primary() {
    let cluster = TestCluster::start(3, 1).await;
    let app = spawn_app_with(cluster_settings(&cluster, &[])).await;
    let _worker = app.spawn_worker();
    let tenants = tenants_on_every_primary(&cluster, 3).await;
    for (tenant, _) in &tenants {
        let items: Vec<Value> = (0..50)
            .map(|i| json!({"key": format!("user:{i}"), "value": {"n": i, "pad": "x".repeat(300)}}))
            .collect();
        ok_json(
            internal(&app, tenant, Method::POST, "/internal/cache/mset")
                .json(&json!({ "items": items })),
        )
        .await;
    }
    let (first, _) = &tenants[0];
    let admin = app.key_for(first, Role::Admin).await;
    let run = async |request: reqwest::RequestBuilder| -> Value {
        let accepted = ok_json(request).await;
        let url = accepted["statusUrl"].as_str().unwrap().to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let job = ok_json(app.public(Method::GET, &url, &admin)).await;
            if matches!(job["status"].as_str(), Some("succeeded" | "failed")) {
                return job;
            }
            assert!(tokio::time::Instant::now() < deadline, "{job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // Memory analysis, compression and backup see the tenant's 50 keys.
    let analysis = run(app
        .public(Method::POST, "/api/v1/cache/memory/analyze", &admin)
        .json(&json!({})))
    .await;
    assert_eq!(analysis["status"], "succeeded", "{analysis}");
    let report = ok_json(app.public(Method::GET, "/api/v1/cache/memory/analyze", &admin)).await;
    assert_eq!(report["report"]["keysAnalysed"], 50, "{report}");
    let compressed = run(app
        .public(Method::POST, "/api/v1/cache/compress/user:*", &admin)
        .json(&json!({})))
    .await;
    assert_eq!(compressed["result"]["compressed"], 50, "{compressed}");
    let backup = run(app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .json(&json!({"type": "backup", "params": {}})))
    .await;
    assert_eq!(backup["result"]["keys"], 50, "{backup}");

    // A tenant's flush removes its keys only.
    let flushed = run(app
        .public(Method::POST, "/api/v1/cache/flush", &admin)
        .json(&json!({})))
    .await;
    assert_eq!(flushed["result"]["deleted"], 50, "{flushed}");
    assert!(cluster.scan(&format!("c:{{{first}}}:*")).await.is_empty());
    for (tenant, _) in &tenants[1..] {
        assert_eq!(cluster.scan(&format!("c:{{{tenant}}}:*")).await.len(), 50);
    }
    // ...and a restore brings them back, readable.
    let restored = run(app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .json(&json!({"type": "restore", "params": {"backupId": backup["result"]["backupId"]}})))
    .await;
    assert_eq!(restored["status"], "succeeded", "{restored}");
    let got = ok_json(internal(
        &app,
        first,
        Method::GET,
        "/internal/cache/get/user:7",
    ))
    .await;
    assert_eq!(got["value"]["n"], 7);

    // The operator's whole-server flush reaches every primary.
    let operator = app.key_for(first, Role::Operator).await;
    let accepted = ok_json(
        app.public(Method::POST, "/api/v1/cache/flush", &operator)
            .json(&json!({"wholeServer": true})),
    )
    .await;
    let url = accepted["statusUrl"].as_str().unwrap().to_owned();
    let job = app.wait_public_job(&operator, &url).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(cluster.scan("c:{*}:*").await.is_empty());
    for (tenant, _) in &tenants {
        let key = app.key_for(tenant, Role::Admin).await;
        let memory = ok_json(app.public(Method::GET, "/api/v1/cache/memory", &key)).await;
        assert_eq!(memory["quota"]["keys"], 0, "{memory}");
    }
}

#[tokio::test]
async fn a_single_node_cluster_answers_with_raw_connections_too() {
    let cluster = TestCluster::start(1, 0).await;
    let app = spawn_app_with(cluster_settings(&cluster, &[])).await;
    assert_eq!(app.set("a", json!(1)).await.status(), 200);
    let mut node = cluster.node(cluster.base).await;
    let stored: Option<Vec<u8>> = node.get(format!("c:{{{}}}:a", app.tenant)).await.unwrap();
    assert!(stored.is_some());
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut node)
        .await
        .unwrap();
    assert!(info.contains("cluster_state:ok"));
}

#[tokio::test]
async fn losing_a_primary_gives_503s_until_its_replica_takes_over_then_recovers() {
    let mut cluster = TestCluster::start(3, 1).await;
    let app = spawn_app_with(cluster_settings(&cluster, &[])).await;
    let owner = cluster.owner_of(&format!("c:{{{}}}:x", app.tenant)).await;
    assert_eq!(app.set("kept", json!("before")).await.status(), 200);
    // Acknowledged by the replica before its primary goes.
    let primary = cluster.node(owner).await;
    wait_until(Duration::from_secs(10), || {
        let mut primary = primary.clone();
        async move {
            let acked: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(200)
                .query_async(&mut primary)
                .await
                .unwrap();
            acked == 1
        }
    })
    .await;
    cluster.kill(owner).await;

    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    wait_until(Duration::from_secs(20), || async {
        let status = app.get("kept").await.status().as_u16();
        *statuses.lock().unwrap().entry(status).or_default() += 1;
        status == 200
    })
    .await;
    let statuses = statuses.into_inner().unwrap();
    // Nothing but 503 (retryable) while the slot had no primary.
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    let got: Value = app.get("kept").await.json().await.unwrap();
    assert_eq!(got["value"], "before");
    assert_eq!(app.set("after", json!(1)).await.status(), 200);
}

/// A tenant id whose keys hash to `slot`.
fn tenant_in_slot(slot: u16) -> String {
    loop {
        let tenant = unique("t");
        if cache_shared::redis::cluster::key_slot(format!("c:{{{tenant}}}:x").as_bytes()) == slot {
            return tenant;
        }
    }
}

#[tokio::test]
async fn a_tenant_slot_moving_under_load_loses_no_acknowledged_write() {
    let cluster = TestCluster::start(3, 0).await;
    let app = spawn_app_with(cluster_settings(&cluster, &[])).await;
    // Slot 0 is the first the first primary holds: what `reshard` moves first.
    let tenant = tenant_in_slot(0);
    let (from, to) = (cluster.base, cluster.base + 1);
    assert_eq!(cluster.owner_of(&format!("c:{{{tenant}}}:x")).await, from);
    for batch in 0..6 {
        let items: Vec<Value> = (0..500)
            .map(|i| json!({"key": format!("old:{}", batch * 500 + i), "value": i}))
            .collect();
        ok_json(
            internal(&app, &tenant, Method::POST, "/internal/cache/mset")
                .json(&json!({ "items": items })),
        )
        .await;
    }

    // Steady writes and reads; a 503 is retried as clients do (it is retryable).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let (mut acked, mut retried, mut failed) = (Vec::new(), 0u32, Vec::new());
        let mut i = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut attempts = 0;
            loop {
                let response = internal(&app, &tenant, Method::POST, "/internal/cache/set")
                    .json(&json!({"key": format!("w:{i}"), "value": i}))
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    200 => {
                        acked.push(i);
                        break;
                    }
                    503 if attempts < 20 => {
                        attempts += 1;
                        retried += 1;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    status => {
                        failed.push((i, status, response.text().await.unwrap_or_default()));
                        break;
                    }
                }
            }
            let read = internal(&app, &tenant, Method::GET, "/internal/cache/get/old:7")
                .send()
                .await
                .unwrap()
                .status();
            if read != 200 && read != 503 {
                failed.push((i, read.as_u16(), "read of old:7".into()));
            }
            i += 1;
        }
        (acked, retried, failed)
    };
    let reshard = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = async |port: u16| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut cluster.node(port).await)
                .await
                .unwrap()
        };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let moved = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(moved.success(), "reshard ran");
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let ((acked, retried, failed), ()) = tokio::join!(load, reshard);

    assert_eq!(cluster.owner_of(&format!("c:{{{tenant}}}:x")).await, to);
    assert!(failed.is_empty(), "failed beyond retries: {failed:?}");
    assert!(acked.len() > 10, "the load ran: {} writes", acked.len());
    // Every acknowledged write is there, on the new owner, with its value.
    for i in &acked {
        let got = ok_json(internal(
            &app,
            &tenant,
            Method::GET,
            &format!("/internal/cache/get/w:{i}"),
        ))
        .await;
        assert_eq!(got["value"], *i);
    }
    let on_new_owner = cluster.scan(&format!("c:{{{tenant}}}:*")).await.len();
    assert_eq!(on_new_owner, 3000 + acked.len(), "retried {retried}");
}

#[tokio::test]
async fn two_instances_and_two_workers_share_a_cluster_near_caches_stay_coherent_and_ticks_fire_once()
 {
    let cluster = TestCluster::start(3, 0).await;
    let writer = spawn_app_with(cluster_settings(&cluster, &[])).await;
    let mut reader = spawn_app_with(cluster_settings(&cluster, &[])).await;
    // Tenants on two different primaries, both near-caching `hot:`.
    let tenants = tenants_on_every_primary(&cluster, 2).await;
    for (tenant, _) in &tenants {
        let admin = writer.key_for(tenant, Role::Admin).await;
        let created = writer
            .public(Method::POST, "/api/v1/cache/namespaces", &admin)
            .json(&json!({"prefix": "hot:", "nearCache": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    cache_api::limits_refresh::refresh(&reader.state, "test-instances").await;
    let near = reader.state.cache.near_cache().unwrap().clone();
    wait_until(Duration::from_secs(5), || {
        let near = near.clone();
        async move { near.is_healthy() }
    })
    .await;
    for (tenant, _) in &tenants {
        reader.tenant = tenant.clone();
        let value = async |app: &TestApp| -> Value {
            ok_json(internal(
                app,
                tenant,
                Method::GET,
                "/internal/cache/get/hot:1",
            ))
            .await["value"]
                .clone()
        };
        ok_json(
            internal(&writer, tenant, Method::POST, "/internal/cache/set")
                .json(&json!({"key": "hot:1", "value": 1})),
        )
        .await;
        assert_eq!(value(&reader).await, 1);
        let hits = near.figures().hits;
        assert_eq!(value(&reader).await, 1);
        assert_eq!(near.figures().hits, hits + 1, "served from memory");
        // A write through the other instance reaches this one's memory,
        // whichever primary holds the key.
        ok_json(
            internal(&writer, tenant, Method::POST, "/internal/cache/set")
                .json(&json!({"key": "hot:1", "value": 2})),
        )
        .await;
        wait_until(Duration::from_secs(2), || async {
            value(&reader).await == 2
        })
        .await;
        for _ in 0..10 {
            assert_eq!(value(&reader).await, 2);
        }
    }

    // Two workers on the cluster: each tick of a schedule fires once.
    let _first = writer.spawn_worker();
    let _second = writer.spawn_worker();
    let operator = writer.key(Role::Operator).await;
    let schedule = ok_json(
        writer
            .public(Method::POST, "/api/v1/schedules", &operator)
            .json(&json!({"cron": "* * * * * *", "type": "collect_stats"})),
    )
    .await;
    let pattern = format!("schedule:{}@%", schedule["id"].as_str().unwrap());
    let ticks = std::sync::Mutex::new(Vec::<String>::new());
    wait_until(Duration::from_secs(20), || async {
        let rows: Vec<(String,)> =
            sqlx::query_as("select created_by from jobs where created_by like $1")
                .bind(&pattern)
                .fetch_all(&writer.state.db)
                .await
                .unwrap();
        *ticks.lock().unwrap() = rows.into_iter().map(|(t,)| t).collect();
        ticks.lock().unwrap().len() >= 3
    })
    .await;
    let ticks = ticks.into_inner().unwrap();
    let distinct: std::collections::BTreeSet<&String> = ticks.iter().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
}

#[tokio::test]
async fn each_tenants_events_arrive_from_its_own_primary_expirations_included() {
    use crate::events::{Events, internal_events, pair};
    let cluster = TestCluster::start(3, 0).await;
    let app = spawn_app_with(cluster_settings(&cluster, &[])).await;
    let _worker = app.spawn_worker();
    let tenants = tenants_on_every_primary(&cluster, 3).await;
    let mut streams = Vec::new();
    for (tenant, _) in &tenants {
        streams.push(Events::open(internal_events(&app, tenant)).await);
    }
    for (tenant, _) in &tenants {
        ok_json(
            internal(&app, tenant, Method::POST, "/internal/cache/set")
                .json(&json!({"key": "brief", "value": 1, "ttl": 1})),
        )
        .await;
    }
    // The set through the api, then Redis's own expiry, forwarded by the
    // worker from the primary that holds the key.
    for stream in &mut streams {
        assert_eq!(
            stream.take(2).await,
            vec![pair("set", "brief"), pair("expired", "brief")]
        );
    }
}
