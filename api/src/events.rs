//! Serving invalidation events (API.md §10) from the tenants' streams
//! ([`cache_shared::events`]): one reader per listened-to tenant on this
//! instance, on a Redis connection of its own (its reads block), fanning
//! out to every open event stream of that tenant. A stream resumes from
//! `Last-Event-ID` through the tenant's buffer, or says `reset` when the
//! buffer no longer reaches back that far.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use cache_shared::Error;
use cache_shared::config::RedisSettings;
use cache_shared::events::{self, Event, StreamId};
use cache_shared::keys::TenantId;
use cache_shared::redis::RedisStore;
use futures::Stream;
use tokio::sync::{broadcast, watch};

/// How long one blocking read waits before the reader looks around.
const BLOCK_MS: u64 = 1000;

/// How often a reader renews its tenant's listening mark.
const RENEW_EVERY: Duration = Duration::from_secs(20);

/// Events held for a slow stream before it falls behind (it then catches
/// up from the tenant's buffer in Redis).
const FAN_OUT_CAPACITY: usize = 1024;

/// The tenants listened to on this instance.
#[derive(Debug)]
pub struct EventHub {
    redis: RedisSettings,
    feeds: Mutex<HashMap<String, broadcast::Sender<Arc<Event>>>>,
    closing: watch::Sender<bool>,
}

impl EventHub {
    pub fn new(redis: RedisSettings) -> Self {
        Self {
            redis,
            feeds: Mutex::new(HashMap::new()),
            closing: watch::channel(false).0,
        }
    }

    /// Ends every open stream (at shutdown: they would hold it up).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// A receiver of `tenant`'s live events, starting a reader if this
    /// instance had none for it.
    async fn subscribe(
        self: &Arc<Self>,
        store: &RedisStore,
        tenant: &TenantId,
    ) -> Result<broadcast::Receiver<Arc<Event>>, Error> {
        events::listen(store, tenant).await?;
        let start = events::last_id(store, tenant).await?;
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feeds.get(tenant.as_str()) {
            return Ok(feed.subscribe());
        }
        let (tx, rx) = broadcast::channel(FAN_OUT_CAPACITY);
        feeds.insert(tenant.to_string(), tx.clone());
        drop(feeds);
        let hub = Arc::clone(self);
        let (store, tenant) = (store.clone(), tenant.clone());
        tokio::spawn(async move { hub.read(store, tenant, start, tx).await });
        Ok(rx)
    }

    /// Reads `tenant`'s stream after `after` and hands each event out,
    /// until nobody listens here any more.
    async fn read(
        &self,
        store: RedisStore,
        tenant: TenantId,
        mut after: String,
        tx: broadcast::Sender<Arc<Event>>,
    ) {
        let timeout = Duration::from_millis(BLOCK_MS) + self.redis.command_timeout();
        let mut conn = match cache_shared::redis::dedicated_data_connection(&self.redis, timeout) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(%err, "no event reader connection");
                self.forget(tenant.as_str());
                return;
            }
        };
        let mut renewed = tokio::time::Instant::now();
        let mut closing = self.closing.subscribe();
        loop {
            let read = tokio::select! {
                read = events::read_after(&mut conn, tenant.as_str(), &after, BLOCK_MS) => read,
                _ = closing.wait_for(|c| *c) => break,
            };
            match read {
                Ok(batch) => {
                    for event in batch {
                        after.clone_from(&event.id);
                        // No receiver right now is fine: the check below ends the reader.
                        let _ = tx.send(Arc::new(event));
                    }
                }
                Err(err) => {
                    tracing::debug!(%err, %tenant, "event read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if renewed.elapsed() >= RENEW_EVERY {
                renewed = tokio::time::Instant::now();
                if let Err(err) = events::listen(&store, &tenant).await {
                    tracing::debug!(%err, %tenant, "listening mark not renewed");
                }
            }
            // Checked and forgotten under one lock: a subscriber arriving
            // now either is counted here or starts a reader of its own.
            let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
            if tx.receiver_count() == 0 {
                feeds.remove(tenant.as_str());
                return;
            }
        }
        self.forget(tenant.as_str());
    }

    fn forget(&self, tenant: &str) {
        self.feeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }

    /// The event stream of one client: `Last-Event-ID` replayed (or a
    /// `reset`), then live events, keys under `prefix` only.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when Redis does not answer.
    pub async fn stream(
        self: &Arc<Self>,
        store: &RedisStore,
        tenant: &TenantId,
        prefix: Option<String>,
        last_event_id: Option<String>,
    ) -> Result<EventStream, Error> {
        let live = self.subscribe(store, tenant).await?;
        let mut first = Vec::new();
        let mut last_sent = StreamId::ZERO;
        if let Some(id) = last_event_id {
            let replay = events::replay(store, tenant, &id).await?;
            if replay.gap {
                first.push(Out::Reset);
            }
            last_sent = StreamId::parse(&id).unwrap_or(StreamId::ZERO);
            first.extend(replay.events.into_iter().map(|e| Out::Event(Arc::new(e))));
        }
        let client = Client {
            store: store.clone(),
            tenant: tenant.clone(),
            prefix,
            live,
            pending: first.into(),
            last_sent,
            closing: self.closing.subscribe(),
        };
        let stream = futures::stream::unfold(client, |mut client| async move {
            let event = client.next().await?;
            Some((Ok(event), client))
        });
        let stream: std::pin::Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(stream);
        Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
    }
}

/// An open event stream, as a response.
pub type EventStream = Sse<
    axum::response::sse::KeepAliveStream<
        std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>>,
    >,
>;

/// What a stream sends next.
enum Out {
    Event(Arc<Event>),
    Reset,
}

/// One open event stream.
struct Client {
    store: RedisStore,
    tenant: TenantId,
    prefix: Option<String>,
    live: broadcast::Receiver<Arc<Event>>,
    pending: std::collections::VecDeque<Out>,
    last_sent: StreamId,
    closing: watch::Receiver<bool>,
}

impl Client {
    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            let out = match self.pending.pop_front() {
                Some(out) => out,
                None => match self.receive().await? {
                    Some(out) => out,
                    None => continue,
                },
            };
            match out {
                Out::Reset => {
                    return Some(
                        SseEvent::default()
                            .event("reset")
                            .data(r#"{"reason":"events were missed; reload what you cached"}"#),
                    );
                }
                Out::Event(event) => {
                    let Some(id) = StreamId::parse(&event.id) else {
                        continue;
                    };
                    // Replayed and live events overlap: each goes out once.
                    if id <= self.last_sent {
                        continue;
                    }
                    self.last_sent = id;
                    if self
                        .prefix
                        .as_deref()
                        .is_some_and(|p| !event.key.starts_with(p))
                    {
                        continue;
                    }
                    return Some(render(&event));
                }
            }
        }
    }

    /// Waits for a live event (`None` inside: the stream fell behind and
    /// caught up from the tenant's buffer into `pending`); `None` ends it.
    async fn receive(&mut self) -> Option<Option<Out>> {
        let received = tokio::select! {
            received = self.live.recv() => received,
            _ = self.closing.wait_for(|c| *c) => return None,
        };
        match received {
            Ok(event) => Some(Some(Out::Event(event))),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let after = self.last_sent.to_string();
                match events::replay(&self.store, &self.tenant, &after).await {
                    Ok(replay) => {
                        if replay.gap {
                            self.pending.push_back(Out::Reset);
                        }
                        self.pending
                            .extend(replay.events.into_iter().map(|e| Out::Event(Arc::new(e))));
                        Some(None)
                    }
                    Err(_) => Some(Some(Out::Reset)),
                }
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

fn render(event: &Event) -> SseEvent {
    let at = i64::try_from(event.at_ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(crate::views::timestamp)
        .unwrap_or_default();
    let data = serde_json::json!({ "key": event.key, "op": event.op, "at": at });
    SseEvent::default()
        .id(&event.id)
        .event(&event.op)
        .data(data.to_string())
}
