-- The queue prefix a job was pushed under: recovery of jobs lost from their
-- queue (Redis restarted without its data) rebuilds only its own prefix's
-- jobs, so deployments or tests that share a database but not a queue
-- never take each other's jobs. Older rows have none and are left alone.

alter table jobs add column queue_prefix varchar(255);
