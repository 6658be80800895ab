//! Secrets stay secret: a whole run of `cache-api` and a worker at
//! `RUST_LOG=trace` — sessions, a permission entry, values, an API key, service
//! tokens, refused credentials, a job and the operation log shipped to the
//! worker — leaves no session id, token, key or value in their logs, in
//! `/status`, `/health` or `/metrics`, or in a session's error message.

use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::helpers::{free_port, spawn_app, unique, wait_until};

/// Set in the environment of the test process re-run as the worker.
const WORKER_PROCESS: &str = "CACHE_SERVICE_SECRETS_TEST_WORKER";

/// Every secret of the run carries this mark; nothing else does.
const MARK: &str = "s3cr3t";

/// A child process whose standard output and error are read while it runs
/// (at `trace` they would fill a pipe and stall it).
struct Logged {
    child: tokio::process::Child,
    output: Vec<JoinHandle<Vec<u8>>>,
}

impl Logged {
    fn start(mut command: tokio::process::Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("process starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let output = vec![drain(stdout), drain(stderr)];
        Self { child, output }
    }

    /// Stops the process as SIGTERM does and returns all it wrote.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("still running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stopped within 30 s of SIGTERM")
            .expect("exit status");
        let mut text = String::new();
        for part in self.output {
            text.push_str(&String::from_utf8_lossy(&part.await.expect("reader")));
        }
        assert!(status.success(), "{status}:\n{}", tail(&text));
        text
    }
}

fn drain(mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes).await;
        bytes
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The lines of `log` holding any of `secrets`, for the failure message.
fn leaks(log: &str, secrets: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|line| secrets.iter().any(|s| line.contains(s)))
        .take(20)
        .map(|line| line.chars().take(600).collect())
        .collect()
}

#[tokio::test]
async fn no_secret_reaches_the_logs_of_a_whole_run() {
    // The in-process app is only the test database's keeper and stores the API key.
    let setup = spawn_app().await;
    let secret = |what: &str| unique(&format!("{what}-{MARK}"));
    let (service_token, named_token) = (secret("service-token"), secret("named-token"));
    let (sid, session_data) = (secret("session"), secret("session-data"));
    let (key, value) = (secret("key"), secret("value"));
    let (public_key, public_value) = (secret("public-key"), secret("public-value"));
    let permission = format!(
        "permission:{}:{}:{}:read",
        unique("user"),
        setup.tenant,
        secret("resource")
    );
    let permission_result = secret("permission-result");
    let user = unique("user");
    let api_key = setup.key(cache_shared::api_keys::Role::Admin).await;
    let queue_prefix = unique("secrets-queue");
    let port = free_port();

    let common = |command: &mut tokio::process::Command| {
        command
            .env("RUST_LOG", "trace")
            .env("LOG_FORMAT", "human")
            .env("NO_COLOR", "1")
            .envs(setup.redis_env())
            .env("DATABASE_URL", &setup.database_url)
            .env("QUEUE_PREFIX", &queue_prefix)
            .env("LOG_READ_SAMPLE_RATE", "1")
            .env("LOG_FLUSH_INTERVAL_MS", "100");
    };
    let mut api = tokio::process::Command::new(env!("CARGO_BIN_EXE_cache-api"));
    common(&mut api);
    api.env("SERVICE_PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("API_THREADS", "2")
        .env("INTERNAL_SERVICE_TOKEN", &service_token)
        .env("INTERNAL_SERVICE_TOKENS", format!("billing:{named_token}"));
    let api = Logged::start(api);
    // The worker: this test binary again, running only `worker_process`.
    let mut worker = tokio::process::Command::new(std::env::current_exe().expect("test binary"));
    worker.args([
        "--exact",
        "secrets::worker_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    common(&mut worker);
    worker
        .env(WORKER_PROCESS, "1")
        .env("WORKER_NAME", unique("secrets-worker"))
        .env("WORKER_METRICS_PORT", "0");
    let worker = Logged::start(worker);

    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    wait_until(Duration::from_secs(30), || async {
        client
            .get(url("/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let internal = |method: Method, path: &str, token: &str| {
        client
            .request(method, url(path))
            .header("X-Service-Token", token)
            .header("X-Tenant-Id", &setup.tenant)
    };
    let status = |request: reqwest::RequestBuilder| async move {
        request
            .send()
            .await
            .expect("request sent")
            .status()
            .as_u16()
    };

    // Sessions: created, read (and touched), missed, deleted.
    let created = internal(Method::POST, "/internal/cache/session/set", &service_token).json(
        &json!({"sessionId": sid, "userId": user, "tenantId": setup.tenant,
                "data": {"token": session_data}}),
    );
    assert_eq!(status(created).await, 200);
    for path in [
        format!("/internal/cache/session/get/{sid}?touch=true"),
        format!("/internal/cache/session/{sid}"),
    ] {
        assert_eq!(
            status(internal(Method::GET, &path, &named_token)).await,
            200
        );
    }
    let deleted = internal(
        Method::DELETE,
        &format!("/internal/cache/session/delete/{sid}"),
        &service_token,
    );
    assert_eq!(status(deleted).await, 200);
    let missed = internal(
        Method::GET,
        &format!("/internal/cache/session/{sid}"),
        &service_token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(missed.status(), 404);
    let missed = missed.text().await.unwrap();
    assert!(
        !missed.contains(&sid),
        "the session id in an error: {missed}"
    );
    assert!(missed.contains("KEY_NOT_FOUND"), "{missed}");
    let other = internal(Method::POST, "/internal/cache/session", &service_token).json(
        &json!({"sessionId": secret("other-session"), "userId": user, "tenantId": setup.tenant}),
    );
    assert_eq!(status(other).await, 200);

    // A permission entry: stored, read by key, invalidated by key.
    let stored = internal(
        Method::POST,
        "/internal/cache/permission/set",
        &service_token,
    )
    .json(&json!({"key": permission, "result": {"grant": permission_result}}));
    assert_eq!(status(stored).await, 200);
    let read = internal(
        Method::GET,
        &format!("/internal/cache/permission/get?key={permission}"),
        &named_token,
    );
    assert_eq!(status(read).await, 200);
    let gone = internal(
        Method::DELETE,
        &format!("/internal/cache/permission/invalidate?key={permission}"),
        &service_token,
    );
    assert_eq!(status(gone).await, 200);

    // Values on the internal plane, and a miss.
    let set = internal(Method::POST, "/internal/cache/set", &service_token)
        .json(&json!({"key": key, "value": {"v": value}, "ttl": 60}));
    assert_eq!(status(set).await, 200);
    let get = internal(
        Method::GET,
        &format!("/internal/cache/get/{key}"),
        &named_token,
    );
    assert_eq!(status(get).await, 200);
    let mget = internal(Method::POST, "/internal/cache/mget", &service_token)
        .json(&json!({"keys": [key, secret("absent-key")]}));
    assert_eq!(status(mget).await, 200);
    let miss = internal(
        Method::GET,
        &format!("/internal/cache/get/{}", secret("missing-key")),
        &service_token,
    );
    assert_eq!(status(miss).await, 404);

    // The public plane with an API key; refused credentials on both planes.
    let public = |method: Method, path: &str, bearer: &str| {
        client.request(method, url(path)).bearer_auth(bearer)
    };
    let put = public(
        Method::PUT,
        &format!("/api/v1/cache/keys/{public_key}"),
        &api_key,
    )
    .json(&json!({"value": public_value, "ttl": 60}));
    assert_eq!(status(put).await, 200);
    let get = public(
        Method::GET,
        &format!("/api/v1/cache/keys/{public_key}"),
        &api_key,
    );
    assert_eq!(status(get).await, 200);
    let bogus_bearer = secret("bogus-bearer");
    let refused = public(
        Method::GET,
        &format!("/api/v1/cache/keys/{public_key}"),
        &bogus_bearer,
    );
    assert_eq!(status(refused).await, 401);
    let bogus_token = secret("bogus-service-token");
    let refused = internal(
        Method::GET,
        &format!("/internal/cache/get/{key}"),
        &bogus_token,
    );
    assert_eq!(status(refused).await, 401);
    let stray = client.get(url(&format!("/no/such/{}", secret("path"))));
    assert_eq!(status(stray).await, 404);

    // A job the worker runs: revoke the user's sessions.
    let accepted: Value = internal(
        Method::POST,
        "/internal/cache/session/cleanup",
        &service_token,
    )
    .json(&json!({"userId": user}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let status_url = accepted["statusUrl"]
        .as_str()
        .expect("statusUrl")
        .to_owned();
    wait_until(Duration::from_secs(30), || async {
        let job: Value = internal(Method::GET, &status_url, &service_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        job["status"] == "succeeded"
    })
    .await;
    // The operation log, keys and all, shipped to the worker and stored.
    wait_until(Duration::from_secs(30), || async {
        let (rows,): (i64,) =
            sqlx::query_as("select count(*) from cache_operation_logs where tenant_id = $1")
                .bind(&setup.tenant)
                .fetch_one(&setup.state.db)
                .await
                .unwrap();
        rows > 0
    })
    .await;

    // What the api shows about itself.
    let mut shown = Vec::new();
    for request in [
        public(Method::GET, "/api/v1/cache/status", &api_key),
        client.get(url("/health")),
        client.get(url("/metrics")),
        internal(Method::GET, "/internal/cache/metrics", &service_token),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        shown.push(response.text().await.unwrap());
    }
    let shown = shown.join("\n");

    let api_log = api.stop().await;
    let worker_log = worker.stop().await;

    let secrets = [MARK, api_key.as_str()];
    assert!(
        api_log.contains("/internal/cache/session/{id}")
            && api_log.contains("/api/v1/cache/keys/{key}"),
        "the api's trace log names no route template:\n{}",
        tail(&api_log)
    );
    assert!(
        worker_log.contains("log_persist") && worker_log.contains("session_cleanup"),
        "the worker's trace log shows no job:\n{}",
        tail(&worker_log)
    );
    assert!(
        leaks(&api_log, &secrets).is_empty(),
        "secrets in the api's log ({} bytes):\n{}",
        api_log.len(),
        leaks(&api_log, &secrets).join("\n")
    );
    assert!(
        leaks(&worker_log, &secrets).is_empty(),
        "secrets in the worker's log ({} bytes):\n{}",
        worker_log.len(),
        leaks(&worker_log, &secrets).join("\n")
    );
    assert!(
        leaks(&shown, &secrets).is_empty(),
        "secrets in /status, /health or /metrics:\n{}",
        leaks(&shown, &secrets).join("\n")
    );
}

/// The worker of `no_secret_reaches_the_logs_of_a_whole_run`, run as a
/// process of its own (this test binary again) so that its logs are its
/// own: what `cache-worker`'s `main` does, configured by the environment.
/// Does nothing when run otherwise.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "the worker process of no_secret_reaches_the_logs_of_a_whole_run"]
async fn worker_process() {
    if std::env::var_os(WORKER_PROCESS).is_none() {
        return;
    }
    let settings = <cache_worker::Cli as clap::Parser>::try_parse_from(["cache-worker"])
        .expect("worker settings from the environment")
        .settings();
    cache_shared::telemetry::init(&settings.telemetry).expect("logging");
    cache_worker::run(settings, cache_shared::shutdown::signal())
        .await
        .expect("the worker ran");
}
