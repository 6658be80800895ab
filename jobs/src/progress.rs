//! Progress reporting and cancellation checks between a job's batches.

use cache_shared::db::jobs;
use sqlx::PgPool;

use crate::error::JobError;

/// Reports a running job's progress to its record, batch by batch.
#[derive(Debug)]
pub struct Progress<'a> {
    db: &'a PgPool,
    job_id: &'a str,
    done: i64,
    total: Option<i64>,
}

/// What a job should do after reporting a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Cancellation was requested: stop before the next batch.
    Stop,
}

impl<'a> Progress<'a> {
    pub fn new(db: &'a PgPool, job_id: &'a str) -> Self {
        Self {
            db,
            job_id,
            done: 0,
            total: None,
        }
    }

    pub fn set_total(&mut self, total: i64) {
        self.total = Some(total);
    }

    pub fn done(&self) -> i64 {
        self.done
    }

    /// Adds `n` finished units and says whether to go on.
    ///
    /// # Errors
    ///
    /// [`JobError::Retryable`] when PostgreSQL does not answer.
    pub async fn advance(&mut self, n: i64) -> Result<Next, JobError> {
        self.done += n;
        let cancel = jobs::progress(self.db, self.job_id, self.done, self.total).await?;
        Ok(if cancel { Next::Stop } else { Next::Continue })
    }
}
