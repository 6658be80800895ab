//! Cron schedules of jobs: parsing (5-field or seconds-first 6-field cron, an
//! IANA timezone) and firing due ticks. A tick is claimed in PostgreSQL with a
//! compare-and-set before its job is submitted, so with any number of workers
//! each tick fires exactly once.

use std::str::FromStr;

use cache_shared::Error;
use cache_shared::db::schedules;
use cache_shared::keys::TenantId;
use chrono::{DateTime, Utc};

use crate::queue::{JobQueue, JobSpec, Submission};

/// A parsed cron expression in its timezone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    schedule: cron::Schedule,
    timezone: chrono_tz::Tz,
}

impl CronSpec {
    /// Parses `expression` (`min hour dom mon dow`, or with seconds first) in
    /// the IANA `timezone`.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming `cron` or `timezone`.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, Error> {
        let fields = expression.split_whitespace().count();
        let expression = match fields {
            5 => format!("0 {expression}"),
            6 | 7 => expression.to_owned(),
            _ => {
                return Err(Error::validation(
                    "cron",
                    "cron must have 5 fields (min hour day month weekday) or 6 with seconds first",
                ));
            }
        };
        let schedule = cron::Schedule::from_str(&expression)
            .map_err(|e| Error::validation("cron", format!("cron does not parse: {e}")))?;
        let timezone = chrono_tz::Tz::from_str(timezone).map_err(|_| {
            Error::validation(
                "timezone",
                "timezone must be an IANA name such as UTC or Europe/Paris",
            )
        })?;
        Ok(Self { schedule, timezone })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.timezone))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// The job a schedule starts, from its stored type and parameters.
///
/// # Errors
///
/// [`Error::Validation`] when they do not make a job.
pub fn job_spec(job_type: &str, params: &serde_json::Value) -> Result<JobSpec, Error> {
    JobSpec::from_parts(job_type, &params.to_string())
}

/// Fires every due tick once; returns how many jobs were started.
///
/// # Errors
///
/// [`Error::StoreUnavailable`] when PostgreSQL is down.
pub async fn fire_due(queue: &JobQueue) -> Result<usize, Error> {
    let mut fired = 0;
    for schedule in schedules::due(queue.db(), 100).await? {
        let Some(due) = schedule.next_run_at else {
            continue;
        };
        let parsed = CronSpec::parse(&schedule.cron, &schedule.timezone)
            .and_then(|cron| Ok((cron, job_spec(&schedule.job_type, &schedule.params)?)))
            .and_then(|(cron, spec)| Ok((cron, spec, TenantId::from_record(&schedule.tenant_id)?)));
        let (cron, spec, tenant) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => {
                // Validated on the way in; a schedule broken since is parked.
                tracing::error!(schedule = %schedule.id, %err, "schedule no longer valid; disabling it");
                schedules::claim(queue.db(), &schedule.id, due, None).await?;
                continue;
            }
        };
        // Missed ticks (no worker ran) fire once, then the schedule moves on from now.
        let next = cron.next_after(due.max(Utc::now()));
        if !schedules::claim(queue.db(), &schedule.id, due, next).await? {
            continue; // another worker took this tick
        }
        match queue
            .submit(Submission {
                tenant,
                spec,
                // The tick in the record: a tick fired twice would show twice.
                created_by: Some(format!("schedule:{}@{}", schedule.id, due.to_rfc3339())),
                idempotency_key: None,
            })
            .await
        {
            Ok(job) => {
                schedules::record_job(queue.db(), &schedule.id, &job.id).await?;
                fired += 1;
            }
            Err(err) => {
                tracing::warn!(schedule = %schedule.id, %err, "scheduled job could not be started");
            }
        }
    }
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions_and_timezones() {
        let every_minute = CronSpec::parse("* * * * *", "UTC").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-26T10:00:30Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            every_minute.next_after(t).unwrap().to_rfc3339(),
            "2026-11-26T10:01:00+00:00"
        );
        let paris_nine = CronSpec::parse("0 0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            paris_nine.next_after(t).unwrap().to_rfc3339(),
            "2026-11-27T08:00:00+00:00"
        );
        assert!(CronSpec::parse("* * *", "UTC").is_err());
        assert!(CronSpec::parse("61 * * * *", "UTC").is_err());
        assert!(CronSpec::parse("* * * * *", "Mars/Olympus").is_err());
    }

    #[test]
    fn a_schedule_names_a_real_job() {
        assert!(job_spec("preload", &serde_json::json!({"items": []})).is_ok());
        assert!(job_spec("stats_rollup", &serde_json::json!({})).is_err());
    }
}
