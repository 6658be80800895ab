//! Jobs end to end: the api records and enqueues, an in-process worker runs.

use cache_jobs::flush::FlushParams;
use cache_jobs::policy::Requester;
use cache_jobs::queue::JobSpec;
use cache_shared::db::backups;
use cache_shared::keys::TenantId;
use deadpool_redis::redis;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app, unique};

#[tokio::test]
async fn session_cleanup_revokes_exactly_one_users_sessions() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let (alice, bob, tenant) = (unique("alice"), unique("bob"), unique("t"));
    let alice_sessions: Vec<String> = (0..3).map(|_| unique("s")).collect();
    for sid in &alice_sessions {
        app.new_session(sid, &alice, &tenant).await;
    }
    let bobs = unique("s");
    app.new_session(&bobs, &bob, &tenant).await;

    let response = app
        .post_json("/internal/cache/session/cleanup", json!({"userId": alice}))
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["type"], "session_cleanup");
    assert_eq!(accepted["status"], "queued");
    let job_id = accepted["jobId"].as_str().unwrap();
    assert_eq!(
        accepted["statusUrl"],
        format!("/internal/cache/jobs/{job_id}")
    );

    let job = app
        .wait_for_job(accepted["statusUrl"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["revoked"], 3);
    assert_eq!(job["progress"], json!({"done": 3, "total": 3}));
    assert_eq!(job["attempts"], 1);
    assert!(job["startedAt"].is_string() && job["finishedAt"].is_string());
    for sid in &alice_sessions {
        assert!(!app.session_exists(sid).await);
    }
    assert!(app.session_exists(&bobs).await);
    worker.stop().await;
}

#[tokio::test]
async fn collect_stats_reports_the_servers_figures() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    app.set("k", json!(1)).await;
    let accepted: Value = app
        .post_json("/internal/cache/collect-stats", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let job = app
        .wait_for_job(accepted["statusUrl"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job["result"]["totalKeys"].as_u64().unwrap() >= 1);
    assert!(job["result"]["usedMemoryBytes"].as_u64().unwrap() > 0);
    worker.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_answers_with_the_first_job() {
    let app = spawn_app().await;
    let send = |key: &str| {
        app.internal(Method::POST, "/internal/cache/collect-stats")
            .header("Idempotency-Key", key)
            .send()
    };
    let first: Value = send("k-1").await.unwrap().json().await.unwrap();
    let again = send("k-1").await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["jobId"], again["jobId"]);
    let other: Value = send("k-2").await.unwrap().json().await.unwrap();
    assert_ne!(first["jobId"], other["jobId"]);
    // Another tenant's identical key is its own.
    let foreign: Value = app
        .client
        .post(app.url("/internal/cache/collect-stats"))
        .header("X-Service-Token", crate::helpers::TOKEN_A)
        .header("Idempotency-Key", "k-1")
        .header("X-Tenant-Id", unique("x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(first["jobId"], foreign["jobId"]);
}

#[tokio::test]
async fn a_job_is_visible_to_its_tenant_and_the_platform_only() {
    let app = spawn_app().await;
    let accepted: Value = app
        .post_json("/internal/cache/collect-stats", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let url = accepted["statusUrl"].as_str().unwrap();
    let own: Value = app
        .internal(Method::GET, url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["tenantId"], json!(app.tenant));
    assert_eq!(own["status"], "queued");
    assert_eq!(own["progress"], json!({"done": 0, "total": null}));

    let foreign = app
        .client
        .get(app.url(url))
        .header("X-Service-Token", crate::helpers::TOKEN_A)
        .header("X-Tenant-Id", unique("other"))
        .send()
        .await
        .unwrap();
    assert_error(foreign, 404, "NOT_FOUND").await;
    let platform = app
        .client
        .get(app.url(url))
        .header("X-Service-Token", crate::helpers::TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(platform.status(), 200);
    let missing = app
        .internal(
            Method::GET,
            "/internal/cache/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        )
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn session_cleanup_refuses_a_malformed_owner_and_records_nothing() {
    let app = spawn_app().await;
    let response = app
        .post_json("/internal/cache/session/cleanup", json!({"tenantId": "_x"}))
        .await;
    let body = assert_error(response, 400, "VALIDATION_ERROR").await;
    assert_eq!(body["details"]["field"], "tenantId");
    let rows: (i64,) = sqlx::query_as("select count(*) from jobs where tenant_id = $1")
        .bind(&app.tenant)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(rows.0, 0);
}

#[tokio::test]
async fn flush_of_one_tenant_leaves_other_tenants_byte_identical() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let other = unique("t");
    let mut raw = app.raw_redis().await;
    // One pipeline per tenant: each stays in its tenant's slot on a cluster.
    for tenant in [&app.tenant, &other] {
        let mut pipe = redis::pipe();
        for i in 0..2500 {
            pipe.set(format!("c:{{{tenant}}}:k{i}"), format!("J{i}"))
                .ignore();
        }
        let () = pipe.query_async(&mut raw).await.unwrap();
    }
    let before: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(
            (0..2500)
                .map(|i| format!("c:{{{other}}}:k{i}"))
                .collect::<Vec<_>>(),
        )
        .query_async(&mut raw)
        .await
        .unwrap();

    let job = app
        .state
        .jobs
        .authorize(
            &Requester::internal(TenantId::parse(&app.tenant, "t").unwrap()),
            JobSpec::Flush(FlushParams::default()),
        )
        .await
        .unwrap();
    let record = app.state.jobs.submit(job, None).await.unwrap();
    let job = app
        .wait_for_job(&format!("/internal/cache/jobs/{}", record.id))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["deleted"], 2500);
    assert_eq!(job["progress"]["done"], 2500);

    let left: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(
            (0..2500)
                .map(|i| format!("c:{{{}}}:k{i}", app.tenant))
                .collect::<Vec<_>>(),
        )
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(left.iter().all(Option::is_none), "keys left behind");
    let after: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(
            (0..2500)
                .map(|i| format!("c:{{{other}}}:k{i}"))
                .collect::<Vec<_>>(),
        )
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(before, after);
    worker.stop().await;
}

#[tokio::test]
async fn vacuuming_drops_finished_queue_data_but_keeps_the_history() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let accepted: Value = app
        .post_json("/internal/cache/collect-stats", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["jobId"].as_str().unwrap().to_owned();
    let job = app
        .wait_for_job(accepted["statusUrl"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "succeeded");
    worker.stop().await;

    let config = apalis_redis::Config::default()
        .queue(cache_jobs::JobType::CollectStats.queue_name(&app.queue_prefix));
    let mut raw = app.queue_redis().await;
    let in_queue = |raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        let (data, done) = (config.job_data_hash(), config.done_jobs_set());
        let id = id.clone();
        async move {
            let (held, listed): (bool, bool) = redis::pipe()
                .hexists(data, &id)
                .sismember(done, &id)
                .query_async(&mut raw)
                .await
                .unwrap();
            held || listed
        }
    };
    assert!(
        in_queue(&mut raw).await,
        "the finished job is still in its queue before vacuuming"
    );
    cache_worker::recovery::vacuum(&app.state.jobs, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(
        !in_queue(&mut raw).await,
        "vacuum left the job in its queue"
    );
    let history: Value = app
        .internal(Method::GET, accepted["statusUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["status"], "succeeded");
}

#[tokio::test]
async fn a_backup_restores_into_another_tenant_with_values_and_ttls() {
    use cache_shared::api_keys::Role;

    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let source = app.key(Role::Admin).await;
    for (key, value, ttl) in [
        ("a", json!({"n": 1}), 600),
        ("b", json!("text"), 0),
        ("c", json!([1, 2]), 90),
    ] {
        let put = app
            .public(Method::PUT, &format!("/api/v1/cache/keys/{key}"), &source)
            .json(&json!({"value": value, "ttl": ttl}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
    }
    let run = |key: String, body: Value, path: String| {
        let app = &app;
        async move {
            let request = app.public(Method::POST, &path, &key).json(&body);
            app.run_public_job(&key, request).await
        }
    };
    let backup = run(
        source.clone(),
        json!({"type": "backup"}),
        "/api/v1/jobs".into(),
    )
    .await;
    assert_eq!(backup["status"], "succeeded", "{backup}");
    assert_eq!(backup["result"]["keys"], 3);
    let backup_id = backup["jobId"].as_str().unwrap().to_owned();

    // Another tenant's admin cannot see it; an operator restores it into that tenant.
    let target = unique("t");
    let stranger = app.key_for(&target, Role::Admin).await;
    let refused = app
        .public(Method::POST, "/api/v1/jobs", &stranger)
        .json(&json!({"type": "restore", "params": {"backupId": backup_id}}))
        .send()
        .await
        .unwrap();
    assert_error(refused, 404, "NOT_FOUND").await;
    let operator = app.key(Role::Operator).await;
    let restored = run(
        operator.clone(),
        json!({"type": "restore", "params": {"backupId": backup_id}}),
        format!("/api/v1/jobs?tenant={target}"),
    )
    .await;
    assert_eq!(restored["status"], "succeeded", "{restored}");
    assert_eq!(restored["result"]["restored"], 3);
    for (key, value, ttl) in [
        ("a", json!({"n": 1}), 600),
        ("b", json!("text"), -1),
        ("c", json!([1, 2]), 90),
    ] {
        let got: Value = app
            .public(Method::GET, &format!("/api/v1/cache/keys/{key}"), &stranger)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["value"], value, "{key}");
        let left = got["ttl"].as_i64().unwrap();
        if ttl < 0 {
            assert_eq!(left, -1);
        } else {
            assert!(
                (ttl - 2..=ttl).contains(&left),
                "{key}: ttl {left}, expected about {ttl}"
            );
        }
    }
    // A second restore keeps what the target has.
    app.public(Method::PUT, "/api/v1/cache/keys/a", &stranger)
        .json(&json!({"value": "newer"}))
        .send()
        .await
        .unwrap();
    let again = run(
        operator,
        json!({"type": "restore", "params": {"backupId": backup_id}}),
        format!("/api/v1/jobs?tenant={target}"),
    )
    .await;
    assert_eq!(again["result"]["kept"], 3);
    let kept: Value = app
        .public(Method::GET, "/api/v1/cache/keys/a", &stranger)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kept["value"], "newer");
    worker.stop().await;
}

/// Keys of the app's tenant, counted with a full SCAN.
async fn count_keys(app: &TestApp) -> i64 {
    scan(app, &format!("c:{{{}}}:*", app.tenant)).await.len() as i64
}

/// Every data-plane key matching `pattern`, by SCAN.
async fn scan(app: &TestApp, pattern: &str) -> Vec<String> {
    app.scan_keys(pattern).await
}

/// Seeds `n` keys into the app's tenant straight into Redis.
async fn seed(app: &TestApp, n: usize) {
    let mut raw = app.raw_redis().await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.set(format!("c:{{{}}}:k{i}", app.tenant), "J1")
                .ignore();
        }
        let () = pipe.query_async(&mut raw).await.unwrap();
    }
}

async fn submit_flush(app: &TestApp, key: &str) -> String {
    let accepted: Value = app
        .public(Method::POST, "/api/v1/cache/flush", key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accepted["status"], "queued");
    accepted["statusUrl"].as_str().unwrap().to_owned()
}

/// A worker slow enough to watch: 100 keys per batch, 20 ms apart.
const SLOW: [&str; 8] = [
    "--job-batch-size",
    "100",
    "--job-batch-pause-ms",
    "20",
    "--flush-batch-size",
    "100",
    "--flush-max-keys-per-second",
    "5000",
];

#[tokio::test]
async fn a_job_moves_from_queued_through_running_to_succeeded_with_progress() {
    use cache_shared::api_keys::Role;
    // A Redis of its own: SCAN's pace depends on the whole keyspace.
    let redis = crate::helpers::PrivateRedis::start().await;
    let app =
        crate::helpers::spawn_app_with(crate::helpers::settings(&["--redis-url", &redis.url()]))
            .await;
    let admin = app.key(Role::Admin).await;
    seed(&app, 6_000).await;
    let url = submit_flush(&app, &admin).await;
    let worker = app.spawn_worker_with(&SLOW);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let last = loop {
        let job: Value = app
            .public(Method::GET, &url, &admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = job["status"].as_str().unwrap().to_owned();
        let done = job["progress"]["done"].as_i64().unwrap();
        if seen
            .last()
            .is_none_or(|(s, d): &(String, i64)| *s != status || *d != done)
        {
            seen.push((status.clone(), done));
        }
        if status == "succeeded" {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "{seen:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(last["progress"], json!({"done": 6000, "total": 6000}));
    let running: Vec<i64> = seen
        .iter()
        .filter(|(s, _)| s == "running")
        .map(|(_, d)| *d)
        .collect();
    assert!(
        running.len() >= 3,
        "progress was not reported while the job ran: {seen:?}"
    );
    assert!(
        running.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {seen:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_running_job_stops_at_its_next_batch_when_cancelled() {
    use cache_shared::api_keys::Role;
    let redis = crate::helpers::PrivateRedis::start().await;
    let app =
        crate::helpers::spawn_app_with(crate::helpers::settings(&["--redis-url", &redis.url()]))
            .await;
    let admin = app.key(Role::Admin).await;
    seed(&app, 20_000).await;
    let url = submit_flush(&app, &admin).await;
    let worker = app.spawn_worker_with(&SLOW);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let job: Value = app
            .public(Method::GET, &url, &admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "running" && job["progress"]["done"].as_i64().unwrap() > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let answer: Value = app
        .public(Method::DELETE, &url, &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["status"], "running",
        "a running job answers with its current status"
    );
    let job = loop {
        let job: Value = app
            .public(Method::GET, &url, &admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] != "running" {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(job["status"], "cancelled", "{job}");
    let deleted = job["result"]["deleted"].as_i64().unwrap();
    assert!(deleted > 0 && deleted < 20_000, "{job}");
    // What was not deleted is still there.
    assert_eq!(count_keys(&app).await, 20_000 - deleted);
    worker.stop().await;
}

#[tokio::test]
async fn an_operator_backs_up_to_a_file_and_restores_from_it() {
    use cache_shared::api_keys::Role;
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let operator = app.key(Role::Operator).await;
    let admin = app.key(Role::Admin).await;
    app.public(Method::PUT, "/api/v1/cache/keys/f", &admin)
        .json(&json!({"value": {"in": "file"}, "ttl": 300}))
        .send()
        .await
        .unwrap();
    let path = std::env::temp_dir().join(format!("cache-backup-{}.ndjson", unique("f")));
    let file = path.to_str().unwrap().to_owned();
    let refused = app
        .public(Method::POST, "/api/v1/jobs", &admin)
        .json(&json!({"type": "backup", "params": {"file": file}}))
        .send()
        .await
        .unwrap();
    assert_error(refused, 403, "FORBIDDEN").await;

    let wait = |url: String| {
        let app = &app;
        let operator = operator.clone();
        async move { app.wait_public_job(&operator, &url).await }
    };
    let accepted: Value = app
        .public(Method::POST, "/api/v1/jobs", &operator)
        .json(&json!({"type": "backup", "params": {"file": file}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let backup = wait(accepted["statusUrl"].as_str().unwrap().to_owned()).await;
    assert_eq!(backup["status"], "succeeded", "{backup}");
    assert_eq!(backup["result"]["keys"], 1);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);

    let target = unique("t");
    let accepted: Value = app
        .public(
            Method::POST,
            &format!("/api/v1/jobs?tenant={target}"),
            &operator,
        )
        .json(&json!({"type": "restore", "params": {"file": file}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let restore = wait(accepted["statusUrl"].as_str().unwrap().to_owned()).await;
    assert_eq!(restore["result"]["restored"], 1, "{restore}");
    let theirs = app.key_for(&target, Role::Reader).await;
    let got: Value = app
        .public(Method::GET, "/api/v1/cache/keys/f", &theirs)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["value"], json!({"in": "file"}));
    assert!((298..=300).contains(&got["ttl"].as_i64().unwrap()));
    std::fs::remove_file(&path).unwrap();
    worker.stop().await;
}

#[tokio::test]
async fn jobs_lost_from_their_queue_are_queued_again_from_their_records() {
    use cache_shared::api_keys::Role;
    use cache_worker::recovery::{Recovered, recover_lost};
    use std::time::Duration;

    let app = spawn_app().await;
    let admin = app.key(Role::Admin).await;
    seed(&app, 50).await;
    // No worker yet: both jobs wait in their queues.
    let flush_url = submit_flush(&app, &admin).await;
    let accepted: Value = app
        .public(Method::POST, "/api/v1/cache/preload", &admin)
        .json(&json!({"items": [{"key": "inline", "value": 1}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let preload_url = accepted["statusUrl"].as_str().unwrap().to_owned();
    // A record whose push never happened (the api answered an error): never
    // started behind its caller's back.
    let unpushed = cache_shared::db::jobs::NewJob {
        id: ulid::Ulid::new().to_string(),
        job_type: "flush".into(),
        tenant_id: app.tenant.clone(),
        params: json!({}),
        created_by: None,
    };
    cache_shared::db::jobs::insert(&app.state.db, &unpushed, None, 0)
        .await
        .unwrap();

    // Redis loses the queues' data, as a restart without persistence would.
    let queue_keys =
        crate::helpers::scan_url(&app.queue_redis_url, &format!("{}:*", app.queue_prefix)).await;
    assert!(!queue_keys.is_empty(), "the jobs were queued");
    let mut raw = app.queue_redis().await;
    let _: i64 = redis::cmd("DEL")
        .arg(&queue_keys)
        .query_async(&mut raw)
        .await
        .unwrap();

    let jobs = &app.state.jobs;
    let recovered = recover_lost(jobs, Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        recovered,
        Recovered {
            requeued: 1,
            failed: 1
        }
    );
    // The flush is back in its queue: another pass leaves everything alone.
    let again = recover_lost(jobs, Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(again, Recovered::default());

    let lost = app.wait_public_job(&admin, &preload_url).await;
    assert_eq!(lost["status"], "failed", "{lost}");
    assert_eq!(lost["error"], cache_worker::recovery::LOST_FROM_QUEUE);
    let worker = app.spawn_worker();
    let flushed = app.wait_public_job(&admin, &flush_url).await;
    assert_eq!(flushed["status"], "succeeded", "{flushed}");
    assert_eq!(flushed["result"], json!({"deleted": 50}));
    assert_eq!(count_keys(&app).await, 0);
    worker.stop().await;
    let untouched = cache_shared::db::jobs::get(&app.state.db, &unpushed.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(untouched.status, "queued");
}

#[tokio::test]
async fn jobs_backups_and_reports_past_retention_are_swept_and_nothing_else() {
    use cache_shared::db::retention;

    let app = spawn_app().await;
    let db = &app.state.db;
    let id = || ulid::Ulid::new().to_string();
    let (old_done, old_queued, recent_done) = (id(), id(), id());
    for (job, status, age_days) in [
        (&old_done, "succeeded", 40),
        (&old_queued, "queued", 40),
        (&recent_done, "failed", 5),
    ] {
        sqlx::query(
            "insert into jobs (id, job_type, tenant_id, params, status, created_at, finished_at) \
             values ($1, 'flush', $2, '{}', $3, now() - make_interval(days => $4), \
                     case when $3 = 'queued' then null else now() - make_interval(days => $4) end)",
        )
        .bind(job)
        .bind(&app.tenant)
        .bind(status)
        .bind(age_days)
        .execute(db)
        .await
        .unwrap();
    }
    let (old_backup, old_report) = (id(), id());
    backups::begin(db, &old_backup, &app.tenant).await.unwrap();
    sqlx::query("update backups set created_at = now() - interval '40 days' where id = $1")
        .bind(&old_backup)
        .execute(db)
        .await
        .unwrap();
    sqlx::query(
        "insert into memory_reports (id, tenant_id, mode, report, created_at) \
         values ($1, $2, 'full', '{}', now() - interval '40 days')",
    )
    .bind(&old_report)
    .bind(&app.tenant)
    .execute(db)
    .await
    .unwrap();

    let cutoff = chrono::Utc::now() - chrono::Duration::days(30);
    // Workers of other tests share this database and sweep it too, so the
    // rows this call removes may already be gone: what is left is checked.
    retention::sweep(db, cutoff, 1).await.unwrap();
    let exists = |table: &'static str, id: String| async move {
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select count(*) from {table} where id = $1"
        )))
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap();
        n == 1
    };
    assert!(!exists("jobs", old_done).await);
    assert!(
        exists("jobs", old_queued).await,
        "an unfinished job is kept"
    );
    assert!(exists("jobs", recent_done).await);
    assert!(!exists("backups", old_backup).await);
    assert!(!exists("memory_reports", old_report).await);
}

#[tokio::test]
async fn jobs_can_run_on_a_queue_redis_of_their_own() {
    let mut queue = crate::helpers::PrivateRedis::start().await;
    let queue_url = queue.url();
    let app = crate::helpers::spawn_app_with(crate::helpers::settings(&[
        "--queue-redis-url",
        &queue_url,
    ]))
    .await;
    let _worker = app.spawn_worker_with(&["--queue-redis-url", &queue_url]);
    assert_eq!(app.set("doomed", json!(1)).await.status(), 200);
    let admin = app.key(cache_shared::api_keys::Role::Admin).await;
    let job = app
        .run_public_job(
            &admin,
            app.public(Method::POST, "/api/v1/jobs", &admin)
                .json(&json!({"type": "flush", "params": {}})),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // The job ran on the data plane's Redis...
    assert_eq!(app.get("doomed").await.status(), 404);
    // ...and travelled through the queues' own.
    let pattern = format!("{}:jobs:*", app.queue_prefix);
    let count = async |url: &str| {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.len()
    };
    assert!(count(&queue_url).await > 0);
    assert_eq!(app.scan_keys(&pattern).await, Vec::<String>::new());

    // /health reports the queues' Redis, and is degraded without it.
    let health = |app: &TestApp| app.client.get(app.url("/health")).send();
    let up: Value = health(&app).await.unwrap().json().await.unwrap();
    assert_eq!(up["checks"]["queueRedis"]["status"], "up", "{up}");
    queue.stop().await;
    let answer = health(&app).await.unwrap();
    assert_eq!(answer.status(), 200);
    let down: Value = answer.json().await.unwrap();
    assert_eq!(down["status"], "degraded", "{down}");
    assert_eq!(down["checks"]["queueRedis"]["status"], "down", "{down}");
}
