//! Progress reporting and cancellation checks between a job's batches.

use std::time::{Duration, Instant};

use cache_shared::db::jobs;
use sqlx::PgPool;

use crate::error::JobError;

/// Longest a job goes without writing its progress (and reading whether it
/// was cancelled). Batches are often much shorter: writing after each one
/// would cost PostgreSQL a commit per thousand keys for nothing.
pub const REPORT_EVERY: Duration = Duration::from_millis(200);

/// Reports a running job's progress to its record, at most every
/// [`REPORT_EVERY`], and says when it was cancelled.
#[derive(Debug)]
pub struct Progress<'a> {
    db: &'a PgPool,
    job_id: &'a str,
    done: i64,
    total: Option<i64>,
    reported: Option<Instant>,
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
            reported: None,
        }
    }

    /// Sets the total; the next [`Progress::advance`] reports at once.
    pub fn set_total(&mut self, total: i64) {
        self.total = Some(total);
        self.reported = None;
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
        let complete = self.total.is_some_and(|t| self.done >= t);
        if !complete && self.reported.is_some_and(|at| at.elapsed() < REPORT_EVERY) {
            return Ok(Next::Continue);
        }
        self.reported = Some(Instant::now());
        let cancel = jobs::progress(self.db, self.job_id, self.done, self.total).await?;
        Ok(if cancel { Next::Stop } else { Next::Continue })
    }

    /// Writes the final count (the last batches may not have been reported).
    ///
    /// # Errors
    ///
    /// [`JobError::Retryable`] when PostgreSQL does not answer.
    pub async fn report(&mut self) -> Result<(), JobError> {
        self.reported = None;
        self.advance(0).await.map(|_| ())
    }
}
