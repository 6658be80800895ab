-- A schedule fires as the key that last defined it (API.md §6); when that key
-- is revoked or expired, or the job it would fire is no longer allowed, the
-- schedule is disabled and says why.

alter table schedules add column disabled_reason text;
