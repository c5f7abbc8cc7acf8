"""The schema and its migrations, through the real daemon: `stagelined
--migrate-only` on a fresh database creates every table of 0001_init.sql
with its keys and indexes and records each migration with the file's
SHA-256; a second run is a no-op; two runs at once serialize on the
advisory lock and apply each migration once; a tampered checksum makes it
refuse with a message naming the migration; it waits for a database that is
down. And the claim query's plan uses the tasks_ready partial index
(TOOLCHAIN.md §10), ad hoc and as a generic prepared plan.

Tests that need `--migrate-only` skip (with the reason) until stagelined
--help mentions it; the plan test then applies the SQL files directly."""

import glob
import hashlib
import json
import os
import re
import subprocess
import uuid

import psycopg2
import pytest

from conftest import clean_env
from slhelpers import wait_for

MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src",
                              "db", "migrations")
MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# db/migrate.h PG_MIGRATE_LOCK_KEY: "stagelin" in ASCII.
LOCK_KEY = 0x73746167656C696E


def migration_files():
    """[(version, name, path)] of src/db/migrations, by version."""
    out = []
    for path in glob.glob(os.path.join(MIGRATIONS_DIR, "*.sql")):
        m = MIGRATION_RE.match(os.path.basename(path))
        assert m, f"badly named migration file {path}"
        out.append((int(m.group(1)), m.group(2), path))
    return sorted(out)


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def connect(pg, dbname):
    conn = psycopg2.connect(host=pg.dir, port=pg.port, user="postgres", dbname=dbname)
    conn.autocommit = True
    return conn


def query(pg, dbname, sql, args=None):
    conn = connect(pg, dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def log_lines(text):
    out = []
    for ln in text.splitlines():
        try:
            obj = json.loads(ln)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


@pytest.fixture
def fresh_db(pg):
    """A new, empty database; dropped afterwards."""
    name = "mig_" + uuid.uuid4().hex[:12]
    query(pg, "postgres", f'CREATE DATABASE "{name}"')
    yield name
    # A fresh connection: the test may have restarted the server.
    if pg.running:
        query(pg, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrate(daemon, pg):
    """migrate(dbname) runs `stagelined --migrate-only` to completion and
    returns (returncode, stdout, stderr); skips the test when the binary has
    no --migrate-only yet."""
    r = daemon.run(["--help"])
    if "--migrate-only" not in r.stdout + r.stderr:
        pytest.skip("stagelined --help does not mention --migrate-only: the start-up "
                    "wiring of db/migrate (main.c) is not in this build yet")

    def run(dbname, timeout=30):
        r = daemon.run(["--migrate-only", "--database-url", pg.url(dbname=dbname),
                        "--log-format", "json"], timeout=timeout)
        return r.returncode, r.stdout, r.stderr

    run.argv = lambda dbname: [daemon.binary, "--migrate-only", "--database-url",
                               pg.url(dbname=dbname), "--log-format", "json"]
    return run


def assert_no_sanitizer(text):
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        assert marker not in text, text[-4000:]


# --------------------------------------------------------------------------
# The schema 0001_init.sql must produce.

TABLES = {
    "projects": {"id", "name", "max_concurrent_jobs", "max_queued_jobs", "max_input_bytes"},
    "api_keys": {"id", "project_id", "prefix", "hash", "scopes", "created_at", "expires_at",
                 "last_used_at", "revoked_at"},
    "instances": {"id", "host", "pid", "started_at", "heartbeat_at"},
    "jobs": {"id", "project_id", "pipeline", "status", "params", "idempotency_key", "attempt",
             "progress", "current_stage", "error", "created_at", "queued_at", "started_at",
             "completed_at", "logs_key", "cancel_requested", "event_seq"},
    "tasks": {"id", "job_id", "project_id", "stage", "stage_number", "module", "engine_id",
              "depends_on", "required", "status", "attempt", "retries", "max_retries",
              "not_before", "skip_reason", "lease_owner", "lease_token", "lease_expires_at",
              "started_at", "ready_at", "completed_at", "duration_ms", "progress", "error"},
    "task_attempts": {"task_id", "attempt", "job_id", "instance_id", "pid", "started_at",
                      "ended_at", "outcome", "exit_code", "signal", "error", "wait_ms",
                      "fetch_ms", "run_ms", "upload_ms"},
    "job_events": {"job_id", "seq", "id", "txid", "project_id", "ts", "kind", "task_id",
                   "stage", "status_from", "status_to", "reason", "data"},
    "schema_migrations": {"version", "name", "applied_at", "checksum"},
}

COLUMN_TYPES = {
    ("jobs", "id"): "uuid",
    ("jobs", "params"): "jsonb",
    ("tasks", "id"): "uuid",
    ("tasks", "depends_on"): "ARRAY",
    ("tasks", "lease_token"): "uuid",
    ("job_events", "seq"): "bigint",
    ("job_events", "id"): "bigint",
    ("job_events", "txid"): "xid8",
    ("api_keys", "hash"): "bytea",
    ("schema_migrations", "version"): "integer",
}

# (table, kind, columns, referenced table, on delete): p primary key,
# u unique, f foreign key (on delete c cascade, a no action).
CONSTRAINTS = {
    ("projects", "p", ("id",), None, None),
    ("api_keys", "p", ("id",), None, None),
    ("api_keys", "u", ("prefix",), None, None),
    ("api_keys", "f", ("project_id",), "projects", "c"),
    ("instances", "p", ("id",), None, None),
    ("jobs", "p", ("id",), None, None),
    ("jobs", "u", ("project_id", "idempotency_key"), None, None),
    ("jobs", "f", ("project_id",), "projects", "a"),
    ("tasks", "p", ("id",), None, None),
    ("tasks", "u", ("job_id", "stage"), None, None),
    ("tasks", "f", ("job_id",), "jobs", "c"),
    ("task_attempts", "p", ("task_id", "attempt"), None, None),
    ("task_attempts", "f", ("task_id",), "tasks", "c"),
    ("job_events", "p", ("job_id", "seq"), None, None),
    ("job_events", "u", ("id",), None, None),
    ("job_events", "f", ("job_id",), "jobs", "c"),
    ("schema_migrations", "p", ("version",), None, None),
}

# The named secondary indexes, as pg_indexes.indexdef spells them.
INDEXES = {
    "api_keys_project": "ON public.api_keys USING btree (project_id, created_at DESC)",
    "jobs_project_id": "ON public.jobs USING btree (project_id, id DESC)",
    "jobs_project_status_id": "ON public.jobs USING btree (project_id, status, id DESC)",
    "jobs_project_pipeline_id": "ON public.jobs USING btree (project_id, pipeline, id DESC)",
    "jobs_active": "ON public.jobs USING btree (status) WHERE (status = ANY "
                   "(ARRAY['pending'::text, 'queued'::text, 'running'::text]))",
    "tasks_job": "ON public.tasks USING btree (job_id, stage_number)",
    # A plain partial index on id, no INCLUDE: the one the planner keeps
    # choosing for the claim (TOOLCHAIN.md §10).
    "tasks_ready": "ON public.tasks USING btree (id) WHERE (status = 'ready'::text)",
    "tasks_running_lease": "ON public.tasks USING btree (lease_expires_at) "
                           "WHERE (status = 'running'::text)",
    "job_events_project_id": "ON public.job_events USING btree (project_id, id)",
}


def check_schema(pg, dbname):
    rows = query(pg, dbname, """
        SELECT table_name, column_name, data_type FROM information_schema.columns
        WHERE table_schema = 'public'""")
    cols = {}
    types = {}
    for table, column, dtype in rows:
        cols.setdefault(table, set()).add(column)
        types[(table, column)] = dtype
    assert set(cols) == set(TABLES), f"tables: {sorted(cols)}"
    for table, want in TABLES.items():
        missing = want - cols[table]
        assert not missing, f"{table} lacks {sorted(missing)}"
    for key, dtype in COLUMN_TYPES.items():
        assert types[key] == dtype, f"{key}: {types[key]}, want {dtype}"

    rows = query(pg, dbname, """
        SELECT conrelid::regclass::text, contype::text,
               array(SELECT a.attname::text FROM unnest(conkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.n
                     ORDER BY k.o),
               CASE WHEN contype = 'f' THEN confrelid::regclass::text END,
               CASE WHEN contype = 'f' THEN confdeltype::text END
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace AND contype IN ('p', 'u', 'f')""")
    got = {(t, k, tuple(c), ref, d) for t, k, c, ref, d in rows}
    missing = CONSTRAINTS - got
    assert not missing, f"constraints missing: {sorted(missing)}; have {sorted(got)}"

    idx = dict(query(pg, dbname, "SELECT indexname, indexdef FROM pg_indexes "
                                 "WHERE schemaname = 'public'"))
    for name, tail in INDEXES.items():
        assert name in idx, f"index {name} missing; have {sorted(idx)}"
        unique = "UNIQUE " if "UNIQUE" in idx[name].split(" ON ")[0] else ""
        assert idx[name] == f"CREATE {unique}INDEX {name} {tail}", idx[name]
    # The status columns only take the documented values.
    checks = " ".join(r[0] for r in query(pg, dbname, """
        SELECT pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid IN ('jobs'::regclass, 'tasks'::regclass) AND contype = 'c'"""))
    for status in ("pending", "queued", "running", "completed", "failed", "cancelled", "ready",
                   "skipped"):
        assert f"'{status}'" in checks, status


def applied(pg, dbname):
    return query(pg, dbname, "SELECT version, name, checksum, applied_at "
                             "FROM schema_migrations ORDER BY version")


# --------------------------------------------------------------------------


def test_migrate_only_creates_the_schema(pg, fresh_db, migrate):
    rc, out, err = migrate(fresh_db)
    assert rc == 0, err[-4000:]
    assert_no_sanitizer(err)
    check_schema(pg, fresh_db)

    files = migration_files()
    rows = applied(pg, fresh_db)
    assert [(v, n) for v, n, _, _ in rows] == [(v, n) for v, n, _ in files]
    assert rows[0][0] == 1 and rows[0][1] == "init"
    for (version, _, path), (_, _, checksum, _) in zip(files, rows):
        assert checksum == sha256_file(path), f"checksum of {version}"

    lines = log_lines(err)
    applies = [ln for ln in lines if ln.get("event") == "db.migrate.apply"]
    assert [ln.get("version") for ln in applies] == [v for v, _, _ in files]
    for ln in applies:
        assert isinstance(ln.get("ms"), int) and ln.get("name"), ln
    done = [ln for ln in lines if ln.get("event") == "db.migrate.done"]
    assert len(done) == 1 and done[0].get("applied") == len(files), done
    assert not [ln for ln in lines if ln.get("level") == "error"], err[-4000:]


def test_migrate_only_twice_is_a_no_op(pg, fresh_db, migrate):
    rc, _, err = migrate(fresh_db)
    assert rc == 0, err[-4000:]
    before = applied(pg, fresh_db)
    rc, _, err = migrate(fresh_db)
    assert rc == 0, err[-4000:]
    assert_no_sanitizer(err)
    assert applied(pg, fresh_db) == before
    lines = log_lines(err)
    assert not [ln for ln in lines if ln.get("event") == "db.migrate.apply"]
    done = [ln for ln in lines if ln.get("event") == "db.migrate.done"]
    assert len(done) == 1 and done[0].get("applied") == 0, done


def test_concurrent_migrate_only_serialize_on_the_lock(pg, fresh_db, migrate, tmp_path):
    """Both runs queue behind a lock the test holds, so they really race for
    it when it is released; each migration must be applied exactly once."""
    holder = connect(pg, fresh_db)
    procs = []
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        for i in range(2):
            log = open(tmp_path / f"migrate-{i}.log", "wb")
            procs.append((subprocess.Popen(migrate.argv(fresh_db), stdout=log, stderr=log,
                                           stdin=subprocess.DEVNULL, cwd=str(tmp_path),
                                           env=clean_env()), log))

        def both_waiting():
            for p, _ in procs:
                assert p.poll() is None, "a migrator exited while the lock was held"
            n = query(pg, fresh_db, """
                SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = %s""",
                      (fresh_db,))[0][0]
            return n == 2

        wait_for(both_waiting, 15.0, 0.05, "both migrators waiting on the advisory lock")
        assert applied_or_none(pg, fresh_db) == []
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        rcs = [p.wait(timeout=30) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
        holder.close()
    texts = [(tmp_path / f"migrate-{i}.log").read_text(errors="replace") for i in range(2)]
    assert rcs == [0, 0], texts
    for t in texts:
        assert_no_sanitizer(t)
    files = migration_files()
    assert [r[0] for r in applied(pg, fresh_db)] == [v for v, _, _ in files]
    applies = [ln.get("version") for t in texts for ln in log_lines(t)
               if ln.get("event") == "db.migrate.apply"]
    assert sorted(applies) == [v for v, _, _ in files], applies
    check_schema(pg, fresh_db)


def applied_or_none(pg, dbname):
    rows = query(pg, dbname, "SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    return applied(pg, dbname) if rows[0][0] else []


def test_tampered_checksum_refuses_to_start(pg, fresh_db, migrate):
    rc, _, err = migrate(fresh_db)
    assert rc == 0, err[-4000:]
    query(pg, fresh_db, "UPDATE schema_migrations SET checksum = %s WHERE version = 1",
          ("0" * 64,))
    rc, _, err = migrate(fresh_db)
    assert rc > 0, f"exit {rc}; log:\n{err[-4000:]}"
    assert_no_sanitizer(err)
    # The runner's db.migrate.failed line names the migration and both sums.
    failed = [ln for ln in log_lines(err) if ln.get("event") == "db.migrate.failed"
              and "0001_init" in ln.get("msg", "") + str(ln.get("error", ""))]
    assert failed, err[-4000:]
    msg = failed[0].get("msg", "") + " " + str(failed[0].get("error", ""))
    assert "checksum" in msg, msg
    assert "0" * 64 in msg and sha256_file(migration_files()[0][2]) in msg, msg
    assert failed[0]["level"] == "error"
    # Nothing was changed or applied.
    assert applied(pg, fresh_db)[0][2] == "0" * 64


def test_migrate_only_waits_for_the_database(pg, fresh_db, migrate, tmp_path):
    log_path = tmp_path / "migrate-wait.log"
    pg.stop()
    proc = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(migrate.argv(fresh_db), stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, cwd=str(tmp_path),
                                    env=clean_env())

        def tried_twice():
            assert proc.poll() is None, log_path.read_text(errors="replace")[-4000:]
            text = log_path.read_text(errors="replace")
            return text.count('"db.conn.failed"') >= 2

        wait_for(tried_twice, 15.0, 0.05, "two failed connection attempts")
    finally:
        pg.start()
    try:
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert rc == 0, text[-4000:]
    assert_no_sanitizer(text)
    assert [r[0] for r in applied(pg, fresh_db)] == [v for v, _, _ in migration_files()]


# --------------------------------------------------------------------------
# The claim query's plan.

CLAIM = ("UPDATE tasks SET status = 'running' WHERE id = ANY(ARRAY("
         "SELECT id FROM tasks WHERE status = 'ready' ORDER BY id LIMIT {limit} "
         "FOR UPDATE SKIP LOCKED)) RETURNING id")


def plan_nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def assert_uses_tasks_ready(conn, sql):
    with conn.cursor() as cur:
        cur.execute("EXPLAIN (FORMAT JSON) " + sql)
        plan = cur.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    nodes = list(plan_nodes(plan[0]["Plan"]))
    assert any(n.get("Index Name") == "tasks_ready" for n in nodes), json.dumps(plan, indent=1)
    assert not any(n.get("Node Type") == "Seq Scan" and n.get("Relation Name") == "tasks"
                   for n in nodes), json.dumps(plan, indent=1)


@pytest.fixture
def schema_db(pg, fresh_db, daemon):
    """fresh_db with the schema: through --migrate-only when the binary has
    it, else by running the SQL files (the plan does not depend on how)."""
    r = daemon.run(["--help"])
    if "--migrate-only" in r.stdout + r.stderr:
        r = daemon.run(["--migrate-only", "--database-url", pg.url(dbname=fresh_db)])
        assert r.returncode == 0, r.stderr[-4000:]
    else:
        conn = connect(pg, fresh_db)
        try:
            with conn.cursor() as cur:
                for _, _, path in migration_files():
                    with open(path) as f:
                        cur.execute(f.read())
        finally:
            conn.close()
    return fresh_db


def test_claim_query_uses_the_ready_index(pg, schema_db):
    conn = connect(pg, schema_db)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO projects (id, name) VALUES ('p1', 'P1')")
            cur.execute("""
                INSERT INTO jobs (id, project_id, pipeline, status)
                SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(j), 12, '0'))::uuid,
                       'p1', 'demo', 'running'
                FROM generate_series(1, 1000) j""")
            # 100k tasks, 1% ready: the shape of a busy instance's history.
            cur.execute("""
                INSERT INTO tasks (id, job_id, project_id, stage, stage_number, module, status)
                SELECT ('00000001-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
                       ('00000000-0000-7000-8000-' || lpad(to_hex(g % 1000 + 1), 12, '0'))::uuid,
                       'p1', 's' || g, 1, 'noop',
                       CASE WHEN g % 100 = 0 THEN 'ready' ELSE 'completed' END
                FROM generate_series(1, 100000) g""")
            cur.execute("ANALYZE")
        assert_uses_tasks_ready(conn, CLAIM.format(limit=10))
        assert_uses_tasks_ready(conn, CLAIM.format(limit=1000))
        # Prepared statements get a generic plan after five runs; force it.
        with conn.cursor() as cur:
            cur.execute("SET plan_cache_mode = force_generic_plan")
            cur.execute("PREPARE claim(int) AS " + CLAIM.format(limit="$1"))
        assert_uses_tasks_ready(conn, "EXECUTE claim(100)")
        # And it claims: ten ready tasks, in id order, become running.
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("EXECUTE claim(10)")
            ids = sorted(r[0] for r in cur.fetchall())
            cur.execute("ROLLBACK")
        assert len(ids) == 10
        assert ids == sorted(ids) and ids[0].endswith(format(100, "012x")), ids
    finally:
        conn.close()
