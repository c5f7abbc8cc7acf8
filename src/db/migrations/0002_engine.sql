-- 0002_engine: what the job engine needs beyond 0001.
-- The files a completed task declared as `output` artifacts (and retained
-- intermediates), each {name, type, format, role, key, size_bytes}: its
-- dependents fetch them by key, and a job resumed from this one reuses them.
ALTER TABLE tasks ADD COLUMN artifacts jsonb;
-- The heartbeat renews an instance's own leases.
CREATE INDEX tasks_lease_owner ON tasks (lease_owner) WHERE status = 'running';
