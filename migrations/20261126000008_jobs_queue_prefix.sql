-- The queue prefix a job was pushed under, written once the push succeeded:
-- recovery of jobs lost from their queue (Redis restarted without its data)
-- rebuilds only jobs known to be on its own prefix's queues, so a job whose
-- push failed is never started behind its caller's back, and deployments or
-- tests that share a database but not a queue never take each other's jobs.
-- Older rows have none and are left alone.

alter table jobs add column queue_prefix varchar(255);
