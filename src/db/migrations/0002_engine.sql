-- 0002_engine: what the job engine needs beyond 0001.
-- The files a completed task declared as `output` artifacts (and retained
-- intermediates), each {name, type, format, role, key, size_bytes}: its
-- dependents fetch them by key, and a job resumed from this one reuses them.
ALTER TABLE tasks ADD COLUMN artifacts jsonb;
-- The heartbeat renews an instance's own leases.
CREATE INDEX tasks_lease_owner ON tasks (lease_owner) WHERE status = 'running';
-- The job's task counts, kept on its row under the row lock by every status
-- change: the counts each event carries are exact even when two
-- transactions change the same job one after the other.
ALTER TABLE jobs ADD COLUMN tasks_total integer NOT NULL DEFAULT 0,
                 ADD COLUMN tasks_completed integer NOT NULL DEFAULT 0,
                 ADD COLUMN tasks_failed integer NOT NULL DEFAULT 0,
                 ADD COLUMN tasks_running integer NOT NULL DEFAULT 0;
UPDATE jobs j SET tasks_total = c.total, tasks_completed = c.completed,
                  tasks_failed = c.failed, tasks_running = c.running
  FROM (SELECT job_id, count(*) AS total,
               count(*) FILTER (WHERE status = 'completed') AS completed,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'running') AS running
          FROM tasks GROUP BY job_id) c
 WHERE c.job_id = j.id;
