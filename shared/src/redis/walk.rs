//! The walk over the keys matching a pattern that every job and upkeep
//! pass shares, never `KEYS`: `SCAN` pages on a standalone Redis and on
//! each primary of a cluster in turn, or, on a cluster, when the pattern
//! pins one slot (a tenant's keys: `c:{acme}:*`), that slot's key index
//! (`CLUSTER GETKEYSINSLOT`), so a tenant's walk costs that tenant's keys
//! rather than the whole keyspace.

use std::time::Duration;

use deadpool_redis::redis;

use super::cluster::{glob_matches, pinned_slot};
use super::{Conn, RedisStore, Shard};
use crate::error::Error;

/// A walk over the keys matching a pattern, one page at a time, each page
/// read on one connection under a deadline.
#[derive(Debug)]
pub struct ScanPages<'a> {
    redis: &'a RedisStore,
    pattern: &'a str,
    count: usize,
    deadline: Duration,
    state: State,
}

#[derive(Debug)]
enum State {
    Start,
    /// `SCAN` with `cursor` on `shards[shard]`, then on the next shard.
    Scanning {
        shards: Vec<Shard>,
        shard: usize,
        cursor: u64,
    },
    /// The keys of the pattern's slot, read from its index when the walk
    /// began, handed out a page at a time.
    Slot {
        keys: std::vec::IntoIter<String>,
    },
    Done,
}

impl<'a> ScanPages<'a> {
    /// A walk over the keys matching `pattern`, about `count` keys a page,
    /// each page's Redis work bounded by `deadline`.
    pub fn new(redis: &'a RedisStore, pattern: &'a str, count: usize, deadline: Duration) -> Self {
        Self {
            redis,
            pattern,
            count: count.max(1),
            deadline,
            state: State::Start,
        }
    }

    /// Whether the last page was read: every key was seen.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next page, its keys read by `read` on a connection to where they
    /// live (not called for a page with no keys: the page comes back
    /// empty, so a caller still gets its turn on a sparse walk); `None`
    /// once the walk is done.
    ///
    /// A page's keys share a server but not a slot: `read` pipelines
    /// single-key commands (a multi-key command such as `MGET` would be
    /// refused across slots on a cluster).
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when Redis does not answer within the
    /// deadline, and `read`'s errors.
    pub async fn next<T>(
        &mut self,
        read: impl AsyncFnOnce(&mut Conn, Vec<String>) -> Result<Vec<T>, Error>,
    ) -> Result<Option<Vec<T>>, Error> {
        if matches!(self.state, State::Start) {
            self.state = self.begin().await?;
        }
        match &mut self.state {
            State::Start | State::Done => Ok(None),
            State::Slot { keys } => {
                let page: Vec<String> = keys.by_ref().take(self.count).collect();
                if keys.len() == 0 {
                    self.state = State::Done;
                }
                if page.is_empty() {
                    return Ok(Some(Vec::new()));
                }
                let redis = self.redis;
                let read = redis
                    .timed_for(self.deadline, async {
                        let mut conn = redis.conn().await?;
                        read(&mut conn, page).await
                    })
                    .await?;
                Ok(Some(read))
            }
            State::Scanning {
                shards,
                shard,
                cursor,
            } => {
                let (redis, pattern, count) = (self.redis, self.pattern, self.count);
                let on = &shards[*shard];
                let (next, page) = redis
                    .timed_for(self.deadline, async {
                        let mut conn = redis.conn_on(on).await?;
                        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(*cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(count)
                            .query_async(&mut conn)
                            .await?;
                        let page = if keys.is_empty() {
                            Vec::new()
                        } else {
                            read(&mut conn, keys).await?
                        };
                        Ok((next, page))
                    })
                    .await?;
                *cursor = next;
                if next == 0 {
                    *shard += 1;
                    if *shard == shards.len() {
                        self.state = State::Done;
                    }
                }
                Ok(Some(page))
            }
        }
    }

    /// Chooses how to walk: the slot's index when the pattern pins a slot
    /// of a cluster, else `SCAN` on every shard.
    async fn begin(&self) -> Result<State, Error> {
        let redis = self.redis;
        if redis.is_cluster()
            && let Some(slot) = pinned_slot(self.pattern)
        {
            let keys = redis
                .timed_for(self.deadline, slot_keys(redis, slot))
                .await?;
            let matching: Vec<String> = keys
                .into_iter()
                .filter(|key| glob_matches(self.pattern.as_bytes(), key.as_bytes()))
                .collect();
            return Ok(State::Slot {
                keys: matching.into_iter(),
            });
        }
        let shards = redis
            .timed_for(self.deadline, async { redis.shards().await })
            .await?;
        if shards.is_empty() {
            return Err(Error::CacheUnavailable(
                "no primary of the Redis Cluster serves slots".into(),
            ));
        }
        Ok(State::Scanning {
            shards,
            shard: 0,
            cursor: 0,
        })
    }
}

/// Every key of `slot`, from the primary that owns it. Keys of other
/// tenants whose ids hash to the same slot come too: callers filter by
/// their pattern.
async fn slot_keys(redis: &RedisStore, slot: u16) -> Result<Vec<String>, Error> {
    let mut conn = redis.conn_on_slot(slot).await?;
    let count: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut conn)
        .await?;
    if count == 0 {
        return Ok(Vec::new());
    }
    // Asked for a few more than counted: keys written in between still come.
    let keys: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(count + count / 8 + 16)
        .query_async(&mut conn)
        .await?;
    Ok(keys)
}
