//! Stampede protection with leases (API.md §10, after memcache's leases):
//! the first read that misses a key gets a lease token and loads the value;
//! concurrent readers wait for what it writes instead of all going to their
//! databases.
//!
//! The lease is a Redis key beside the value (`l:{tenant}:key`, same hash
//! tag), taken with `SET NX PX` in the same script as the read, so exactly
//! one reader across every api instance holds it. Waiters of one instance
//! share one poller per key: the poller reads the key every
//! [`POLL_EVERY`] until it appears, and a lease-set through this instance
//! wakes it at once. So a thousand waiters cost one read per poll, not a
//! thousand.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};
use tokio::sync::{Notify, watch};

use crate::error::Error;

/// How often a waiting instance reads a leased key when no local write woke it.
pub const POLL_EVERY: Duration = Duration::from_millis(2);

/// Longest a reader may wait for a lease holder (`leaseWaitMs`).
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// What a lease read found.
#[derive(Debug)]
pub enum LeaseRead {
    /// The stored bytes.
    Found(Vec<u8>),
    /// A miss; the caller now holds the lease with this token.
    Granted(String),
    /// A miss while another caller holds the lease.
    Held,
}

/// KEYS: the value, its lease. ARGV: a fresh token, the lease's TTL in ms.
/// Returns `{1, bytes}` on a hit, `{2, token}` when the lease was taken
/// for this caller, `{3}` when someone else holds it.
static LEASE_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ARGV[1]} end
return {3}
",
    )
});

/// Reads `redis_key`, taking its lease `lease_key` for `lease_ttl` on a miss
/// when nobody holds it.
///
/// # Errors
///
/// Redis errors; [`Error::Internal`] without OS randomness for the token.
pub async fn read(
    conn: &mut crate::redis::Conn,
    redis_key: &str,
    lease_key: &str,
    lease_ttl: Duration,
) -> Result<LeaseRead, Error> {
    let token = new_token()?;
    let answer: Vec<redis::Value> = LEASE_READ
        .prepare_invoke()
        .key(redis_key)
        .key(lease_key)
        .arg(&token)
        .arg(u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(conn)
        .await?;
    let mut answer = answer.into_iter();
    Ok(match (answer.next(), answer.next()) {
        (Some(redis::Value::Int(1)), Some(found)) => {
            LeaseRead::Found(redis::from_redis_value(found)?)
        }
        (Some(redis::Value::Int(2)), _) => LeaseRead::Granted(token),
        _ => LeaseRead::Held,
    })
}

/// 128 random bits as hex.
fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// One key being waited for on this instance: the poller publishes the
/// value it found; a local lease-set wakes the poller.
#[derive(Debug)]
struct Watch {
    found: watch::Receiver<Option<Bytes>>,
    wake: Arc<Notify>,
}

/// The keys waited for on this instance.
#[derive(Debug, Default)]
pub struct Waits {
    keys: Mutex<HashMap<String, Watch>>,
}

impl Waits {
    /// Waits up to `wait` for `redis_key` to be written, polling it with
    /// `read` (one poller per key on this instance); `None` when it was not
    /// written in time.
    ///
    /// # Errors
    ///
    /// What `read` returns, when this waiter is the one polling.
    pub async fn wait_for<F, Fut>(
        self: &Arc<Self>,
        redis_key: &str,
        wait: Duration,
        read: F,
    ) -> Result<Option<Bytes>, Error>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<Vec<u8>>, Error>> + Send,
    {
        let mut found = self.subscribe(redis_key, read);
        let outcome = tokio::time::timeout(wait, found.wait_for(Option::is_some)).await;
        Ok(match outcome {
            Ok(Ok(value)) => value.clone(),
            // The poller stopped (no value in its longest wait) or time ran out.
            _ => None,
        })
    }

    /// Wakes the poller of `redis_key`, if any (a lease holder wrote it here).
    pub fn written(&self, redis_key: &str) {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(watch) = keys.get(redis_key) {
            watch.wake.notify_one();
        }
    }

    fn subscribe<F, Fut>(
        self: &Arc<Self>,
        redis_key: &str,
        read: F,
    ) -> watch::Receiver<Option<Bytes>>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<Vec<u8>>, Error>> + Send,
    {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(watch) = keys.get(redis_key) {
            return watch.found.clone();
        }
        let (tx, rx) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        keys.insert(
            redis_key.to_owned(),
            Watch {
                found: rx.clone(),
                wake: Arc::clone(&wake),
            },
        );
        drop(keys);
        let waits = Arc::clone(self);
        let key = redis_key.to_owned();
        tokio::spawn(async move {
            waits.poll(&key, &tx, &wake, read).await;
        });
        rx
    }

    /// Reads the key until it is found, nobody waits any more or
    /// [`MAX_WAIT`] has passed; then forgets it.
    async fn poll<F, Fut>(
        &self,
        key: &str,
        tx: &watch::Sender<Option<Bytes>>,
        wake: &Notify,
        read: F,
    ) where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<Vec<u8>>, Error>>,
    {
        let give_up = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            match read().await {
                Ok(Some(bytes)) => {
                    tx.send_replace(Some(Bytes::from(bytes)));
                    break;
                }
                Ok(None) => {}
                Err(err) => tracing::debug!(%err, "a leased key's poll failed; polling on"),
            }
            {
                // Decided under the lock: a waiter arriving now either finds
                // this poller still listed or starts its own.
                let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                if tx.receiver_count() <= 1 || tokio::time::Instant::now() >= give_up {
                    keys.remove(key);
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL_EVERY) => {}
                () = wake.notified() => {}
            }
        }
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}
