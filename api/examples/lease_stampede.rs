//! A stampede on one missing key, for `bench/strategies.py`: `CALLERS`
//! concurrent `GET ?lease=true` of a fresh key on the api at `BASE`; the
//! caller granted the lease "loads" for `LOAD_MS` and sets the value with
//! its token; every other caller waits for it. Prints one JSON line: how
//! many leases were granted (one load), how many waiters got the value,
//! and how long after the holder's write was acknowledged the last waiter
//! was answered.
//!
//! Usage: `BASE=http://127.0.0.1:3011 TOKEN=… TENANT=… cargo run --release
//! --example lease_stampede`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("BASE")?;
    let token = std::env::var("TOKEN")?;
    let tenant = std::env::var("TENANT")?;
    let callers: usize = std::env::var("CALLERS").map_or(Ok(1000), |c| c.parse())?;
    let load = Duration::from_millis(std::env::var("LOAD_MS").map_or(Ok(50), |c| c.parse())?);
    let key = format!("stampede:{}", std::process::id());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(callers)
        .build()?;
    let get_url = format!("{base}/internal/cache/get/{key}?lease=true&leaseWaitMs=5000");
    let started = Instant::now();
    let (holder_tx, mut holder_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut callers_done = Vec::with_capacity(callers);
    for _ in 0..callers {
        let (client, url, token, tenant) = (
            client.clone(),
            get_url.clone(),
            token.clone(),
            tenant.clone(),
        );
        let holder_tx = holder_tx.clone();
        callers_done.push(tokio::spawn(async move {
            let answer = client
                .get(&url)
                .header("X-Service-Token", &token)
                .header("X-Tenant-Id", &tenant)
                .send()
                .await?;
            let status = answer.status().as_u16();
            let body: Value = answer.json().await?;
            if let Some(lease) = body["details"]["lease"].as_str() {
                let _ = holder_tx.send(lease.to_owned());
            }
            Ok::<_, reqwest::Error>((status, Instant::now()))
        }));
    }
    drop(holder_tx);
    // The holder loads, then writes with its token.
    let lease = holder_rx
        .recv()
        .await
        .ok_or("no caller was granted the lease")?;
    tokio::time::sleep(load).await;
    let written = client
        .post(format!("{base}/internal/cache/set"))
        .header("X-Service-Token", &token)
        .header("X-Tenant-Id", &tenant)
        .json(&json!({"key": key, "value": {"loaded": true}, "lease": lease}))
        .send()
        .await?;
    let written_at = Instant::now();
    if !written.status().is_success() {
        return Err(format!("the holder's write answered {}", written.status()).into());
    }
    let mut granted = 1 + usize::from(holder_rx.recv().await.is_some());
    while holder_rx.try_recv().is_ok() {
        granted += 1;
    }
    let (mut served, mut other, mut latest) = (0usize, 0usize, written_at);
    for done in callers_done {
        let (status, at) = done.await??;
        match status {
            200 => {
                served += 1;
                latest = latest.max(at);
            }
            404 => {}
            _ => other += 1,
        }
    }
    let after_write_ms = latest.saturating_duration_since(written_at).as_secs_f64() * 1000.0;
    println!(
        "{}",
        json!({
            "callers": callers,
            "leasesGranted": granted,
            "waitersServed": served,
            "otherStatuses": other,
            "lastServedAfterWriteMs": after_write_ms,
            "totalMs": started.elapsed().as_secs_f64() * 1000.0,
        })
    );
    Ok(())
}
