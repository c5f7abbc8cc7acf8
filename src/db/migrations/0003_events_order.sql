-- 0003_events_order: the project event stream (GET /v1/events) reads a
-- project's events in transaction order (txid, id): every event of a
-- transaction older than the current snapshot's xmin is final, so a resume
-- point (txid, id) never skips an event that commits late.
CREATE INDEX job_events_project_txid ON job_events (project_id, txid, id);
