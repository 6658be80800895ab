//! A paced walk over keys for the batch jobs (backup, compress, memory
//! analysis, session pruning): the shared `SCAN` page walk with the job's
//! batch size and deadline, pausing between pages to leave Redis to
//! requests.

use cache_shared::Error;
use cache_shared::redis::{Conn, ScanPages};

use crate::context::JobContext;

/// Where a walk is.
#[derive(Debug)]
pub struct KeyPages<'a> {
    pages: ScanPages<'a>,
    pause: std::time::Duration,
    started: bool,
}

impl<'a> KeyPages<'a> {
    /// A walk over the keys matching `pattern`, paced as `ctx` says.
    pub fn new(ctx: &'a JobContext, pattern: &'a str) -> Self {
        Self {
            pages: ScanPages::new(
                ctx.cache.redis(),
                pattern,
                ctx.pacing.batch,
                ctx.pacing.batch_timeout,
            ),
            pause: ctx.pacing.pause,
            started: false,
        }
    }

    /// Whether the last page was read: every key was seen.
    pub fn is_done(&self) -> bool {
        self.pages.is_done()
    }

    /// The next page after a pause, as [`ScanPages::next`] reads it.
    ///
    /// # Errors
    ///
    /// As [`ScanPages::next`].
    pub async fn next<T>(
        &mut self,
        read: impl AsyncFnOnce(&mut Conn, Vec<String>) -> Result<Vec<T>, Error>,
    ) -> Result<Option<Vec<T>>, Error> {
        if self.started && !self.pages.is_done() {
            tokio::time::sleep(self.pause).await;
        }
        self.started = true;
        self.pages.next(read).await
    }
}
