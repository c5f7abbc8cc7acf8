-- 0004_logs: logs/pipeline.log in the store is rendered from a job's
-- job_events once the job has settled (docs/store.md). logs_seq is the
-- event_seq it was rendered at: a job whose events moved on (a retry, a
-- stage that ended after a cancel) is rendered again. logs_claimed_until
-- keeps two instances from rendering the same job at once; a claim that
-- lapses (its instance died) is taken again.
ALTER TABLE jobs ADD COLUMN logs_seq bigint;
ALTER TABLE jobs ADD COLUMN logs_claimed_until timestamptz;
CREATE INDEX jobs_logs_due ON jobs (id)
    WHERE status IN ('completed', 'failed', 'cancelled') AND logs_seq IS DISTINCT FROM event_seq;
