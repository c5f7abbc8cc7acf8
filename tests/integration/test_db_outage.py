"""PostgreSQL down under load: requests answer 503 (problem type
db-unavailable, or overloaded while the pool drains), the daemon reconnects
and recovers by itself, and nothing it acknowledged is lost.

One test drives it end to end. Eight client threads keep POSTing jobs and
reading them back (GET /v1/jobs/{id}, half of them conditional, and GET
/v1/jobs) on keep-alive connections for the whole test, while the main
thread stops the session's PostgreSQL cluster, holds the outage for a
couple of seconds, starts it again and waits for the traffic to succeed
again. Every POST carries an Idempotency-Key, and a client retries the same
key (same body) until it gets an acknowledgement, as a well-behaved client
would: a submission that was in flight when the connection dropped may have
committed even though it was answered 503, and its retry must then replay
the job (200) rather than create a second one.

The daemon is configured as in test_jobs.py: the pipeline config is nested
YAML, so the file is written as JSON (a JSON document is YAML) through the
factory's write_config(raw=...), and the Daemon is registered with the
factory so it gets the usual post-mortem (sanitizer reports, unexpected
level=error lines, exit 0 on SIGTERM). No level=error line is expected:
PostgreSQL going away is an operational condition the daemon handles
(warn), not an error in it.

The pg fixture is session-scoped and shared: the cluster is started again
in a finally block whatever happens here."""

import http.client
import json
import random
import threading
import time
import uuid

import psycopg2

from conftest import Daemon, clean_env
from slhelpers import PROBLEM_CT, free_port, wait_for

PROBLEM = "urn:stageline:problem:"
THREADS = 8
REQUEST_TIMEOUT = 10.0  # seconds, per request (socket timeout)
ALLOWED = {200, 201, 304, 503}
OUTAGE_TYPES = {PROBLEM + "db-unavailable", PROBLEM + "overloaded"}
# The pool lets a batch wait at most 5 s (db/pool.h) and a connect attempt
# times out after 5 s (db/pg.h); a 503 slower than both plus slack means a
# request was stuck rather than failed fast.
MAX_503_SECONDS = 7.0

MODULES = {"noop": {"command": ["/bin/true"]}}


def start_daemon(factory, pipeline):
    """A stagelined with auth off and one two-stage pipeline; waits until
    the schema is migrated and the default project exists, so the load
    can't race the start-up."""
    name = f"outage-{len(factory.daemons)}"
    port = free_port()
    tree = factory.base_config(port)
    tree["auth"] = {"enabled": False}
    tree["modules"] = MODULES
    tree["scheduler"] = {"enabled": False}  # the API under an outage, not the engine
    tree["pipelines"] = {
        pipeline: {
            "params": {"n": {"type": "integer", "required": True}},
            "stages": [
                {"name": "a", "module": "noop"},
                {"name": "b", "module": "noop", "needs": ["a"]},
            ],
        }
    }
    raw = "# written by tests/integration/test_db_outage.py (JSON is YAML)\n" + json.dumps(
        tree, indent=2)
    cfg_path, _ = factory.write_config(raw=raw, name=name, port=port)
    argv = [factory.binary, "-c", cfg_path, "--log-format", "json"]
    d = Daemon(factory, name, cfg_path, argv, clean_env(), port, (), False)
    factory.daemons.append(d)
    d.start(wait_healthy=True)
    d.wait_log(lambda l: l["event"] == "db.migrate.done", timeout=20.0, what="db.migrate.done")
    d.wait_ready(timeout=20.0)

    def default_project():
        conn = psycopg2.connect(factory.pg.conninfo)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM projects WHERE id = 'default'")
                return cur.fetchone() is not None
        finally:
            conn.close()

    wait_for(default_project, 10.0, 0.05, "the default project row")
    return d


class Record:
    """One request as a client saw it."""

    __slots__ = ("tid", "kind", "method", "path", "t0", "t1", "status", "headers", "body",
                 "error", "key")

    def __init__(self, tid, kind, method, path, t0):
        self.tid = tid
        self.kind = kind  # "submit", "get", "get_inm", "list"
        self.method = method
        self.path = path
        self.t0 = t0
        self.t1 = None
        self.status = None
        self.headers = {}
        self.body = b""
        self.error = None
        self.key = None

    def __repr__(self):
        what = f"{self.status}" if self.error is None else f"error {self.error}"
        return (f"<{self.method} {self.path} thread {self.tid} at +{self.t0:.3f}s took "
                f"{(self.t1 or self.t0) - self.t0:.3f}s: {what} {self.headers} "
                f"{self.body[:300]!r}>")


class Load:
    """THREADS clients, each on its own keep-alive connection, looping
    POST (with an Idempotency-Key, retried until acknowledged), GET one of
    the jobs acknowledged so far (half the time with its ETag) and a list
    page. Times are seconds since the load began (time.monotonic)."""

    def __init__(self, port, pipeline, run_id):
        self.port = port
        self.pipeline = pipeline
        self.run_id = run_id
        self.origin = time.monotonic()
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.records = []
        self.acked = {}  # idempotency key -> job id
        self.first_ack = {}  # idempotency key -> the status that first acknowledged it
        self.etags = {}  # job id -> the latest ETag seen
        self.ids = []
        self.pending = {}  # thread -> the key it is still retrying (None when acked)
        self.crashes = []
        self.threads = [threading.Thread(target=self._run, args=(t,), name=f"load-{t}",
                                         daemon=True) for t in range(THREADS)]

    def now(self):
        return time.monotonic() - self.origin

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_ev.set()
        # Each request is bounded by REQUEST_TIMEOUT; one may be in flight.
        deadline = time.monotonic() + REQUEST_TIMEOUT + 5.0
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"client threads did not finish: {alive}"

    # -- what the main thread waits on

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def count(self, pred):
        with self.lock:
            return sum(1 for r in self.records if pred(r))

    # -- the clients

    def _request(self, conn_box, rec, body=None, headers=None):
        conn = conn_box[0]
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
            conn_box[0] = conn
        try:
            conn.request(rec.method, rec.path, body=body, headers=headers or {})
            resp = conn.getresponse()
            rec.body = resp.read()
            rec.status = resp.status
            rec.headers = {k.lower(): v for k, v in resp.getheaders()}
            if rec.headers.get("connection", "").lower() == "close":
                conn.close()
                conn_box[0] = None
        except (OSError, http.client.HTTPException) as e:
            rec.error = f"{e.__class__.__name__}: {e}"
            conn.close()
            conn_box[0] = None
        rec.t1 = self.now()
        with self.lock:
            self.records.append(rec)
        return rec

    def _run(self, tid):
        rnd = random.Random(f"{self.run_id}-{tid}")
        conn_box = [None]
        seq = 0
        key = None
        try:
            while not self.stop_ev.is_set():
                if key is None:
                    seq += 1
                    key = f"{self.run_id}-{tid}-{seq}"
                    # The body must stay the same across retries of a key.
                    body = json.dumps({"pipeline": self.pipeline, "params": {"n": seq}})
                    with self.lock:
                        self.pending[tid] = key
                rec = Record(tid, "submit", "POST", "/v1/jobs", self.now())
                rec.key = key
                self._request(conn_box, rec, body=body, headers={
                    "Content-Type": "application/json", "Idempotency-Key": key})
                if rec.status in (200, 201):
                    job = json.loads(rec.body)
                    with self.lock:
                        self.acked.setdefault(key, job["id"])
                        self.first_ack.setdefault(key, rec.status)
                        if rec.status == 201 or job["id"] not in self.etags:
                            self.ids.append(job["id"])
                        self.etags[job["id"]] = rec.headers.get("etag")
                        self.pending[tid] = None
                    key = None

                with self.lock:
                    jid = rnd.choice(self.ids) if self.ids else None
                    etag = self.etags.get(jid)
                if jid:
                    conditional = etag and rnd.random() < 0.5
                    rec = Record(tid, "get_inm" if conditional else "get", "GET",
                                 f"/v1/jobs/{jid}", self.now())
                    self._request(conn_box, rec,
                                  headers={"If-None-Match": etag} if conditional else None)

                rec = Record(tid, "list", "GET", f"/v1/jobs?pipeline={self.pipeline}&limit=5",
                             self.now())
                self._request(conn_box, rec)
        except Exception as e:  # noqa: BLE001 - reported by the test, not lost in a thread
            with self.lock:
                self.crashes.append(f"thread {tid}: {e!r}")
        finally:
            if conn_box[0] is not None:
                conn_box[0].close()


def healthz(d):
    st, _, body = d.http("GET", "/healthz", timeout=5.0)
    assert st == 200, body
    return json.loads(body)


def readyz_status(d):
    try:
        st, hd, body = d.http("GET", "/readyz", timeout=5.0)
    except OSError as e:
        raise AssertionError(f"GET /readyz failed: {e!r}") from None
    return st, hd, body


def test_postgres_down_under_load_503_then_recovers(daemon, pg):
    run_id = uuid.uuid4().hex[:12]
    pipeline = f"outage_{run_id}"
    d = start_daemon(daemon, pipeline)
    before = healthz(d)
    pid = d.proc.pid

    load = Load(d.port, pipeline, run_id)
    marks = {}
    readyz_down = None
    load.start()
    try:
        # ~1 s of healthy traffic, every thread through at least one job.
        wait_for(lambda: load.now() >= 1.0 and len({r.tid for r in load.snapshot()
                                                     if r.status == 201}) == THREADS,
                 15.0, 0.05, "1 s of healthy traffic with a 201 on every thread")
        assert not load.crashes, load.crashes
        marks["stop_begin"] = load.now()
        pg.stop("fast")
        try:
            marks["stop_end"] = load.now()

            def down():
                return load.count(lambda r: r.t0 >= marks["stop_end"] and r.status == 503) >= \
                       THREADS
            wait_for(down, 10.0, 0.05, "503 answers after PostgreSQL stopped")

            def readyz_503():
                st, hd, body = readyz_status(d)
                return (st, hd, body) if st == 503 else None
            readyz_down = wait_for(readyz_503, 10.0, 0.05, "GET /readyz == 503 during the outage")

            # Hold the outage for ~2 s and until every thread has had two
            # whole requests answered inside it.
            t_down = load.now()

            def held():
                if load.now() < t_down + 2.0:
                    return False
                per = {}
                for r in load.snapshot():
                    if r.t0 >= marks["stop_end"]:
                        per[r.tid] = per.get(r.tid, 0) + 1
                return len(per) == THREADS and min(per.values()) >= 2
            wait_for(held, 20.0, 0.05, "2 s of load during the outage on every thread")
            assert not load.crashes, load.crashes
            marks["start_begin"] = load.now()
        finally:
            if not pg.running:
                pg.start()
        marks["start_end"] = load.now()

        # The daemon reconnects by itself: every kind of request succeeds again.
        def recovered():
            after = [r for r in load.snapshot() if r.t0 >= marks["start_end"]]
            ok = {r.kind for r in after if r.status in (200, 201)}
            return {"submit", "list"} <= ok and ("get" in ok or "get_inm" in ok)
        wait_for(recovered, 20.0, 0.05, "POST and GET succeeding after PostgreSQL came back")
        marks["recovered"] = load.now()
        wait_for(lambda: readyz_status(d)[0] == 200, 20.0, 0.05,
                 "GET /readyz == 200 after PostgreSQL came back")
        marks["readyz_200"] = load.now()

        # ~1 s more, with a job acknowledged on every thread.
        def settled():
            if load.now() < marks["recovered"] + 1.0:
                return False
            return len({r.tid for r in load.snapshot()
                        if r.t0 >= marks["recovered"] and r.status in (200, 201)
                        and r.kind == "submit"}) == THREADS
        wait_for(settled, 20.0, 0.05, "1 s more of healthy traffic on every thread")
    finally:
        load.stop()
        if not pg.running:
            pg.start()

    records = load.snapshot()
    assert not load.crashes, load.crashes

    # -- every answer was one of the allowed ones; none was dropped or timed out
    bad = [r for r in records if r.error is not None or r.status not in ALLOWED]
    assert not bad, (f"{len(bad)} of {len(records)} requests failed or had an unexpected "
                     f"status (marks {marks}); first ones: {bad[:5]}")

    # -- every 503 is a problem document naming the outage, with Retry-After
    unavailable = [r for r in records if r.status == 503]
    assert unavailable, "no request was answered 503 during the outage"
    for r in unavailable:
        ct = r.headers.get("content-type", "").split(";")[0].strip()
        assert ct == PROBLEM_CT, r
        doc = json.loads(r.body)
        assert doc.get("type") in OUTAGE_TYPES and doc.get("status") == 503, r
        assert r.headers.get("retry-after"), f"503 without Retry-After: {r}"
        assert r.t1 - r.t0 <= MAX_503_SECONDS, f"a 503 took {r.t1 - r.t0:.1f} s: {r}"
    # ... and only around the outage: not before PostgreSQL was stopped.
    early = [r for r in unavailable if r.t1 < marks["stop_begin"]]
    assert not early, f"503 before PostgreSQL was stopped (marks {marks}): {early[:5]}"
    # Nothing can commit while the server is down.
    impossible = [r for r in records if r.status == 201 and r.t0 >= marks["stop_end"]
                  and r.t1 <= marks["start_begin"]]
    assert not impossible, f"201 while PostgreSQL was down (marks {marks}): {impossible[:5]}"

    # -- recovered in place: the same process and instance, ready again
    assert d.running() and d.proc.pid == pid, "stagelined was restarted or died"
    after = healthz(d)
    assert after["instance_id"] == before["instance_id"], (before, after)
    st, hd, body = readyz_down
    ct = hd.get("content-type", "").split(";")[0].strip()
    assert ct == PROBLEM_CT and json.loads(body)["type"] == PROBLEM + "db-unavailable", body
    st, _, body = readyz_status(d)
    assert st == 200, body

    # -- nothing acknowledged was lost, nothing was created twice
    created = [r for r in records if r.kind == "submit" and r.status == 201]
    by_key = {}
    for r in created:
        by_key.setdefault(r.key, []).append(json.loads(r.body)["id"])
    twice = {k: v for k, v in by_key.items() if len(v) > 1}
    assert not twice, f"one Idempotency-Key created more than one job: {twice}"
    for r in records:
        if r.kind == "submit" and r.status == 200:
            assert json.loads(r.body)["id"] == load.acked[r.key], f"replay of another job: {r}"
    conn = psycopg2.connect(pg.conninfo)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT idempotency_key, id::text FROM jobs WHERE pipeline = %s",
                        (pipeline,))
            rows = dict(cur.fetchall())
    finally:
        conn.close()
    missing = {k: v for k, v in load.acked.items() if rows.get(k) != v}
    assert not missing, (f"{len(missing)} acknowledged jobs are not in the database (key -> "
                         f"id): {dict(list(missing.items())[:5])}")
    replayed_first = [k for k, s in load.first_ack.items() if s == 200]
    unacked = {k for k in load.pending.values() if k is not None}
    extra = set(rows) - set(load.acked)
    # A key still unacknowledged at the end may have committed (its last
    # attempt was answered 503 after the connection dropped): at most those.
    assert extra <= unacked, f"jobs under keys no client has retrying: {extra - unacked}"
    assert len(rows) == len(created) + len(replayed_first) + len(extra), (
        len(rows), len(created), len(replayed_first), len(extra))

    # -- the log tells the story: connections lost, then connected again. A
    # connection that failed several connects in a row waits out its backoff
    # (up to reconnect_max_ms, 5 s) after the server is back, so wait for it.
    lost = [ln for ln in d.log_lines() if ln.get("event") == "db.conn.lost"]
    assert lost, "no db.conn.lost line after PostgreSQL stopped"
    assert all(ln.get("level") == "warn" for ln in lost), lost[:3]
    names = {ln.get("name") for ln in lost}
    assert any(str(n).startswith("pool-") for n in names), f"no pool connection was lost: {names}"
    assert "health" in names, f"the /readyz connection was not lost: {names}"

    def all_reconnected():
        lines = d.log_lines()
        for name in names:
            last_lost = max(i for i, ln in enumerate(lines)
                            if ln.get("event") == "db.conn.lost" and ln.get("name") == name)
            if not any(ln.get("event") == "db.conn.connected" and ln.get("name") == name
                       for ln in lines[last_lost + 1:]):
                return False
        return True
    wait_for(all_reconnected, 15.0, 0.05,
             f"db.conn.connected after the last db.conn.lost of each of {sorted(names)}")
    if "listen" in names:
        # The LISTEN session (the revision cache's feed) came back and
        # re-subscribed, so the cache may answer again.
        def resynced():
            lines = d.log_lines()
            last_lost = max(i for i, ln in enumerate(lines)
                            if ln.get("event") == "db.conn.lost" and ln.get("name") == "listen")
            return any(ln.get("event") == "db.listen.resync" for ln in lines[last_lost + 1:])
        wait_for(resynced, 15.0, 0.05, "db.listen.resync after the LISTEN connection came back")
    # level=error lines are the fixture's post-mortem: none is expected here.

    statuses = {}
    for r in records:
        statuses[(r.kind, r.status)] = statuses.get((r.kind, r.status), 0) + 1
    print(f"outage load: {len(records)} requests, marks {marks}, statuses {statuses}, "
          f"{len(load.acked)} jobs acknowledged ({len(replayed_first)} first by a replay), "
          f"max 503 latency {max(r.t1 - r.t0 for r in unavailable):.3f}s; a 503: "
          f"{unavailable[len(unavailable) // 2].body[:400]!r}")
