//! A paced walk over keys, one `SCAN` page at a time: the loop the batch
//! jobs (backup, compress, memory analysis) share. Each page is read on one
//! connection under the batch deadline, and the walk pauses between pages,
//! leaving Redis to requests.

use cache_shared::Error;
use cache_shared::redis::Conn;

use crate::context::JobContext;

/// Where a walk is.
#[derive(Debug)]
pub struct KeyPages<'a> {
    ctx: &'a JobContext,
    pattern: &'a str,
    cursor: u64,
    started: bool,
    done: bool,
}

impl<'a> KeyPages<'a> {
    /// A walk over the keys matching `pattern` (never `KEYS`).
    pub fn new(ctx: &'a JobContext, pattern: &'a str) -> Self {
        Self {
            ctx,
            pattern,
            cursor: 0,
            started: false,
            done: false,
        }
    }

    /// Whether the last page was read: every key was seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next page, its keys read by `read` (not called for a page with
    /// no keys: the page comes back empty, so the caller still gets to
    /// check for cancellation on a sparse walk); `None` once the walk is done.
    ///
    /// # Errors
    ///
    /// [`Error::CacheUnavailable`] when Redis does not answer within the
    /// batch deadline, and `read`'s errors.
    pub async fn next<T>(
        &mut self,
        read: impl AsyncFnOnce(&mut Conn, Vec<String>) -> Result<Vec<T>, Error>,
    ) -> Result<Option<Vec<T>>, Error> {
        if self.done {
            return Ok(None);
        }
        if self.started {
            tokio::time::sleep(self.ctx.pacing.pause).await;
        }
        self.started = true;
        let redis = self.ctx.cache.redis();
        let (cursor, pattern, pacing) = (self.cursor, self.pattern, &self.ctx.pacing);
        let (next, page) = redis
            .timed_for(pacing.batch_timeout, async {
                let mut conn = redis.conn().await?;
                let (next, keys): (u64, Vec<String>) =
                    pacing.scan(cursor, pattern).query_async(&mut conn).await?;
                let page = if keys.is_empty() {
                    Vec::new()
                } else {
                    read(&mut conn, keys).await?
                };
                Ok((next, page))
            })
            .await?;
        self.cursor = next;
        self.done = next == 0;
        Ok(Some(page))
    }
}
