//! Cron schedules of jobs: parsing (5-field or seconds-first 6-field cron, an
//! IANA timezone), the rate rule, and a schedule's job. The worker fires
//! them (as the API key that last defined each, through the job policy
//! again at every tick).

use std::str::FromStr;

use cache_shared::Error;
use cache_shared::api_keys::Role;
use chrono::{DateTime, Utc};

use crate::queue::JobSpec;

/// Longest cron expression or timezone name accepted.
const MAX_FIELD_BYTES: usize = 255;

/// A parsed cron expression in its timezone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    schedule: cron::Schedule,
    timezone: chrono_tz::Tz,
    /// Whether the seconds field names more than one second, so ticks can
    /// come more often than once a minute.
    sub_minute: bool,
}

impl CronSpec {
    /// Parses `expression` (`min hour dom mon dow`, or with seconds first) in
    /// the IANA `timezone`.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming `cron` or `timezone`.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, Error> {
        printable(expression, "cron")?;
        printable(timezone, "timezone")?;
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let one_second = fields
            .first()
            .and_then(|s| s.parse::<u8>().ok())
            .is_some_and(|s| s < 60);
        let sub_minute = fields.len() > 5 && !one_second;
        let expression = match fields.len() {
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
        Ok(Self {
            schedule,
            timezone,
            sub_minute,
        })
    }

    /// Schedules defined by a non-operator fire at most once a minute.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] naming `cron` when this one would fire more often.
    pub fn check_rate(&self, role: Role) -> Result<(), Error> {
        if self.sub_minute && role != Role::Operator {
            return Err(Error::validation(
                "cron",
                "a schedule fires at most once a minute: its seconds field must be one second (0-59)",
            ));
        }
        Ok(())
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.timezone))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// A text field of a schedule: at most 255 bytes, no control characters
/// (PostgreSQL text cannot hold NUL).
fn printable(text: &str, field: &'static str) -> Result<(), Error> {
    if text.len() > MAX_FIELD_BYTES {
        return Err(Error::validation(
            field,
            format!("{field} must be at most {MAX_FIELD_BYTES} bytes"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::validation(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

/// A schedule's name: optional, printable, at most 255 bytes.
///
/// # Errors
///
/// [`Error::Validation`] naming `name`.
pub fn check_name(name: Option<&str>) -> Result<(), Error> {
    name.map_or(Ok(()), |n| printable(n, "name"))
}

/// The job a schedule starts, from its stored type and parameters.
///
/// # Errors
///
/// [`Error::Validation`] when they do not make a job.
pub fn job_spec(job_type: &str, params: &serde_json::Value) -> Result<JobSpec, Error> {
    JobSpec::from_parts(job_type, &params.to_string())
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
        assert!(CronSpec::parse("* * * * *\u{0}", "UTC").is_err());
        assert!(CronSpec::parse(&"1,".repeat(200), "UTC").is_err());
        assert!(CronSpec::parse("* * * * *", "UTC\u{0}").is_err());
    }

    #[test]
    fn only_operators_schedule_more_than_once_a_minute() {
        for every_minute in ["* * * * *", "30 * * * * *", "0 */5 * * * *"] {
            let cron = CronSpec::parse(every_minute, "UTC").unwrap();
            assert!(cron.check_rate(Role::Admin).is_ok(), "{every_minute}");
        }
        for faster in [
            "* * * * * *",
            "*/10 * * * * *",
            "0,30 * * * * *",
            "0-1 * * * * *",
        ] {
            let cron = CronSpec::parse(faster, "UTC").unwrap();
            assert!(cron.check_rate(Role::Admin).is_err(), "{faster}");
            assert!(cron.check_rate(Role::Operator).is_ok(), "{faster}");
        }
    }

    #[test]
    fn a_schedule_names_a_real_job() {
        assert!(job_spec("preload", &serde_json::json!({"items": []})).is_ok());
        assert!(job_spec("stats_rollup", &serde_json::json!({})).is_err());
    }
}
