//! Observability end to end: `/metrics` (checked by promtool), statistics
//! rollups merged across instances, the operation log (also through a
//! PostgreSQL outage), and the outbound monitoring and audit reports against
//! local fake services.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use cache_jobs::upkeep::{LogPersistJob, StatsRollupJob, TenantFigures};
use cache_shared::api_keys::Role;
use cache_shared::db::admin_actions;
use cache_shared::stats::rollup::{OpFigures, PeriodFigures};
use chrono::{TimeZone, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{sample, scrape, settings, spawn_app, spawn_app_with, unique, wait_until};

#[tokio::test]
async fn metrics_follow_a_known_sequence_and_pass_promtool() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let gets_before = before
        .lines()
        .find(|l| l.starts_with("cache_response_time_ms_count{operation=\"get\"}"))
        .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap());
    let secret_key = unique("never-a-label");
    assert_eq!(app.set(&secret_key, json!(1)).await.status(), 200);
    for _ in 0..3 {
        assert_eq!(app.get(&secret_key).await.status(), 200);
    }
    assert_eq!(app.get(&unique("absent")).await.status(), 404);

    let text = scrape(&app).await;
    // Tests share the process: compare against the figures before.
    let gets = sample(&text, "cache_response_time_ms_count{operation=\"get\"}");
    assert_eq!(gets - gets_before, 4.0);
    assert!(sample(&text, "cache_hits_total") >= 3.0);
    assert!(sample(&text, "cache_misses_total") >= 1.0);
    assert!(
        sample(
            &text,
            "http_requests_total{method=\"POST\",route=\"/internal/cache/set\",status=\"200\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &text,
            "http_requests_total{method=\"GET\",route=\"/internal/cache/get/{key}\",status=\"404\"}"
        ) >= 1.0
    );
    for name in [
        "cache_hit_rate_percentage",
        "cache_operations_per_second",
        "cache_error_rate_percentage",
        "cache_memory_usage_mb",
        "cache_memory_max_mb",
        "cache_active_connections",
        "cache_total_keys",
        "cache_timeout_total",
        "cache_failover_total",
        "cache_pool_size",
        "cache_queue_depth{type=\"log_persist\"}",
        "cache_queue_dead{type=\"flush\"}",
        "cache_oplog_buffered",
    ] {
        sample(&text, name);
    }
    // Bounded labels: never a key or a raw path.
    assert!(!text.contains(&secret_key), "a key leaked into a label");
    let unmatched = app
        .client
        .get(app.url(&format!("/no/such/{secret_key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(unmatched.status(), 404);
    let text = scrape(&app).await;
    assert!(
        !text.contains(&secret_key),
        "a raw path leaked into a label"
    );
    assert!(text.contains("route=\"unmatched\",status=\"404\""));

    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus package)");
    use std::io::Write;
    promtool
        .stdin
        .as_ref()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    // The service design names three metrics in ms and MB; promtool's naming
    // lint flags exactly those. Anything else (a parse error above all) fails.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let design_names = [
        "cache_response_time_ms",
        "cache_memory_usage_mb",
        "cache_memory_max_mb",
    ];
    let problems: Vec<&str> = report
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            !design_names.iter().any(|name| {
                *line == format!("{name} metric names should not contain abbreviated units")
            })
        })
        .collect();
    assert!(problems.is_empty(), "promtool check metrics:\n{report}");
}

#[tokio::test]
async fn a_metrics_token_guards_the_scrape() {
    let app = spawn_app_with(settings(&["--metrics-token", "scrape-me"])).await;
    let anonymous = app.client.get(app.url("/metrics")).send().await.unwrap();
    crate::helpers::assert_error(anonymous, 401, "UNAUTHORIZED").await;
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-you")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
}

#[tokio::test]
async fn instrumentation_off_counts_and_logs_nothing() {
    let app = spawn_app_with(settings(&["--instrumentation", "false"])).await;
    assert_eq!(app.set("k", json!(1)).await.status(), 200);
    assert_eq!(app.get("k").await.status(), 200);
    let text = scrape(&app).await;
    assert!(!text.contains("cache_response_time_ms"), "{text}");
    assert!(!text.contains("http_requests_total"), "{text}");
    assert!(app.state.cache.stats().oplog().is_none());
    let (hits, misses) = app.state.cache.stats().lookups();
    assert_eq!((hits, misses), (0, 0));
}

fn op(calls: u64, errors: u64, latency_us: u64) -> OpFigures {
    OpFigures {
        calls,
        errors,
        sum_us: calls * latency_us,
        max_us: latency_us,
        buckets: BTreeMap::from([(bucket(latency_us), calls)]),
    }
}

/// The live histogram's bucket of `us`, found through the public figures.
fn bucket(us: u64) -> usize {
    let stats = cache_shared::stats::live::LiveStats::default();
    let tenant = stats.tenant(&cache_shared::keys::TenantId::parse("b", "t").unwrap());
    let started = std::time::Instant::now() - Duration::from_micros(us);
    let _ = stats.observe(
        cache_shared::stats::op::Op::Get,
        &tenant,
        started,
        None,
        Ok::<_, cache_shared::Error>(()),
    );
    let mut tracker = cache_shared::stats::rollup::RollupTracker::default();
    let figures = tracker.next_period(&stats);
    *figures[0].1.ops["get"].buckets.keys().next().unwrap()
}

/// A tenant's rolled-up totals over all periods (a test may straddle a
/// period boundary), with the highest p99.
async fn statistics_row(db: &PgPool, tenant: &str) -> Option<(i64, i64, i64, i64, Option<f64>)> {
    sqlx::query_as(
        "select sum(total_operations)::bigint, sum(hits)::bigint, sum(misses)::bigint, \
                sum(errors)::bigint, max(p99_latency_ms) \
         from cache_statistics where tenant_id = $1 having count(*) > 0",
    )
    .bind(tenant)
    .fetch_optional(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_rollup_merges_two_instances_exactly_and_a_rerun_does_not_double() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let tenant = app.tenant.clone();
    // Two keys: 'a' + "J1" and 'bb' + "J\"x\"", 9 bytes, as the period's usage.
    assert_eq!(app.set("a", json!(1)).await.status(), 200);
    assert_eq!(app.set("bb", json!("x")).await.status(), 200);
    let period = Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap();
    let figures =
        |hits, misses, ops: Vec<(&str, OpFigures)>, hot: Vec<(&str, u64)>| PeriodFigures {
            hits,
            misses,
            ops: ops.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            hot_keys: hot.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        };
    let rollup = |instance: &str, f: PeriodFigures| StatsRollupJob {
        id: ulid::Ulid::new().to_string(),
        instance_id: instance.to_owned(),
        period_start: period,
        period_minutes: 1,
        tenants: vec![TenantFigures {
            tenant_id: tenant.clone(),
            figures: f,
        }],
    };
    let a = figures(
        90,
        10,
        vec![("get", op(100, 0, 200)), ("set", op(20, 1, 400))],
        vec![("hot", 800), ("warm", 80)],
    );
    let b = figures(
        5,
        5,
        vec![("get", op(10, 2, 9000))],
        vec![("hot", 160), ("other", 40)],
    );
    app.state
        .jobs
        .push_internal(rollup("api-a", a.clone()))
        .await
        .unwrap();
    app.state
        .jobs
        .push_internal(rollup("api-b", b))
        .await
        .unwrap();
    // The queue delivers at least once: instance a's figures arrive again.
    app.state
        .jobs
        .push_internal(rollup("api-a", a))
        .await
        .unwrap();

    let db = app.state.db.clone();
    wait_until(Duration::from_secs(20), || async {
        statistics_row(&db, &tenant)
            .await
            .is_some_and(|r| r.0 == 130)
    })
    .await;
    // Let the re-delivered copy be handled too before judging it.
    wait_until(Duration::from_secs(20), || async {
        let (n,): (i64,) =
            sqlx::query_as("select count(*) from stats_contributions where tenant_id = $1")
                .bind(&tenant)
                .fetch_one(&db)
                .await
                .unwrap();
        n == 2
            && app
                .state
                .jobs
                .depth()
                .await
                .unwrap()
                .queues
                .iter()
                .all(|q| q.waiting == 0)
    })
    .await;
    let (total, hits, misses, errors, p99) = statistics_row(&db, &tenant).await.unwrap();
    assert_eq!((total, hits, misses, errors), (130, 95, 15, 3));
    let usage: (Option<i64>, Option<i64>) = sqlx::query_as(
        "select key_count, memory_bytes from cache_statistics \
         where tenant_id = $1 and period_start = $2",
    )
    .bind(&tenant)
    .bind(period)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(usage, (Some(2), Some(9)), "from the usage accounting");
    // 10 of 130 calls took 9 ms: the merged p99 is among them.
    let p99 = p99.unwrap();
    assert!((9.0..=10.0).contains(&p99), "p99 {p99}");

    // History over HTTP, and hot keys with their merged counts.
    let key = app.key_for(&tenant, Role::Reader).await;
    let history: Value = app
        .public(
            Method::GET,
            "/api/v1/cache/stats?from=2026-11-20T09:00:00Z&to=2026-11-20T11:00:00Z",
            &key,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["history"][0]["totalOperations"], 130);
    assert_eq!(history["history"][0]["hitRate"], 95.0 * 100.0 / 110.0);
    let hot: Vec<(String, i64, String)> = sqlx::query_as(
        "select cache_key, access_count, trend from cache_hotkeys where tenant_id = $1 \
         order by access_count desc",
    )
    .bind(&tenant)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        hot,
        [
            ("hot".to_owned(), 960, "rising".to_owned()),
            ("warm".to_owned(), 80, "rising".to_owned()),
            ("other".to_owned(), 40, "rising".to_owned()),
        ]
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_instance_ships_its_figures_at_shutdown_and_hot_keys_stay_hot_across_windows() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let tenant = app.tenant.clone();
    let db = app.state.db.clone();
    let jobs = app.state.jobs.clone();
    assert_eq!(app.set("hammered", json!("x")).await.status(), 200);
    for _ in 0..400 {
        assert_eq!(app.get("hammered").await.status(), 200);
    }
    assert_eq!(app.get("missing").await.status(), 404);
    // The health answer reads the queue: its connection is first driven by
    // a serving thread, whose runtime is gone when the last period ships.
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    app.stop().await;
    wait_until(Duration::from_secs(20), || async {
        statistics_row(&db, &tenant)
            .await
            .is_some_and(|r| r.0 == 402)
    })
    .await;
    let (total, hits, misses, errors, _) = statistics_row(&db, &tenant).await.unwrap();
    // A miss is a successful read, not an error.
    assert_eq!((total, hits, misses, errors), (402, 400, 1, 0));
    let (key, reads, window): (String, i64, chrono::DateTime<Utc>) = sqlx::query_as(
        "select cache_key, sum(access_count)::bigint, max(window_start) from cache_hotkeys \
         where tenant_id = $1 group by cache_key order by 2 desc limit 1",
    )
    .bind(&tenant)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(key, "hammered");
    // Sampled one read in eight: the estimate is within a sample of the truth.
    assert!((392..=408).contains(&reads), "{reads}");

    // The next window sees the key hot again: stable, and worth preloading.
    let (last,): (i64,) = sqlx::query_as(
        "select access_count from cache_hotkeys where tenant_id = $1 and window_start = $2 \
         and cache_key = 'hammered'",
    )
    .bind(&tenant)
    .bind(window)
    .fetch_one(&db)
    .await
    .unwrap();
    let next_window = window + chrono::Duration::minutes(1);
    let next = StatsRollupJob {
        id: ulid::Ulid::new().to_string(),
        instance_id: "api-next".into(),
        period_start: next_window,
        period_minutes: 1,
        tenants: vec![TenantFigures {
            tenant_id: tenant.clone(),
            figures: PeriodFigures {
                hot_keys: BTreeMap::from([("hammered".to_owned(), u64::try_from(last).unwrap())]),
                ..PeriodFigures::default()
            },
        }],
    };
    jobs.push_internal(next).await.unwrap();
    wait_until(Duration::from_secs(20), || async {
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "select trend, should_preload from cache_hotkeys where tenant_id = $1 \
             and window_start = $2",
        )
        .bind(&tenant)
        .bind(next_window)
        .fetch_all(&db)
        .await
        .unwrap();
        rows == [("stable".to_owned(), true)]
    })
    .await;
    worker.stop().await;
}

/// A TCP relay to PostgreSQL that a test can cut (every connection dropped,
/// new ones refused) and restore: the database becomes unreachable for
/// whoever connects through it, and the server itself stays untouched.
struct Relay {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = tokio::sync::watch::channel(false);
        let watch = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *watch.borrow() {
                    continue; // dropped: refused
                }
                let mut stop = watch.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stop.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// `url` with its host and port replaced by the relay's.
    fn url_of(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').unwrap();
        let (_, path) = rest.split_once('/').unwrap();
        format!("{scheme_user}@127.0.0.1:{}/{path}", self.port)
    }
}

async fn log_rows(db: &PgPool, request_id: &str) -> Vec<cache_shared::oplog::LogRecord> {
    cache_shared::db::oplog::of_request(db, request_id)
        .await
        .unwrap()
}

#[tokio::test]
async fn writes_deletes_and_errors_are_logged_once_with_their_request() {
    let app = spawn_app().await;
    let worker = app.spawn_worker();
    let db = app.state.db.clone();
    let request = unique("req");
    let mset = app
        .internal(Method::POST, "/internal/cache/mset")
        .header("X-Request-Id", &request)
        .json(&json!({"items": [{"key": "a", "value": 1}, {"key": "b", "value": "bb"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(mset.status(), 200);
    let delete_request = unique("req");
    let delete = app
        .internal(Method::DELETE, "/internal/cache/delete/a")
        .header("X-Request-Id", &delete_request)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 200);

    let admin = app.key(Role::Admin).await;
    let flush_request = unique("req");
    let flush = app
        .public(Method::POST, "/api/v1/cache/flush", &admin)
        .header("X-Request-Id", &flush_request)
        .json(&json!({"namespace": "user:"}))
        .send()
        .await
        .unwrap();
    assert_eq!(flush.status(), 202);

    wait_until(Duration::from_secs(20), || async {
        log_rows(&db, &request).await.len() == 2
            && log_rows(&db, &delete_request).await.len() == 1
            && log_rows(&db, &flush_request).await.len() == 1
    })
    .await;
    let flushed = &log_rows(&db, &flush_request).await[0];
    assert_eq!(
        (flushed.operation.as_str(), flushed.cache_key.as_deref()),
        ("flush", Some("user:*"))
    );
    assert!(flushed.actor.is_some());
    let rows = log_rows(&db, &request).await;
    assert_eq!(
        rows.iter()
            .map(|r| (
                r.item,
                r.operation.as_str(),
                r.cache_key.as_deref(),
                r.outcome.as_str()
            ))
            .collect::<Vec<_>>(),
        [(0, "mset", Some("a"), "ok"), (1, "mset", Some("b"), "ok")]
    );
    assert!(
        rows.iter()
            .all(|r| r.tenant_id == app.tenant && r.actor.as_deref() == Some("service"))
    );
    assert_eq!(rows[1].value_bytes, Some(5)); // "bb" as stored: a tag byte and JSON text
    assert_eq!(log_rows(&db, &delete_request).await[0].operation, "delete");

    // A batch delivered twice lands once.
    let again = LogPersistJob {
        id: ulid::Ulid::new().to_string(),
        records: rows.clone(),
    };
    app.state.jobs.push_internal(again).await.unwrap();
    let probe = unique("req");
    let marker = LogPersistJob {
        id: ulid::Ulid::new().to_string(),
        records: vec![cache_shared::oplog::LogRecord {
            request_id: probe.clone(),
            ..rows[0].clone()
        }],
    };
    // Jobs of one queue run in order here; the marker arriving means the
    // duplicate before it was handled.
    app.state.jobs.push_internal(marker).await.unwrap();
    wait_until(Duration::from_secs(20), || async {
        log_rows(&db, &probe).await.len() == 1
    })
    .await;
    assert_eq!(log_rows(&db, &request).await, rows);
    worker.stop().await;
}

#[tokio::test]
async fn log_batches_wait_out_a_postgres_outage_and_all_arrive_once() {
    let app = spawn_app_with(settings(&[
        "--log-batch-size",
        "10",
        "--log-flush-interval-ms",
        "50",
    ]))
    .await;
    let relay = Relay::start("127.0.0.1:5432".parse().unwrap()).await;
    let through_relay = relay.url_of(&app.database_url);
    let worker = app.spawn_worker_with(&[
        "--database-url",
        &through_relay,
        "--database-timeout-ms",
        "500",
    ]);
    let db = app.state.db.clone();
    // The worker is up (it waits for PostgreSQL at start) before the cut.
    wait_until(Duration::from_secs(20), || async {
        cache_shared::health::live_workers(app.state.cache.redis())
            .await
            .unwrap_or(0)
            > 0
    })
    .await;
    relay.set_cut(true);
    let request = unique("outage");
    let items: Vec<Value> = (0..35)
        .map(|i| json!({"key": format!("k{i}"), "value": i}))
        .collect();
    let response = app
        .internal(Method::POST, "/internal/cache/mset")
        .header("X-Request-Id", &request)
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The batches are shipped to the queue while nothing can be stored.
    let oplog = app.state.cache.stats().oplog().unwrap().clone();
    wait_until(Duration::from_secs(10), || {
        let oplog = oplog.clone();
        async move { oplog.is_empty() }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage lasts a while
    assert!(log_rows(&db, &request).await.is_empty());

    relay.set_cut(false);
    wait_until(Duration::from_secs(30), || async {
        log_rows(&db, &request).await.len() == 35
    })
    .await;
    let items: Vec<i32> = log_rows(&db, &request)
        .await
        .iter()
        .map(|r| r.item)
        .collect();
    assert_eq!(items, (0..35).collect::<Vec<_>>());
    worker.stop().await;
}

/// A post the fake service got: path, `X-Service-Token` and JSON body.
type Received = (String, Option<String>, Value);

/// A local stand-in for the monitoring or audit service: answers 503 to the
/// first `failures` posts, then 200, and keeps what it was sent.
#[derive(Clone, Default)]
struct FakeService {
    received: Arc<Mutex<Vec<Received>>>,
    failures: Arc<Mutex<usize>>,
}

impl FakeService {
    async fn start(failures: usize) -> (Self, String) {
        let fake = FakeService {
            failures: Arc::new(Mutex::new(failures)),
            ..FakeService::default()
        };
        let state = fake.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let token = headers
                        .get("x-service-token")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    state
                        .received
                        .lock()
                        .unwrap()
                        .push((uri.path().to_owned(), token, body));
                    let mut failures = state.failures.lock().unwrap();
                    if *failures > 0 {
                        *failures -= 1;
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::ACCEPTED
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (fake, url)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn the_metrics_report_reaches_monitoring_with_the_token_after_retries() {
    let (fake, url) = FakeService::start(2).await;
    let app = spawn_app_with(settings(&[
        "--monitoring-service-url",
        &url,
        "--monitoring-interval-s",
        "1",
        "--outbound-service-token",
        "out-token",
    ]))
    .await;
    // Two refusals, then the retry policy (1 s, 2 s) gets the third through.
    wait_until(Duration::from_secs(15), || async {
        fake.received().len() >= 3
    })
    .await;
    let received = fake.received();
    assert!(received.iter().all(|(path, token, _)| {
        path == "/internal/metrics/cache" && token.as_deref() == Some("out-token")
    }));
    let report = &received[2].2;
    assert_eq!(report["service"], "cache-service");
    assert_eq!(report["instanceId"], json!(app.state.instance_id));
    for field in [
        "hitRate",
        "memoryUsage",
        "connectionCount",
        "operationsPerSecond",
    ] {
        assert!(
            report["metrics"].get(field).is_some(),
            "{field} missing: {report}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn admin_actions_reach_the_audit_service_even_after_a_whole_failed_round() {
    // Four refusals: the first round (a try and 3 retries) fails whole, and
    // the event waits in the outbox for the next round.
    let (fake, url) = FakeService::start(4).await;
    // A database of its own: no other test's admin actions in the outbox.
    let own_db = cache_shared::db::testing::fresh_database(&settings(&[]).database.database_url)
        .await
        .unwrap();
    let app = spawn_app_with(settings(&["--database-url", &own_db])).await;
    let worker = app.spawn_worker_with(&[
        "--audit-service-url",
        &url,
        "--outbound-service-token",
        "audit-token",
    ]);
    let operator = app.key_for(&app.tenant, Role::Operator).await;
    let created: Value = app
        .public(Method::POST, "/api/v1/admin/keys", &operator)
        .json(&json!({"tenant": app.tenant, "role": "reader", "name": "audited"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let (operator_id,): (String,) =
        sqlx::query_as("select id from api_keys where tenant_id = $1 and role = 'operator'")
            .bind(&app.tenant)
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    let attempts_for_key = || {
        fake.received()
            .into_iter()
            .filter(|(_, _, body)| body["details"]["keyId"] == key_id.as_str())
            .collect::<Vec<_>>()
    };
    // The fifth attempt (second round) is the first the service accepts.
    wait_until(Duration::from_secs(40), || async {
        attempts_for_key().len() >= 5
    })
    .await;
    let attempts = attempts_for_key();
    assert_eq!(attempts[0].2["action"], "key.create");
    assert!(attempts.iter().all(|(path, token, body)| {
        path == "/internal/events"
            && token.as_deref() == Some("audit-token")
            && body["actor"] == json!(operator_id)
            && body["tenantId"] == json!(app.tenant)
    }));
    let db = app.state.db.clone();
    wait_until(Duration::from_secs(10), || async {
        let (pending,): (i64,) = sqlx::query_as(
            "select count(*) from admin_actions where tenant_id = $1 and audit_delivered_at is null",
        )
        .bind(&app.tenant)
        .fetch_one(&db)
        .await
        .unwrap();
        pending == 0
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_flush_audit_event_is_held_while_its_job_is_queued_and_released_after() {
    let app = spawn_app().await;
    let db = app.state.db.clone();
    let admin = app.key(Role::Admin).await;
    let accepted: Value = app
        .public(Method::POST, "/api/v1/cache/flush", &admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (due, details): (bool, Value) = sqlx::query_as(
        "select audit_next_at <= now(), details from admin_actions \
         where tenant_id = $1 and action = 'flush'",
    )
    .bind(&app.tenant)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(due, "the queued flush's event is released at once");
    assert_eq!(details["jobId"], accepted["jobId"]);

    // The hold itself: not due until released; forgotten, it is gone.
    let due_now = |id: i64| {
        let db = db.clone();
        async move {
            let (due,): (bool,) =
                sqlx::query_as("select audit_next_at <= now() from admin_actions where id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            due
        }
    };
    let held = admin_actions::record_held(
        &db,
        "test",
        &app.tenant,
        "restore",
        &json!({}),
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    assert!(!due_now(held).await);
    admin_actions::release(&db, held).await.unwrap();
    assert!(due_now(held).await);
    let abandoned = admin_actions::record_held(
        &db,
        "test",
        &app.tenant,
        "restore",
        &json!({}),
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    admin_actions::forget(&db, abandoned).await.unwrap();
    let (left,): (i64,) = sqlx::query_as("select count(*) from admin_actions where id = $1")
        .bind(abandoned)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_retention_sweep_removes_only_records_past_the_cutoff_with_two_sweepers() {
    // A database of its own: other tests' workers sweep the shared one.
    let own_db = cache_shared::db::testing::fresh_database(&settings(&[]).database.database_url)
        .await
        .unwrap();
    let app = spawn_app_with(settings(&["--database-url", &own_db])).await;
    let db = app.state.db.clone();
    let tenant = unique("retention");
    let record = |i: i32, age_days: i64| cache_shared::oplog::LogRecord {
        request_id: format!("{tenant}-{i}"),
        item: 0,
        tenant_id: tenant.clone(),
        operation: "set".into(),
        cache_key: Some(format!("k{i}")),
        outcome: "ok".into(),
        latency_us: 1,
        value_bytes: None,
        error_code: None,
        actor: None,
        occurred_at: Utc::now() - chrono::Duration::days(age_days),
    };
    let old: Vec<_> = (0..250).map(|i| record(i, 40)).collect();
    let recent: Vec<_> = (250..260).map(|i| record(i, 20)).collect();
    cache_shared::db::oplog::insert_batch(&db, &[old, recent].concat())
        .await
        .unwrap();
    let cutoff = Utc::now() - chrono::Duration::days(30);
    let (a, b) = tokio::join!(
        cache_shared::db::oplog::purge_before(&db, cutoff, 20),
        cache_shared::db::oplog::purge_before(&db, cutoff, 20),
    );
    assert_eq!(a.unwrap() + b.unwrap(), 250);
    let (left,): (i64,) =
        sqlx::query_as("select count(*) from cache_operation_logs where tenant_id = $1")
            .bind(&tenant)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(left, 10);
    app.stop().await;
}

#[tokio::test]
async fn one_bad_operation_log_record_never_costs_the_rest_of_its_batch() {
    use cache_shared::db::oplog;
    use cache_shared::oplog::LogRecord;

    let app = spawn_app().await;
    let request = ulid::Ulid::new().to_string();
    let now = Utc::now();
    let mut records: Vec<LogRecord> = (0..1000)
        .map(|i| LogRecord {
            request_id: request.clone(),
            item: i,
            tenant_id: app.tenant.clone(),
            operation: "mset".into(),
            cache_key: Some(format!("k{i}")),
            outcome: "ok".into(),
            latency_us: 10,
            value_bytes: Some(3),
            error_code: None,
            actor: Some("service".into()),
            occurred_at: now,
        })
        .collect();
    records[17].cache_key = Some("k".repeat(513));
    records[901].cache_key = Some("nul\u{0}byte".into());
    let stored = oplog::insert_batch(&app.state.db, &records).await.unwrap();
    assert_eq!(
        stored,
        oplog::Stored {
            inserted: 998,
            rejected: 2
        }
    );
    let kept = oplog::of_request(&app.state.db, &request).await.unwrap();
    assert_eq!(kept.len(), 998);
    assert!(kept.iter().all(|r| r.item != 17 && r.item != 901));
    // Delivered again: nothing twice, the same two refused.
    let again = oplog::insert_batch(&app.state.db, &records).await.unwrap();
    assert_eq!((again.inserted, again.rejected), (0, 2));
}
