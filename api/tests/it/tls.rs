//! Transport security (issue 15 point 4): the api binary against a TLS-only
//! `redis-server` and PostgreSQL over TLS, serving HTTPS itself, with
//! certificates made here; and the start-up errors of a TLS mismatch.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::helpers::{spawn_app, unique, wait_until};

const TOKEN: &str = "tls-test-token";

/// A CA and a certificate it signed for `localhost` and `127.0.0.1`.
struct Certificates {
    _dir: TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success(), "openssl {args:?}");
}

fn certificates() -> Certificates {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=cache-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&dir, &ca);
    let mut request = vec!["req", "-subj", "/CN=localhost"];
    request.extend(ec);
    request.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&dir, &request);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    Certificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        _dir: TempDir(dir),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` answering on a TLS port only, killed on drop.
struct TlsRedis {
    port: u16,
    _child: Child,
}

async fn tls_redis(certs: &Certificates) -> TlsRedis {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(&certs.cert)
        .arg("--tls-key-file")
        .arg(&certs.key)
        .arg("--tls-ca-cert-file")
        .arg(&certs.ca)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is installed");
    let ca = certs.ca.clone();
    wait_until(Duration::from_secs(10), || {
        let ca = ca.clone();
        async move { redis_cli(port, &ca, &["PING"]).await == "PONG" }
    })
    .await;
    TlsRedis {
        port,
        _child: child,
    }
}

/// `redis-cli` over TLS, trusting `ca`; its trimmed output.
async fn redis_cli(port: u16, ca: &Path, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["--tls", "-p", &port.to_string(), "--cacert"])
        .arg(ca)
        .args(args)
        .output()
        .await
        .expect("redis-cli is installed");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The api binary with `env`, its output kept.
fn api(env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cache-api"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("INTERNAL_SERVICE_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("the cache-api binary runs")
}

/// Waits for the binary to stop by itself; returns its exit success and output.
async fn exited(child: Child) -> (bool, String) {
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("cache-api stopped at start-up")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn the_api_reaches_redis_and_postgres_over_tls_and_serves_https() {
    let certs = certificates();
    let redis = tls_redis(&certs).await;
    // The in-process app creates and migrates the tests' database.
    let migrated = spawn_app().await;
    let application = unique("tls");
    let separator = if migrated.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let database_url = format!(
        "{}{separator}sslmode=require&application_name={application}",
        migrated.database_url
    );
    let port = free_port();
    let mut child = api(&[
        ("REDIS_URL", &format!("rediss://127.0.0.1:{}", redis.port)),
        ("SSL_CERT_FILE", certs.ca.to_str().unwrap()),
        ("DATABASE_URL", &database_url),
        ("SERVICE_PORT", &port.to_string()),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("TLS_CERT_FILE", certs.cert.to_str().unwrap()),
        ("TLS_KEY_FILE", certs.key.to_str().unwrap()),
    ]);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    wait_until(Duration::from_secs(20), || async {
        https
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    let tenant = unique("t");
    let set = https
        .post(format!("{base}/internal/cache/set"))
        .header("X-Service-Token", TOKEN)
        .header("X-Tenant-Id", &tenant)
        .json(&json!({"key": "greeting", "value": "over tls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let read: Value = https
        .get(format!("{base}/internal/cache/get/greeting"))
        .header("X-Service-Token", TOKEN)
        .header("X-Tenant-Id", &tenant)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["value"], "over tls");
    // It is in the TLS-only Redis.
    let stored = redis_cli(
        redis.port,
        &certs.ca,
        &["STRLEN", &format!("c:{{{tenant}}}:greeting")],
    )
    .await;
    assert_ne!(stored, "0");

    // Its PostgreSQL sessions are encrypted.
    let sessions: Vec<bool> = sqlx::query_scalar(
        "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) \
         where a.application_name = $1",
    )
    .bind(&application)
    .fetch_all(&migrated.state.db)
    .await
    .unwrap();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|ssl| *ssl),
        "{sessions:?}"
    );

    // Plain HTTP is not served on the HTTPS port.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
    child.start_kill().unwrap();
}

#[tokio::test]
async fn a_tls_mismatch_with_redis_stops_start_up_with_a_clear_error() {
    let certs = certificates();
    let redis = tls_redis(&certs).await;
    let database_url = spawn_app().await.database_url.clone();
    let port = free_port().to_string();
    let common = [
        ("DATABASE_URL", database_url.as_str()),
        ("SERVICE_PORT", port.as_str()),
    ];

    // Plain text to a TLS-only port.
    let plain = format!("redis://127.0.0.1:{}", redis.port);
    let mut env = vec![("REDIS_URL", plain.as_str())];
    env.extend(common);
    let (ok, output) = exited(api(&env)).await;
    assert!(!ok && output.contains("rediss://"), "{output}");

    // TLS with a certificate nobody told it to trust.
    let tls = format!("rediss://127.0.0.1:{}", redis.port);
    let mut env = vec![("REDIS_URL", tls.as_str())];
    env.extend(common);
    let (ok, output) = exited(api(&env)).await;
    assert!(
        !ok && output.contains("TLS handshake") && output.contains("SSL_CERT_FILE"),
        "{output}"
    );

    // TLS to a plain-text Redis.
    let mut env = vec![("REDIS_URL", "rediss://127.0.0.1:6379")];
    env.extend(common);
    let (ok, output) = exited(api(&env)).await;
    assert!(!ok && output.contains("TLS handshake"), "{output}");
    // No secret of the URL is repeated.
    assert!(!output.contains("rediss://127.0.0.1:6379"), "{output}");
}
