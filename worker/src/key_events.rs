//! Reports keys that expire or that Redis evicts as `expired` and `evicted`
//! events of their tenants (API.md §10; see [`cache_shared::events`]). No
//! script sees these: Redis announces them (keyspace notifications, which
//! this turns on), and one worker at a time, the holder of
//! [`FORWARDER_LOCK`], appends them to the streams of tenants someone
//! listens to.

use std::time::Duration;

use cache_shared::config::RedisSettings;
use cache_shared::events;
use cache_shared::redis::RedisStore;
use deadpool_redis::redis::{self, AsyncCommands};
use futures::StreamExt;
use tokio::sync::watch;

/// Held by the worker forwarding, renewed while it does.
const FORWARDER_LOCK: &str = "e:{_platform}:forwarder";

/// How long the lock lasts unless renewed; a stopped forwarder's successor
/// takes over after at most this.
const LOCK_MS: u64 = 15_000;

/// How often the lock is renewed (and, without it, tried).
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// The notification classes needed: keyevent (`E`), expired (`x`), evicted (`e`).
const NEEDED_FLAGS: &str = "Exe";

/// Forwards expirations and evictions while holding the lock, until `stop`.
pub(crate) async fn forward_loop(
    settings: RedisSettings,
    store: RedisStore,
    owner: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match hold_and_forward(&settings, &store, &owner, &mut stop).await {
            Ok(()) => {}
            Err(err) => tracing::warn!(%err, "key events not forwarded; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(RENEW_EVERY) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// Takes (or renews) the lock; `true` while this worker holds it.
async fn lock(store: &RedisStore, owner: &str) -> Result<bool, cache_shared::Error> {
    store
        .timed(async {
            let mut conn = store.conn().await?;
            let held: i64 = redis::Script::new(
                r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
            )
            .key(FORWARDER_LOCK)
            .arg(owner)
            .arg(LOCK_MS)
            .invoke_async(&mut conn)
            .await?;
            Ok(held == 1)
        })
        .await
}

/// Turns on the notifications this needs, keeping any others already on.
async fn enable_notifications(store: &RedisStore) -> Result<(), cache_shared::Error> {
    store
        .timed(async {
            let mut conn = store.conn().await?;
            let (_, flags): (String, String) = redis::cmd("CONFIG")
                .arg("GET")
                .arg("notify-keyspace-events")
                .query_async(&mut conn)
                .await?;
            let mut wanted = flags.clone();
            for flag in NEEDED_FLAGS.chars() {
                // `A` stands for every class, `x` and `e` included.
                let covered = flag != 'E' && wanted.contains('A');
                if !wanted.contains(flag) && !covered {
                    wanted.push(flag);
                }
            }
            if wanted != flags {
                let () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("notify-keyspace-events")
                    .arg(&wanted)
                    .query_async(&mut conn)
                    .await?;
            }
            Ok(())
        })
        .await
}

async fn hold_and_forward(
    settings: &RedisSettings,
    store: &RedisStore,
    owner: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), cache_shared::Error> {
    if !lock(store, owner).await? {
        return Ok(());
    }
    enable_notifications(store).await?;
    // Each server announces its own keys only: on a cluster, every primary.
    let shards = store.timed(store.shards()).await?;
    let mut streams = Vec::with_capacity(shards.len());
    for shard in &shards {
        let client = cache_shared::redis::client_of(settings, shard)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe("__keyevent@*__:expired").await?;
        pubsub.psubscribe("__keyevent@*__:evicted").await?;
        streams.push(pubsub.into_on_message());
    }
    let mut messages = futures::stream::select_all(streams);
    let mut renew = tokio::time::interval(RENEW_EVERY);
    renew.tick().await;
    tracing::info!("forwarding expirations and evictions as key events");
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return Ok(()) };
                let op = if message.get_channel_name().ends_with(":evicted") {
                    "evicted"
                } else {
                    "expired"
                };
                let Ok(key) = message.get_payload::<String>() else { continue };
                if let Err(err) = forward(store, &key, op).await {
                    tracing::debug!(%err, "a key event was not forwarded");
                }
            }
            _ = renew.tick() => {
                if !lock(store, owner).await? {
                    return Ok(());
                }
                // A failover or a new primary: subscribe to the primaries there are now.
                if store.timed(store.shards()).await? != shards {
                    return Ok(());
                }
            }
            () = stopped(stop) => {
                let mut conn = store.conn().await?;
                let holder: Option<String> = conn.get(FORWARDER_LOCK).await?;
                if holder.as_deref() == Some(owner) {
                    let () = conn.del(FORWARDER_LOCK).await?;
                }
                return Ok(());
            }
        }
    }
}

/// Appends the event of one cache key `c:{tenant}:key` (others are not a
/// tenant's values).
async fn forward(store: &RedisStore, redis_key: &str, op: &str) -> Result<(), cache_shared::Error> {
    let Some(rest) = redis_key.strip_prefix("c:{") else {
        return Ok(());
    };
    let Some((tenant, key)) = rest.split_once("}:") else {
        return Ok(());
    };
    store
        .timed(async {
            let mut conn = store.conn().await?;
            events::emit_on(&mut conn, tenant, key, op).await
        })
        .await
}

/// Resolves once `stop` says so (the guard `wait_for` returns is not held
/// across the caller's awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
