"""The job API end to end: POST /v1/jobs (validation, idempotency, the rows
and the first events it writes, the log line), GET /v1/jobs/{id} (the
per-stage representation, ETag and 304), GET /v1/jobs (keyset pagination
under concurrent inserts, filters), API keys across projects, and PostgreSQL
going away and coming back under a running daemon.

Nothing executes tasks yet: a job stays queued with its root stage ready.
The pipeline config is nested YAML (lists of mappings), which the daemon
factory's dotted overrides can't express, so each daemon here gets a config
file written as JSON (a JSON document is YAML) through the factory's own
write_config(raw=...) and is registered with the factory, so it gets the
usual post-mortem (sanitizer reports, unexpected level=error lines, exit 0
on SIGTERM)."""

import concurrent.futures
import hashlib
import http.client
import json
import secrets
import threading
import time
import urllib.parse
import uuid
import zlib

import psycopg2
import pytest

from conftest import Daemon, clean_env
from slhelpers import UUID_RE, Response, assert_problem, free_port, wait_for

MODULES = {"noop": {"command": ["/bin/true"]}}

PIPELINES = {
    "demo": {
        "params": {
            "lang": {"type": "string", "default": "en"},
            "speed": {"type": "number"},
            "n": {"type": "integer", "required": True},
        },
        "stages": [
            {"name": "a", "module": "noop"},
            {"name": "b", "module": "noop", "needs": ["a"]},
            {"name": "c", "module": "noop", "needs": ["a"], "required": False},
            {"name": "d", "module": "noop", "needs": ["b", "c"]},
        ],
    },
    "other": {
        "stages": [{"name": "only", "module": "noop"}],
    },
}

MAX_PARAMS_BYTES = 1024
PROBLEM = "urn:stageline:problem:"

JOB_FIELDS = {
    "id", "pipeline", "status", "progress", "current_stage", "attempt", "created_at",
    "queued_at", "started_at", "completed_at", "duration_ms", "error", "logs_key", "params",
    "stages", "total_wait_ms", "queue",
}
STAGE_FIELDS = {
    "stage", "stage_number", "task_id", "engine_id", "status", "started_at", "completed_at",
    "duration_ms", "required", "retries", "error", "ready_at", "wait_ms", "progress",
    "depends_on",
}
# Fields that move with the clock (and the queue) while a job waits.
CLOCK_FIELDS = {"wait_ms", "total_wait_ms", "queue"}

B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# --------------------------------------------------------------------------
# helpers


def start(factory, auth=False, config=None, name=None, expect_errors=()):
    """A stagelined with the demo pipelines; waits until its schema is
    migrated (and, without auth, until the default project exists) so the
    first request can't race the start-up."""
    name = name or f"jobs-{len(factory.daemons)}"
    port = free_port()
    tree = factory.base_config(port)
    tree["auth"] = {"enabled": auth}
    tree["limits"]["max_params_bytes"] = f"{MAX_PARAMS_BYTES // 1024}KiB"
    tree["modules"] = MODULES
    tree["pipelines"] = PIPELINES
    tree["scheduler"] = {"enabled": False}  # these jobs stay queued: API-only instance
    for k, v in (config or {}).items():
        node = tree
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    raw = "# written by tests/integration/test_jobs.py (JSON is YAML)\n" + json.dumps(tree, indent=2)
    cfg_path, _ = factory.write_config(raw=raw, name=name, port=port)
    argv = [factory.binary, "-c", cfg_path, "--log-format", "json"]
    d = Daemon(factory, name, cfg_path, argv, clean_env(), port, expect_errors, False)
    factory.daemons.append(d)
    d.start(wait_healthy=True)
    d.wait_log(lambda l: l["event"] == "db.migrate.done", timeout=20.0, what="db.migrate.done")
    if not auth:
        with db(factory.pg) as cur:
            def default_project():
                cur.execute("SELECT 1 FROM projects WHERE id = 'default'")
                return cur.fetchone() is not None
            wait_for(default_project, 10.0, 0.02, "the default project row")
    return d


class db:
    """with db(pg) as cur: an autocommit cursor on the test cluster."""

    def __init__(self, pg):
        self.conn = psycopg2.connect(pg.conninfo)
        self.conn.autocommit = True

    def __enter__(self):
        return self.conn.cursor()

    def __exit__(self, *exc):
        self.conn.close()


def post(d, body, headers=None, raw=False):
    """POST /v1/jobs; body is a dict (sent as JSON) or bytes/str as is.
    Returns (status, headers, parsed JSON or None, raw body)."""
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    st, hd, b = d.http("POST", "/v1/jobs", body=data, headers=h, timeout=10.0)
    return st, hd, _json(b), b


def get(d, path, headers=None):
    st, hd, b = d.http("GET", path, headers=headers or {}, timeout=10.0)
    return st, hd, _json(b), b


def _json(b):
    try:
        return json.loads(b) if b else None
    except ValueError:
        return None


def problem(st, hd, b, status):
    return assert_problem(Response(st, "", "HTTP/1.1", list(hd.items()), b), status)


class KeepAlive:
    """One keep-alive connection per thread, for bulk requests."""

    def __init__(self, port):
        self.port = port
        self.local = threading.local()
        self.all = []
        self.lock = threading.Lock()

    def request(self, method, path, body=None, headers=None):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.local.conn = conn
            with self.lock:
                self.all.append(conn)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                self.local.conn = None
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        except Exception:
            conn.close()
            self.local.conn = None
            raise

    def post_job(self, body, headers=None):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return self.request("POST", "/v1/jobs", json.dumps(body), h)

    def close(self):
        with self.lock:
            for c in self.all:
                c.close()


def demo_body(n=1, **params):
    return {"pipeline": "demo", "params": {"n": n, **params}}


def page_all(client, query, headers=None, limit=37, between=None):
    """Pages through GET /v1/jobs?query with limit; returns (ids, pages).
    between(i) runs after page i is fetched (and may return a callable to
    run after the next request went out). Every page must be 200."""
    ids, pages, cursor = [], 0, None
    while True:
        q = f"{query}&limit={limit}" if query else f"limit={limit}"
        if cursor:
            q += "&cursor=" + urllib.parse.quote(cursor, safe="")
        pending = between(pages) if between else None
        st, hd, b = client.request("GET", "/v1/jobs?" + q, headers=headers)
        if pending:
            pending()
        assert st == 200, (q, st, b[:500])
        doc = json.loads(b)
        assert set(doc) >= {"data", "next_cursor"}, doc
        assert len(doc["data"]) <= limit, (q, len(doc["data"]))
        ids += [j["id"] for j in doc["data"]]
        pages += 1
        cursor = doc["next_cursor"]
        if cursor is None:
            return ids, pages
        assert isinstance(cursor, str) and cursor, doc
        assert pages < 10000, "pagination does not end"


def assert_newest_first(ids, what):
    dups = {i for i in ids if ids.count(i) > 1} if len(ids) != len(set(ids)) else set()
    assert not dups, f"{what}: {len(dups)} ids seen more than once, e.g. {sorted(dups)[:3]}"
    for k in range(1, len(ids)):
        assert ids[k - 1] > ids[k], f"{what}: not newest first at {k}: {ids[k - 1]} then {ids[k]}"


def b62(v, width):
    out = ""
    while v:
        out = B62[v % 62] + out
        v //= 62
    assert len(out) <= width
    return out.rjust(width, "0")


def make_key(prefix=None, secret=None):
    """(key text, prefix, secret) in the format of src/core/apikey.h."""
    prefix = prefix or "".join(secrets.choice(B62) for _ in range(8))
    secret = secret or "".join(secrets.choice(B62) for _ in range(32))
    body = f"sl_{prefix}_{secret}"
    return body + b62(zlib.crc32(body.encode()), 6), prefix, secret


def insert_key(cur, project, scopes, expires=None, revoked=None):
    key, prefix, secret = make_key()
    cur.execute(
        "INSERT INTO api_keys (id, project_id, prefix, hash, scopes, expires_at, revoked_at) "
        "VALUES (%s, %s, %s, %s, %s, " + (expires or "NULL") + ", " + (revoked or "NULL") + ")",
        (str(uuid.uuid4()), project, prefix, psycopg2.Binary(hashlib.sha256(secret.encode()).digest()),
         list(scopes)))
    return key


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def without_clock(job):
    j = {k: v for k, v in job.items() if k not in CLOCK_FIELDS}
    j["stages"] = [{k: v for k, v in s.items() if k not in CLOCK_FIELDS} for s in job["stages"]]
    return j


# --------------------------------------------------------------------------
# POST /v1/jobs: the representation, the rows, the events, the log


def test_create_job_rows_events_and_log(daemon, pg):
    d = start(daemon)
    st, hd, job, raw = post(d, demo_body(n=3, speed=1.5))
    assert st == 201, raw
    assert hd.get("content-type", "").split(";")[0] == "application/json", hd
    jid = job["id"]
    assert UUID_RE.match(jid) and jid[14] == "7", f"not a UUIDv7: {jid}"
    loc = hd.get("location", "")
    assert loc == f"/v1/jobs/{jid}" or loc.endswith(f"/v1/jobs/{jid}"), hd
    assert hd.get("etag"), f"no ETag on 201: {hd}"

    missing = JOB_FIELDS - set(job)
    assert not missing, f"job lacks {sorted(missing)}: {job}"
    assert job["pipeline"] == "demo" and job["status"] == "queued", job
    assert job["progress"] == 0 and job["attempt"] == 1, job
    assert job["current_stage"] in (None, "a"), job
    assert isinstance(job["created_at"], str) and isinstance(job["queued_at"], str), job
    assert job["started_at"] is None and job["completed_at"] is None, job
    assert job["duration_ms"] is None and job["error"] is None, job
    assert isinstance(job["logs_key"], str) and jid in job["logs_key"], job
    assert isinstance(job["total_wait_ms"], int) and job["total_wait_ms"] >= 0, job
    # the default filled in, the absent optional one left out
    assert job["params"] == {"n": 3, "speed": 1.5, "lang": "en"}, job["params"]

    stages = job["stages"]
    assert [s["stage"] for s in stages] == ["a", "b", "c", "d"], stages
    assert [s["stage_number"] for s in stages] == [1, 2, 3, 4], stages
    assert [s["depends_on"] for s in stages] == [[], ["a"], ["a"], ["b", "c"]], stages
    assert [s["required"] for s in stages] == [True, True, False, True], stages
    assert [s["status"] for s in stages] == ["ready", "pending", "pending", "pending"], stages
    for s in stages:
        missing = STAGE_FIELDS - set(s)
        assert not missing, f"stage {s.get('stage')} lacks {sorted(missing)}: {s}"
        assert UUID_RE.match(s["task_id"]), s
        assert s["engine_id"] is None and s["error"] is None and s["retries"] == 0, s
        assert s["started_at"] is None and s["completed_at"] is None, s
        assert s["duration_ms"] is None and s["progress"] == 0, s
    assert isinstance(stages[0]["ready_at"], str), stages[0]
    assert isinstance(stages[0]["wait_ms"], int) and stages[0]["wait_ms"] >= 0, stages[0]
    for s in stages[1:]:
        assert s["ready_at"] is None and s["wait_ms"] is None, s
    assert len({s["task_id"] for s in stages}) == 4, stages
    task_ids = {s["stage"]: s["task_id"] for s in stages}

    with db(pg) as cur:
        cur.execute("SELECT status, pipeline, project_id, event_seq, params, attempt, "
                    "queued_at IS NOT NULL FROM jobs WHERE id = %s", (jid,))
        rows = cur.fetchall()
        assert len(rows) == 1, rows
        status, pipeline, project, event_seq, params, attempt, queued = rows[0]
        assert (status, pipeline, project, attempt, queued) == ("queued", "demo", "default", 1,
                                                                True), rows
        assert event_seq == 2, f"jobs.event_seq = {event_seq}, want 2"
        assert params == {"n": 3, "speed": 1.5, "lang": "en"}, params

        cur.execute("SELECT id::text, stage, stage_number, status, depends_on, required, "
                    "ready_at IS NOT NULL FROM tasks WHERE job_id = %s ORDER BY stage_number",
                    (jid,))
        tasks = cur.fetchall()
        assert [(t[1], t[2], t[3], t[4], t[5], t[6]) for t in tasks] == [
            ("a", 1, "ready", [], True, True),
            ("b", 2, "pending", ["a"], True, False),
            ("c", 3, "pending", ["a"], False, False),
            ("d", 4, "pending", ["b", "c"], True, False),
        ], tasks
        assert {t[1]: t[0] for t in tasks} == task_ids, (tasks, task_ids)

        cur.execute("SELECT seq, kind, task_id::text, stage, status_from, status_to, project_id "
                    "FROM job_events WHERE job_id = %s ORDER BY seq", (jid,))
        events = cur.fetchall()
        assert events == [
            (1, "job.lifecycle.enqueue", None, None, "pending", "queued", "default"),
            (2, "job.stage.ready", task_ids["a"], "a", "pending", "ready", "default"),
        ], events

        # one transaction wrote them all
        cur.execute("SELECT xmin::text FROM jobs WHERE id = %(id)s UNION "
                    "SELECT xmin::text FROM tasks WHERE job_id = %(id)s UNION "
                    "SELECT xmin::text FROM job_events WHERE job_id = %(id)s UNION "
                    "SELECT (txid::text::numeric %% 4294967296)::text FROM job_events "
                    "WHERE job_id = %(id)s", {"id": jid})
        xids = cur.fetchall()
        assert len(xids) == 1, f"the job's rows come from several transactions: {xids}"

    line = d.wait_log(lambda l: l["event"] == "job.lifecycle.enqueue" and l.get("job_id") == jid,
                      what="the job.lifecycle.enqueue log line")
    for k in ("job_id", "project_id", "pipeline", "status_from", "status_to", "reason",
              "duration_ms"):
        assert k in line, f"enqueue log line lacks {k}: {line}"
    assert (line["project_id"], line["pipeline"], line["status_from"], line["status_to"]) == (
        "default", "demo", "pending", "queued"), line
    assert isinstance(line["reason"], str) and line["reason"], line
    assert isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0, line


def test_accepted_variants(daemon, pg):
    """Bodies that must be taken: an integer where a number is declared,
    optional members absent, charset on the media type, any JSON input."""
    d = start(daemon)
    cases = [
        (demo_body(n=2, speed=3), {}),
        (demo_body(n=-5, lang="de"), {}),
        ({"pipeline": "demo", "params": {"n": 0}, "input": [1, {"x": "y"}, None]}, {}),
        ({"pipeline": "demo", "params": {"n": 0}, "input": "just text"}, {}),
        (demo_body(n=1), {"Content-Type": "application/json; charset=utf-8"}),
        ({"pipeline": "other"}, {}),
        ({"pipeline": "other", "params": {}}, {}),
    ]
    for body, h in cases:
        st, hd, job, raw = post(d, body, h)
        assert st == 201, (body, h, st, raw)
        assert job["pipeline"] == body["pipeline"], job
    st, _, job, raw = post(d, demo_body(n=2, speed=3))
    assert job["params"] == {"n": 2, "speed": 3, "lang": "en"}, job["params"]


# --------------------------------------------------------------------------
# GET /v1/jobs/{id}, ETag and 304


def test_get_matches_create_and_conditional_get(daemon, pg):
    d = start(daemon)
    st, hd, created, raw = post(d, demo_body(n=7))
    assert st == 201, raw
    jid, etag = created["id"], hd.get("etag")
    assert etag, hd

    st, hd, got, raw = get(d, f"/v1/jobs/{jid}")
    assert st == 200, raw
    assert hd.get("etag") == etag, f"GET ETag {hd.get('etag')!r} != 201's {etag!r}"
    assert without_clock(got) == without_clock(created), (got, created)
    assert got["total_wait_ms"] >= created["total_wait_ms"], (got, created)

    # the id is case-insensitive
    st, _, up, raw = get(d, f"/v1/jobs/{jid.upper()}")
    assert st == 200 and up["id"] == jid, raw

    bare = etag[2:] if etag.startswith("W/") else etag
    for inm in (etag, bare, f"W/{bare}", f'"nope", {bare}', "*"):
        st, hd, _, raw = get(d, f"/v1/jobs/{jid}", {"If-None-Match": inm})
        assert st == 304, f"If-None-Match: {inm} -> {st} {raw[:300]!r}"
        assert raw == b"", raw
        assert hd.get("etag") == etag, hd
    for stale in ('"0"', '"999999"', 'W/"0"', '"nope"'):
        st, hd, body, raw = get(d, f"/v1/jobs/{jid}", {"If-None-Match": stale})
        assert st == 200, f"If-None-Match: {stale} -> {st}"
        assert body["id"] == jid and hd.get("etag") == etag, (hd, body)

    # A second instance has never seen the job: its 304 comes from the
    # database, not from a cache.
    d2 = start(daemon, name="jobs-second")
    st, hd, body, raw = get(d2, f"/v1/jobs/{jid}")
    assert st == 200 and hd.get("etag") == etag, (st, hd, raw)
    assert without_clock(body) == without_clock(created), body
    d3 = start(daemon, name="jobs-third")
    st, hd, _, raw = get(d3, f"/v1/jobs/{jid}", {"If-None-Match": etag})
    assert st == 304 and hd.get("etag") == etag, (st, hd, raw)


def test_get_unknown_job_is_404(daemon, pg):
    d = start(daemon)
    for path in (f"/v1/jobs/{uuid.uuid4()}", "/v1/jobs/not-a-uuid",
                 "/v1/jobs/0000000000000000000000000000000000000"):
        st, hd, _, raw = get(d, path)
        doc = problem(st, hd, raw, 404)
        assert doc["type"] == PROBLEM + "not-found", doc


# --------------------------------------------------------------------------
# validation


ROOT = object()  # "some field path for the body itself"

VALIDATION_CASES = [
    # (name, body, extra headers, status, field paths every 422 must list)
    ("not JSON", b"{not json", {}, 400, None),
    ("empty body", b"", {}, 400, None),
    ("trailing garbage", b'{"pipeline": "demo"} x', {}, 400, None),
    ("duplicate member", b'{"pipeline": "demo", "pipeline": "demo", "params": {"n": 1}}', {},
     400, None),
    ("array body", [1, 2], {}, 422, ROOT),
    ("string body", "just a string", {}, 422, ROOT),
    ("null body", None, {}, 422, ROOT),
    ("unknown top-level field", {**demo_body(), "bogus": 1}, {}, 422, {"bogus"}),
    ("missing pipeline", {"params": {"n": 1}}, {}, 422, {"pipeline"}),
    ("pipeline not a string", {"pipeline": 5, "params": {"n": 1}}, {}, 422, {"pipeline"}),
    ("unknown pipeline", {"pipeline": "nope", "params": {"n": 1}}, {}, 422, {"pipeline"}),
    ("misspelt pipeline member", {"pipelin": "demo", "params": {"n": 1}}, {}, 422,
     {"pipelin", "pipeline"}),
    ("params an array", {"pipeline": "demo", "params": [1]}, {}, 422, {"params"}),
    ("params a string", {"pipeline": "demo", "params": "n=1"}, {}, 422, {"params"}),
    ("params null", {"pipeline": "demo", "params": None}, {}, 422, {"params"}),
    ("unknown param", demo_body(zzz=2), {}, 422, {"params.zzz"}),
    ("required param missing", {"pipeline": "demo", "params": {}}, {}, 422, {"params.n"}),
    ("params absent, one required", {"pipeline": "demo"}, {}, 422, {"params.n"}),
    ("string for number", demo_body(speed="fast"), {}, 422, {"params.speed"}),
    ("bool for number", demo_body(speed=True), {}, 422, {"params.speed"}),
    ("1.5 for integer", demo_body(n=1.5), {}, 422, {"params.n"}),
    ("string for integer", {"pipeline": "demo", "params": {"n": "3"}}, {}, 422, {"params.n"}),
    ("bool for integer", {"pipeline": "demo", "params": {"n": True}}, {}, 422, {"params.n"}),
    ("null for required integer", {"pipeline": "demo", "params": {"n": None}}, {}, 422,
     {"params.n"}),
    ("number for string", demo_body(lang=5), {}, 422, {"params.lang"}),
    ("object for string", demo_body(lang={"x": 1}), {}, 422, {"params.lang"}),
    ("every param wrong at once",
     {"pipeline": "demo", "params": {"lang": 1, "speed": "x", "extra": 1}}, {}, 422,
     {"params.lang", "params.speed", "params.n", "params.extra"}),
    ("params over max_params_bytes", demo_body(lang="x" * (MAX_PARAMS_BYTES + 10)), {}, 413,
     None),
    ("Content-Type text/plain", demo_body(), {"Content-Type": "text/plain"}, 415, None),
    ("Content-Type form", demo_body(), {"Content-Type": "application/x-www-form-urlencoded"},
     415, None),
    ("Content-Type json-patch", demo_body(), {"Content-Type": "application/json-patch+json"},
     415, None),
    ("Idempotency-Key too long", demo_body(), {"Idempotency-Key": "k" * 256}, 400, None),
    ("Idempotency-Key with a space", demo_body(), {"Idempotency-Key": "two words"}, 400, None),
    ("Idempotency-Key with a control char", demo_body(), {"Idempotency-Key": "a\tb"}, 400,
     None),
]


def test_validation_errors(daemon, pg):
    d = start(daemon)
    with db(pg) as cur:
        cur.execute("SELECT count(*) FROM jobs")
        before = cur.fetchone()[0]
    failures = []
    for name, body, h, want, fields in VALIDATION_CASES:
        data = body if isinstance(body, bytes) else json.dumps(body)
        st, hd, doc, raw = post(d, data, h)
        try:
            p = problem(st, hd, raw, want)
            if want == 422:
                errs = p.get("errors")
                assert isinstance(errs, list) and errs, f"no errors list: {p}"
                for e in errs:
                    assert isinstance(e.get("field"), str), f"an error without a field: {e}"
                    assert isinstance(e.get("message"), str) and e["message"], e
                if fields is not ROOT:
                    got = {e["field"] for e in errs}
                    assert got == fields, f"field paths {sorted(got)}, want {sorted(fields)}"
        except AssertionError as e:
            failures.append(f"{name}: {e}\n    -> {st} {raw[:300]!r}")
    with db(pg) as cur:
        cur.execute("SELECT count(*) FROM jobs")
        after = cur.fetchone()[0]
    assert not failures, f"{len(failures)} of {len(VALIDATION_CASES)} cases wrong:\n  " + \
        "\n  ".join(failures)
    assert after == before, f"refused requests created {after - before} jobs"


# --------------------------------------------------------------------------
# idempotency


def test_idempotency_same_key(daemon, pg):
    d = start(daemon)
    key = f"idem-{uuid.uuid4()}"
    body = demo_body(n=11, lang="fr")
    st1, hd1, j1, raw1 = post(d, body, {"Idempotency-Key": key})
    assert st1 == 201, raw1
    st2, hd2, j2, raw2 = post(d, body, {"Idempotency-Key": key})
    assert st2 == 200, f"replay: {st2} {raw2[:300]!r}"
    assert j2["id"] == j1["id"], (j1["id"], j2["id"])
    assert without_clock(j2) == without_clock(j1), (j1, j2)
    assert hd2.get("location", "").endswith(f"/v1/jobs/{j1['id']}"), hd2
    assert hd2.get("etag") == hd1.get("etag"), (hd1, hd2)

    # the same request written differently is the same request
    same = b'{ "params" : {"lang": "fr", "n": 11}, "pipeline": "demo" }'
    st3, _, j3, raw3 = post(d, same, {"Idempotency-Key": key})
    assert st3 == 200 and j3["id"] == j1["id"], (st3, raw3[:300])

    for other in (demo_body(n=12, lang="fr"), {"pipeline": "other"},
                  {**body, "input": {"x": 1}}):
        st, hd, _, raw = post(d, other, {"Idempotency-Key": key})
        doc = problem(st, hd, raw, 409)
        assert doc["type"].startswith(PROBLEM), doc

    # another key, or none, is another job
    st4, _, j4, _ = post(d, body, {"Idempotency-Key": key + "-2"})
    st5, _, j5, _ = post(d, body)
    st6, _, j6, _ = post(d, body)
    assert (st4, st5, st6) == (201, 201, 201)
    assert len({j1["id"], j4["id"], j5["id"], j6["id"]}) == 4

    with db(pg) as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE idempotency_key = %s", (key,))
        assert cur.fetchone()[0] == 1


def test_idempotency_concurrent(daemon, pg):
    d = start(daemon)
    key = f"race-{uuid.uuid4()}"
    body = json.dumps(demo_body(n=99))
    n = 20
    barrier = threading.Barrier(n)
    results = [None] * n

    def one(i):
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=20)
        try:
            conn.connect()
            barrier.wait(10)
            conn.request("POST", "/v1/jobs", body=body,
                         headers={"Content-Type": "application/json", "Idempotency-Key": key})
            r = conn.getresponse()
            results[i] = (r.status, r.read())
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results), results
    statuses = sorted(r[0] for r in results)
    assert statuses.count(201) == 1 and statuses.count(200) == n - 1, \
        f"statuses {statuses}; bodies {[r[1][:200] for r in results if r[0] not in (200, 201)]}"
    ids = {json.loads(r[1])["id"] for r in results}
    assert len(ids) == 1, ids
    with db(pg) as cur:
        cur.execute("SELECT id::text FROM jobs WHERE idempotency_key = %s", (key,))
        rows = cur.fetchall()
    assert rows == [(ids.pop(),)], rows


# --------------------------------------------------------------------------
# listing


def test_list_keyset_pagination_under_concurrent_inserts(daemon, pg):
    d = start(daemon)
    client = KeepAlive(d.port)
    try:
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            res = list(ex.map(lambda i: client.post_job(demo_body(n=i)), range(1000)))
        created_s = time.monotonic() - t0
        bad = [(st, b[:200]) for st, _, b in res if st != 201]
        assert not bad, f"{len(bad)} of 1000 POSTs failed, e.g. {bad[:3]}"
        print(f"created 1000 jobs in {created_s:.2f}s with 16 threads")
        created = {json.loads(b)["id"] for _, _, b in res}
        assert len(created) == 1000

        with db(pg) as cur:
            cur.execute("SELECT id::text FROM jobs WHERE project_id = 'default'")
            before = {r[0] for r in cur.fetchall()}
        assert created <= before

        # Between each page and the next, a few more POSTs run while the next
        # page is being fetched; the page waits for them before going on.
        ex = concurrent.futures.ThreadPoolExecutor(8)
        inserted = []

        per_page = -(-200 // (len(before) // 37 + 1))  # about 200 inserts in all

        def between(i):
            futs = [ex.submit(client.post_job, demo_body(n=10000 + per_page * i + k))
                    for k in range(per_page)]

            def settle():
                for f in futs:
                    st, _, b = f.result(30)
                    assert st == 201, b[:300]
                    inserted.append(json.loads(b)["id"])
            return settle

        try:
            ids, pages = page_all(client, "", limit=37, between=between)
        finally:
            ex.shutdown(wait=True)
        print(f"paged {len(ids)} ids in {pages} pages; {len(inserted)} inserted meanwhile")
        assert len(inserted) >= 190, len(inserted)
        assert_newest_first(ids, "GET /v1/jobs?limit=37")
        seen = set(ids)
        lost = before - seen
        assert not lost, f"{len(lost)} jobs that existed before paging were never listed"
        extra = seen - before - set(inserted)
        assert not extra, f"listed ids that no one created: {sorted(extra)[:3]}"
        assert pages == -(-len(ids) // 37) or pages == len(ids) // 37 + 1, (pages, len(ids))
    finally:
        client.close()


def test_list_filters_and_bad_queries(daemon, pg):
    d = start(daemon)
    client = KeepAlive(d.port)
    try:
        mine = []
        for i in range(40):
            body = demo_body(n=i) if i % 4 else {"pipeline": "other"}
            st, _, b = client.post_job(body)
            assert st == 201, b
            mine.append(json.loads(b))
        with db(pg) as cur:
            # Some jobs moved on (nothing runs tasks yet, so the test moves them).
            failed_ids = [j["id"] for j in mine[1:40:8]]
            cur.execute("UPDATE jobs SET status = 'failed' WHERE id = ANY(%s::uuid[])",
                        (failed_ids,))

            def db_ids(where, args=()):
                cur.execute(f"SELECT id::text FROM jobs WHERE project_id = 'default' AND {where} "
                            "ORDER BY id DESC", args)
                return [r[0] for r in cur.fetchall()]

            cut = mine[25]["created_at"]
            # RFC 3986 allows ':' unencoded in a query; the encoded forms
            # are checked on their own below.
            qcut = urllib.parse.quote(cut, safe=":")
            expected = {
                "status=queued": db_ids("status = 'queued'"),
                "status=failed": db_ids("status = 'failed'"),
                "status=completed": db_ids("status = 'completed'"),
                "pipeline=demo": db_ids("pipeline = 'demo'"),
                "pipeline=other": db_ids("pipeline = 'other'"),
                "status=queued&pipeline=other": db_ids("status = 'queued' AND pipeline = 'other'"),
                "created_after=" + qcut: db_ids("created_at > %s::timestamptz", (cut,)),
                "pipeline=demo&created_after=" + qcut:
                    db_ids("pipeline = 'demo' AND created_at > %s::timestamptz", (cut,)),
            }
        assert set(failed_ids) <= set(expected["status=failed"])
        after_cut = expected["created_after=" + qcut]
        assert 0 < len(after_cut) <= 14, after_cut
        for query, want in expected.items():
            ids, _ = page_all(client, query, limit=7)
            assert ids == want, f"GET /v1/jobs?{query}: {len(ids)} ids, want {len(want)}"
        st, _, b = client.request("GET", "/v1/jobs?status=queued&limit=200")
        doc = json.loads(b)
        assert st == 200 and all(j["status"] == "queued" for j in doc["data"]), doc
        assert all(j["pipeline"] in PIPELINES for j in doc["data"]), doc
        st, _, b = client.request("GET", "/v1/jobs")
        assert st == 200 and 0 < len(json.loads(b)["data"]) <= 200, b[:300]

        garbage = ["abc", "c1" + "A" * 48, "c1", "c2" + mine[0]["id"], mine[0]["id"], "%00",
                   "c1" + "_" * 47 + "="]
        bad = [("limit", v) for v in ("0", "201", "abc", "-1", "", "1.5", "99999999999999999999")]
        bad += [("cursor", v) for v in garbage]
        bad += [("status", v) for v in ("bogus", "QUEUED", "")]
        bad += [("created_after", v) for v in ("yesterday", "2024-13-01T00:00:00Z", "")]
        failures = []
        # The same instant percent-encoded (as urlencode() sends it), and
        # with a numeric offset (whose '+' must be sent as %2B).
        assert cut.endswith("Z"), cut
        for form in (urllib.parse.quote(cut, safe=""),
                     urllib.parse.quote(cut[:-1] + "+00:00", safe=""),
                     urllib.parse.quote(cut[:-1] + "-00:00", safe=":")):
            st, _, b = client.request("GET", f"/v1/jobs?limit=200&created_after={form}")
            got = [j["id"] for j in json.loads(b)["data"]] if st == 200 else None
            if got != after_cut:
                failures.append(f"created_after={form}: {st} {b[:200]!r}, want the "
                                f"{len(after_cut)} jobs of created_after={qcut}")
        for field, value in bad:
            path = f"/v1/jobs?{field}=" + urllib.parse.quote(value, safe="%")
            st, hd, b = client.request("GET", path)
            try:
                doc = problem(st, hd, b, 422)
                assert field in {e.get("field") for e in doc.get("errors", [])}, doc
            except AssertionError as e:
                failures.append(f"{path}: {e} -> {st} {b[:200]!r}")
        assert not failures, "\n  ".join(failures)
    finally:
        client.close()


# --------------------------------------------------------------------------
# API keys and projects


def test_api_keys_across_projects(daemon, pg):
    suffix = secrets.token_hex(4)
    pa, pb = f"pa-{suffix}", f"pb-{suffix}"
    with db(pg) as cur:
        # The daemon migrates the schema; make sure it exists first. Many bad
        # keys come from one address below: no failed-auth rate limit here
        # (test_jwt_auth.py tests it).
        d = start(daemon, auth=True, config={"auth.max_failures": 0})
        cur.execute("INSERT INTO projects (id, name) VALUES (%s, 'A'), (%s, 'B')", (pa, pb))
        ka = insert_key(cur, pa, ["jobs:read", "jobs:write"])
        kb = insert_key(cur, pb, ["jobs:read", "jobs:write"])
        ka_read = insert_key(cur, pa, ["jobs:read"])
        ka_write = insert_key(cur, pa, ["jobs:write"])
        revoked = insert_key(cur, pa, ["jobs:read", "jobs:write"],
                             revoked="now() - interval '1 minute'")
        expired = insert_key(cur, pa, ["jobs:read", "jobs:write"],
                             expires="now() - interval '1 minute'")

    st, hd, ja, raw = post(d, demo_body(n=1), bearer(ka))
    assert st == 201, raw
    jid = ja["id"]
    path = f"/v1/jobs/{jid}"
    assert get(d, path, bearer(ka))[0] == 200
    assert get(d, path, bearer(ka_read))[0] == 200

    # another project's job is exactly as absent as a job that never was
    unknown = jid[:-12] + secrets.token_hex(6)  # same shape and time, never created
    st1, hd1, _, body1 = get(d, path, bearer(kb))
    st2, hd2, _, body2 = get(d, f"/v1/jobs/{unknown}", bearer(kb))
    problem(st1, hd1, body1, 404)
    problem(st2, hd2, body2, 404)
    assert body1.replace(jid.encode(), b"ID") == body2.replace(unknown.encode(), b"ID"), \
        (body1, body2)
    # ... also to a conditional GET naming the job's current ETag
    for inm in ('"1"', "*"):
        st, hd, _, body = get(d, path, {**bearer(kb), "If-None-Match": inm})
        assert st == 404 and body == body1, f"If-None-Match {inm} with b's key: {st} {body!r}"
    st, _, page, _ = get(d, "/v1/jobs?limit=200", bearer(kb))
    assert st == 200 and jid not in {j["id"] for j in page["data"]}, page
    st, _, page, _ = get(d, "/v1/jobs?limit=200", bearer(ka))
    assert st == 200 and jid in {j["id"] for j in page["data"]}, page

    # idempotency keys belong to a project
    ik = {"Idempotency-Key": f"shared-{suffix}"}
    sa = post(d, demo_body(n=5), {**bearer(ka), **ik})
    sb = post(d, demo_body(n=5), {**bearer(kb), **ik})
    assert (sa[0], sb[0]) == (201, 201), (sa[3], sb[3])
    assert sa[2]["id"] != sb[2]["id"]

    # a missing scope is 403, naming the scope
    st, hd, _, raw = post(d, demo_body(n=1), bearer(ka_read))
    doc = problem(st, hd, raw, 403)
    assert "jobs:write" in json.dumps(doc), doc
    st, hd, _, raw = get(d, path, bearer(ka_write))
    doc = problem(st, hd, raw, 403)
    assert "jobs:read" in json.dumps(doc), doc

    # every bad key: the same 401, byte for byte
    wrong_secret = make_key(prefix=ka[3:11])[0]
    bad_check = ka[:-1] + ("0" if ka[-1] != "0" else "1")
    bad = {
        "unknown": make_key()[0],
        "wrong secret": wrong_secret,
        "revoked": revoked,
        "expired": expired,
        "bad checksum": bad_check,
        "truncated": ka[:-2],
        "too long": ka + "x",
        "not base62": ka[:20] + "-" + ka[21:],
        "empty bearer": "",
    }
    answers = {}
    for what, key in bad.items():
        for method, p, body in (("GET", path, None), ("POST", "/v1/jobs", demo_body(n=1))):
            h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            st, hd, b = d.http(method, p, body=json.dumps(body) if body else None, headers=h)
            answers[(what, method)] = (st, hd.get("www-authenticate"), b)
    for method, p in (("GET", path), ("POST", "/v1/jobs")):
        st, hd, b = d.http(method, p, body=b"{}" if method == "POST" else None,
                           headers={"Content-Type": "application/json"})
        answers[("no header", method)] = (st, hd.get("www-authenticate"), b)
        st, hd, b = d.http(method, p, body=b"{}" if method == "POST" else None,
                           headers={"Authorization": f"Basic {ka}",
                                    "Content-Type": "application/json"})
        answers[("basic scheme", method)] = (st, hd.get("www-authenticate"), b)
    for method in ("GET", "POST"):
        mine = {k[0]: v for k, v in answers.items() if k[1] == method}
        ref = mine["unknown"]
        assert ref[0] == 401 and ref[1], ref
        problem(401, {"content-type": "application/problem+json"}, ref[2], 401)
        differ = {k: v for k, v in mine.items() if v != ref}
        assert not differ, f"{method}: answers differ from an unknown key's {ref}: {differ}"

    with db(pg) as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE project_id = ANY(%s)", ([pa, pb],))
        assert cur.fetchone()[0] == 3


# --------------------------------------------------------------------------
# PostgreSQL going away


def test_postgres_restart_503_then_recovers(daemon, pg):
    d = start(daemon)
    st, _, job, raw = post(d, demo_body(n=1))
    assert st == 201, raw
    jid = job["id"]
    try:
        pg.stop("fast")
        for method, path in (("POST", "/v1/jobs"), ("GET", f"/v1/jobs/{jid}"),
                             ("GET", "/v1/jobs?limit=5")):
            t0 = time.monotonic()
            if method == "POST":
                st, hd, _, raw = post(d, demo_body(n=2))
            else:
                st, hd, _, raw = get(d, path)
            took = time.monotonic() - t0
            doc = problem(st, hd, raw, 503)
            assert doc["type"] == PROBLEM + "db-unavailable", (method, path, doc)
            assert took < 5.0, f"{method} {path}: the 503 took {took:.1f}s"
            assert hd.get("retry-after"), hd
    finally:
        if not pg.running:
            pg.start()

    def back():
        st, _, j, _ = post(d, demo_body(n=3))
        return j if st == 201 else None

    j2 = wait_for(back, 30.0, 0.2, "POST /v1/jobs == 201 after PostgreSQL came back")
    st, _, got, raw = get(d, f"/v1/jobs/{j2['id']}")
    assert st == 200 and got["id"] == j2["id"], raw
    st, _, got, raw = get(d, f"/v1/jobs/{jid}")
    assert st == 200 and got["id"] == jid, raw
