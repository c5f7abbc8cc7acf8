-- 0001_init: the data model of ARCHITECTURE §3.
-- Every hot query is keyed by project_id + job_id so the schema can later be
-- distributed by project without rewriting the engine.

CREATE TABLE projects (
    id                  text PRIMARY KEY CHECK (id ~ '^[a-z0-9-]{1,63}$'),
    name                text NOT NULL,
    max_concurrent_jobs integer CHECK (max_concurrent_jobs >= 0),
    max_queued_jobs     integer CHECK (max_queued_jobs >= 0),
    max_input_bytes     bigint  CHECK (max_input_bytes >= 0),
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    project_id   text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    prefix       text NOT NULL UNIQUE CHECK (prefix ~ '^[0-9A-Za-z]{8}$'),
    hash         bytea NOT NULL CHECK (octet_length(hash) = 32),
    scopes       text[] NOT NULL CHECK (scopes <@ ARRAY['jobs:read', 'jobs:write', 'admin']::text[]),
    name         text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_project ON api_keys (project_id, created_at DESC);

CREATE TABLE instances (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    project_id       text NOT NULL REFERENCES projects (id),
    pipeline         text NOT NULL,
    status           text NOT NULL CHECK (status IN
                         ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    params           jsonb NOT NULL DEFAULT '{}',
    input            jsonb,
    idempotency_key  text,
    request_hash     bytea,
    request_id       text,
    attempt          integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    progress         double precision NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    current_stage    text,
    error            jsonb,
    resume_from      jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    queued_at        timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    logs_key         text,
    cancel_requested boolean NOT NULL DEFAULT false,
    event_seq        bigint NOT NULL DEFAULT 0,
    -- Bumped by every change to the job or its tasks (progress included):
    -- the ETag of GET /v1/jobs/{id}.
    rev              bigint NOT NULL DEFAULT 1,
    UNIQUE (project_id, idempotency_key)
);
-- Keyset pagination, newest first (ids are UUIDv7: time-ordered).
CREATE INDEX jobs_project_id ON jobs (project_id, id DESC);
CREATE INDEX jobs_project_status_id ON jobs (project_id, status, id DESC);
CREATE INDEX jobs_project_pipeline_id ON jobs (project_id, pipeline, id DESC);
CREATE INDEX jobs_active ON jobs (status) WHERE status IN ('pending', 'queued', 'running');

CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    job_id           uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    project_id       text NOT NULL,
    stage            text NOT NULL,
    stage_number     integer NOT NULL CHECK (stage_number >= 1),
    module           text NOT NULL,
    engine_id        text,
    depends_on       text[] NOT NULL DEFAULT '{}',
    required         boolean NOT NULL DEFAULT true,
    status           text NOT NULL CHECK (status IN
                         ('pending', 'ready', 'running', 'completed', 'failed', 'skipped', 'cancelled')),
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    retries          integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    max_retries      integer NOT NULL DEFAULT 0 CHECK (max_retries >= 0),
    backoff_ms       bigint NOT NULL DEFAULT 1000,
    timeout_ms       bigint,
    params           jsonb NOT NULL DEFAULT '{}',
    not_before       timestamptz,
    skip_reason      text,
    lease_owner      text,
    lease_token      uuid,
    lease_expires_at timestamptz,
    ready_at         timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    duration_ms      bigint,
    progress         double precision NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    error            jsonb,
    output           jsonb,
    UNIQUE (job_id, stage)
);
CREATE INDEX tasks_job ON tasks (job_id, stage_number);
-- The claim scans only ready tasks (TOOLCHAIN §10: a plain partial index on
-- id is the one the planner keeps using).
CREATE INDEX tasks_ready ON tasks (id) WHERE status = 'ready';
CREATE INDEX tasks_running_lease ON tasks (lease_expires_at) WHERE status = 'running';

CREATE TABLE task_attempts (
    task_id     uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     integer NOT NULL CHECK (attempt >= 1),
    job_id      uuid NOT NULL,
    instance_id text,
    pid         integer,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    outcome     text CHECK (outcome IN
                    ('completed', 'error', 'panic', 'timeout', 'cancelled', 'lost')),
    exit_code   integer,
    signal      integer,
    error       jsonb,
    wait_ms     bigint,
    fetch_ms    bigint,
    run_ms      bigint,
    upload_ms   bigint,
    cpu_seconds double precision,
    max_rss_bytes bigint,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE job_events (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq         bigint NOT NULL CHECK (seq >= 1),
    id          bigserial NOT NULL UNIQUE,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    project_id  text NOT NULL,
    ts          timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind        text NOT NULL,
    task_id     uuid,
    stage       text,
    status_from text,
    status_to   text,
    reason      text,
    request_id  text,
    data        jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX job_events_project_id ON job_events (project_id, id);
